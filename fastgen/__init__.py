"""fastgen: fast, faithful generative classifiers on diffusion models.

The public names below are imported on first use (PEP 562), so that `import fastgen` and the
command line's `--help` do not load torch and diffusers before they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ClassSpec": "fastgen.inputs.classes",
    "DiffusionClassifier": "fastgen.api",
    "Exhaustive": "fastgen.engine.policies",
    "FixedStages": "fastgen.engine.policies",
    "ImageError": "fastgen.inputs.images",
    "ImageResult": "fastgen.engine.result",
    "ModelLoadError": "fastgen.models",
    "PairedTest": "fastgen.engine.policies",
    "Policy": "fastgen.engine.policies",
    "ScoringConfig": "fastgen.engine.config",
    "build_classes": "fastgen.inputs.classes",
    "classify": "fastgen.api",
    "fit_temperature": "fastgen.engine.result",
    "make_policy": "fastgen.engine.policies",
    "softmax_neg_errors": "fastgen.engine.result",
}

__all__ = [
    "ClassSpec",
    "DiffusionClassifier",
    "Exhaustive",
    "FixedStages",
    "ImageError",
    "ImageResult",
    "ModelLoadError",
    "PairedTest",
    "Policy",
    "ScoringConfig",
    "build_classes",
    "classify",
    "fit_temperature",
    "make_policy",
    "softmax_neg_errors",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from fastgen.api import DiffusionClassifier, classify
    from fastgen.engine.config import ScoringConfig
    from fastgen.engine.policies import Exhaustive, FixedStages, PairedTest, Policy, make_policy
    from fastgen.engine.result import ImageResult, fit_temperature, softmax_neg_errors
    from fastgen.inputs.classes import ClassSpec, build_classes
    from fastgen.inputs.images import ImageError
    from fastgen.models import ModelLoadError
