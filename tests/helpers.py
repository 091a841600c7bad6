"""Small shared helpers for the tests (importable because tests/ is on sys.path)."""

from __future__ import annotations

import numpy as np

from fastgen import DiffusionClassifier


def small_classifier(folder, kind: str, **kwargs) -> DiffusionClassifier:
    """Three classes (labels for class-conditional kinds), exhaustive 5 samples, CPU."""
    classes = ["class0", "class1", "class2"] if kind in ("dit", "label-unet") else ["cat", "dog", "bird"]
    options = {"policy": "exhaustive", "policy_options": {"n_samples": 5}, "device": "cpu", "batch_size": 7}
    options.update(kwargs)
    return DiffusionClassifier.from_pretrained(folder, classes=classes, **options)


def errors_of(results) -> np.ndarray:
    return np.stack([r.errors for r in results])
