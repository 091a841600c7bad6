"""fastgen: fast, faithful generative classifiers on diffusion models."""

from fastgen.api import DiffusionClassifier, classify
from fastgen.classes import ClassSpec, build_classes
from fastgen.engine.policies import Exhaustive, FixedStages, PairedTest, Policy, make_policy
from fastgen.images import ImageError
from fastgen.models import ModelLoadError
from fastgen.result import ImageResult, fit_temperature, softmax_neg_errors

__version__ = "0.1.0"

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
    "build_classes",
    "classify",
    "fit_temperature",
    "make_policy",
    "softmax_neg_errors",
]
