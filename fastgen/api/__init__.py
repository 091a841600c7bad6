"""The public API: `DiffusionClassifier`, the one-call `classify`, and the `nn.Module` view.

Both entry points validate their arguments, then hand the work to the engine.
"""

from fastgen.api.classifier import DTYPES, DiffusionClassifier, classify, default_device, parse_dtype
from fastgen.api.module import ClassifierModule

__all__ = ["DTYPES", "ClassifierModule", "DiffusionClassifier", "classify", "default_device", "parse_dtype"]
