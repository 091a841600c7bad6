"""fastgen: fast, faithful generative classifiers on diffusion models.

The public names are imported on first use: importing `fastgen` (as the `fastgen` command does
before it parses its arguments) does not import torch or diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ClassSpec": "fastgen.classes",
    "DiffusionClassifier": "fastgen.api",
    "Exhaustive": "fastgen.engine.policies",
    "FixedStages": "fastgen.engine.policies",
    "ImageError": "fastgen.images",
    "ImageResult": "fastgen.result",
    "ModelLoadError": "fastgen.models",
    "PairedTest": "fastgen.engine.policies",
    "Policy": "fastgen.engine.policies",
    "build_classes": "fastgen.classes",
    "classify": "fastgen.api",
    "fit_temperature": "fastgen.result",
    "make_policy": "fastgen.engine.policies",
    "softmax_neg_errors": "fastgen.result",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from fastgen.api import DiffusionClassifier, classify
    from fastgen.classes import ClassSpec, build_classes
    from fastgen.engine.policies import Exhaustive, FixedStages, PairedTest, Policy, make_policy
    from fastgen.images import ImageError
    from fastgen.models import ModelLoadError
    from fastgen.result import ImageResult, fit_temperature, softmax_neg_errors


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
