"""Evaluation metrics of the model-vs-human kind: accuracy, shape bias, error consistency.

* `accuracy`: the fraction of predictions equal to their label.
* `shape_bias`: on cue-conflict images (the shape of one category filled with the texture of
  another, named `<shape><n>-<texture><n>.png`, e.g. `cat3-elephant1.png`), the fraction of
  shape decisions among the decisions that match either cue:
  shape_hits / (shape_hits + texture_hits). Images whose shape and texture agree carry no
  conflict and are left out.
* `error_consistency`: Cohen's kappa between two observers' correct/incorrect patterns on the
  same trials, (c_obs - c_exp) / (1 - c_exp) with c_exp = p1 p2 + (1 - p1)(1 - p2): 0 is what
  two independent observers of the same accuracies agree by chance, 1 is identical errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

# `<shape><n>-<texture><n>.<ext>` at the end of a file name; a prefix before it (dataset or
# session tags joined by `_`) is allowed, as in model-vs-human's raw-data image names.
_CUE_CONFLICT = re.compile(r"([a-z]+)\d+-([a-z]+)\d+\.[A-Za-z]+$")


def _same_length(a: Sequence, b: Sequence, names: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{names} must have the same length, got {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError(f"{names} are empty; a metric needs at least one trial")


def accuracy(predictions: Sequence[str | int], labels: Sequence[str | int]) -> float:
    """The fraction of `predictions` equal to `labels` (class names or indices)."""
    _same_length(predictions, labels, "predictions and labels")
    return float(np.mean([p == y for p, y in zip(predictions, labels)]))


def parse_cue_conflict(name: str | PurePath) -> tuple[str, str]:
    """(shape category, texture category) from a cue-conflict file name or path."""
    base = PurePath(name).name
    match = _CUE_CONFLICT.search(base)
    if match is None:
        raise ValueError(
            f"{base!r} is not a cue-conflict image name; expected <shape><n>-<texture><n>.png, "
            "for example 'cat3-elephant1.png'"
        )
    return match.group(1), match.group(2)


@dataclass(frozen=True)
class CueConflictScores:
    """Shape and texture hits over cue-conflict images whose two cues differ."""

    n_images: int  # images with a real conflict (shape != texture)
    shape_hits: int
    texture_hits: int

    @property
    def shape_fraction(self) -> float:
        return self.shape_hits / self.n_images if self.n_images else float("nan")

    @property
    def texture_fraction(self) -> float:
        return self.texture_hits / self.n_images if self.n_images else float("nan")

    @property
    def shape_bias(self) -> float:
        """NaN when no decision matched either cue."""
        cue_hits = self.shape_hits + self.texture_hits
        return self.shape_hits / cue_hits if cue_hits else float("nan")


def cue_conflict_scores(predictions: Sequence[str], filenames: Sequence[str | PurePath]) -> CueConflictScores:
    """Count shape and texture decisions; `predictions[i]` is the category chosen for
    `filenames[i]`."""
    _same_length(predictions, filenames, "predictions and filenames")
    n = shape_hits = texture_hits = 0
    for prediction, name in zip(predictions, filenames):
        shape, texture = parse_cue_conflict(name)
        if shape == texture:
            continue
        n += 1
        shape_hits += prediction == shape
        texture_hits += prediction == texture
    return CueConflictScores(n, shape_hits, texture_hits)


def shape_bias(predictions: Sequence[str], filenames: Sequence[str | PurePath]) -> float:
    """shape_hits / (shape_hits + texture_hits) over cue-conflict images with differing cues."""
    return cue_conflict_scores(predictions, filenames).shape_bias


def error_consistency(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    """Cohen's kappa between two observers' per-trial correctness (same trials, same order).

    NaN when kappa is undefined: both observers right on every trial, or both wrong on every
    trial (c_exp = 1).
    """
    _same_length(correct_a, correct_b, "correct_a and correct_b")
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    observed = float(np.mean(a == b))
    p1, p2 = float(a.mean()), float(b.mean())
    expected = p1 * p2 + (1 - p1) * (1 - p2)
    if expected == 1.0:
        return float("nan")
    return (observed - expected) / (1 - expected)
