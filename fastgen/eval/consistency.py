"""Error consistency between two classifiers: Cohen's kappa on their per-image correctness, as
model-vs-human measures it (Geirhos, Meding & Wichmann, NeurIPS 2020).

Two observers that are right with probabilities p1 and p2, independently of each other, agree on
right/wrong for a share c_exp = p1 p2 + (1 - p1)(1 - p2) of the images by chance alone. With
c_obs the share they actually agree on,

    kappa = (c_obs - c_exp) / (1 - c_exp)

is 0 for independent errors, 1 when they err on exactly the same images, and negative when one
errs where the other does not. When c_exp is 1 (both always right, or both always wrong) kappa
is undefined (NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def error_consistency(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """kappa with c_obs, c_exp and both accuracies, from two per-image correctness lists of the
    same images in the same order."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two equal-length lists of per-image correctness, got {a.shape} and {b.shape}")
    if not len(a):
        raise ValueError("no images to compare")
    p1, p2 = float(a.mean()), float(b.mean())
    observed = float(np.mean(a == b))
    expected = p1 * p2 + (1.0 - p1) * (1.0 - p2)
    kappa = (observed - expected) / (1.0 - expected) if expected < 1.0 else float("nan")
    return {
        "kappa": kappa, "c_obs": observed, "c_exp": expected, "accuracy_a": p1, "accuracy_b": p2, "images": int(len(a)),
    }  # fmt: skip
