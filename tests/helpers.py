"""Small shared helpers for the tests (importable because tests/ is on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fastgen import DiffusionClassifier
from fastgen.results_file import is_header


def small_classifier(folder, kind: str, **kwargs) -> DiffusionClassifier:
    """Three classes (labels for class-conditional kinds), exhaustive 5 samples, CPU."""
    classes = ["class0", "class1", "class2"] if kind in ("dit", "label-unet") else ["cat", "dog", "bird"]
    options = {"policy": "exhaustive", "policy_options": {"n_samples": 5}, "device": "cpu", "batch_size": 7}
    options.update(kwargs)
    return DiffusionClassifier.from_pretrained(folder, classes=classes, **options)


def errors_of(results) -> np.ndarray:
    return np.stack([r.errors for r in results])


def file_lines(path: Path) -> tuple[dict, list[dict]]:
    """A results file as (its header, its records in file order); the header must come first."""
    objects = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert objects and is_header(objects[0]), "a results file starts with its header"
    assert not any(is_header(o) for o in objects[1:])
    return objects[0], objects[1:]
