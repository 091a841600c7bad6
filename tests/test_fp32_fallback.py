"""The fp32 recompute of overflowed rows never lets one image's overflow change another's scores.

The denoiser here is a deterministic stand-in for an fp16 model: element-wise (so every row is
independent of its batch neighbours, exactly), computed in the input's dtype (so fp16 and fp32
give different values), and returning inf for the rows of bright images when run in fp16, as an
fp16 overflow would.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastgen import DiffusionClassifier
from fastgen.engine.faults import DenoiseGuard

CLASSES = ["cat", "dog", "bird"]
BRIGHT = 0.2  # rows whose noised input averages above this overflow in fp16


class OverflowsOnBrightImages:
    """pred = x_t * (0.5 + t / 4000) + 0.1 * cond[-1] (a prompt-dependent entry), in x_t's dtype;
    inf in fp16 for bright x_t."""

    wants_fixed_batch = False
    max_batch = None

    def __init__(self, shares_prefix: bool):
        self.shares_prefix = shares_prefix
        self.overflowed_rows = 0

    def __call__(self, x_t, t, cond, rows=None):
        if rows is not None:
            x_t, t = x_t[rows], t[rows]
        scale = (0.5 + t.to(x_t.dtype) / 4000).view(-1, 1, 1, 1)
        shift = 0.1 * cond.flatten(1)[:, -1:].to(x_t.dtype).view(-1, 1, 1, 1)
        prediction = x_t * scale + shift
        if x_t.dtype == torch.float16:
            bright = x_t.flatten(1).float().mean(dim=1) > BRIGHT
            self.overflowed_rows += int(bright.sum())
            prediction = prediction.masked_fill(bright.view(-1, 1, 1, 1), float("inf"))
        return prediction


def _half_classifier(model_dir, shares_prefix: bool, batch_size: int) -> DiffusionClassifier:
    clf = DiffusionClassifier.from_pretrained(
        model_dir, classes=CLASSES, device="cpu", dtype="fp16", policy="exhaustive",
        policy_options={"n_samples": 8}, batch_size=batch_size,
    )  # fmt: skip
    denoiser = OverflowsOnBrightImages(shares_prefix)
    clf.denoise = denoiser
    clf.guard = DenoiseGuard(lambda: denoiser)  # the same function, run in fp32
    return clf


def _flat_image(value: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (value + 0.05 * torch.rand(3, 16, 16, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("shares_prefix", [False, True], ids=["plain", "shared-prefix"])
@pytest.mark.parametrize("batch_size", [64, 10])
def test_an_image_scores_the_same_alone_and_beside_an_overflowing_image(model_dirs, shares_prefix, batch_size):
    dark, bright = _flat_image(0.1, seed=1), _flat_image(0.9, seed=2)
    alone_clf = _half_classifier(model_dirs["pixel-text"], shares_prefix, batch_size)
    alone = alone_clf.classify([dark])[0]
    assert alone_clf.denoise.overflowed_rows == 0 and not alone_clf.guard.has_fp32
    batched_clf = _half_classifier(model_dirs["pixel-text"], shares_prefix, batch_size)
    beside, overflowed = batched_clf.classify([dark, bright])
    assert batched_clf.denoise.overflowed_rows > 0 and batched_clf.guard.has_fp32
    # the dark image's rows shared batches with the overflowing ones, and kept their fp16 values
    np.testing.assert_array_equal(beside.errors, alone.errors)
    assert np.isfinite(overflowed.errors).all() and np.isfinite(alone.errors).all()
    assert alone.errors.std() > 0


def test_only_the_non_finite_rows_are_recomputed(model_dirs):
    """The overflowing image's own finite fp16 rows keep their fp16 values: its errors are those
    of a run with one row per batch (where only an overflowed row can be recomputed), whatever
    the batch size and the neighbours."""
    dark, bright = _flat_image(0.1, seed=1), _flat_image(0.9, seed=2)
    row_by_row_clf = _half_classifier(model_dirs["pixel-text"], False, 1)
    row_by_row = row_by_row_clf.classify([bright])[0]
    # some of its rows overflow and some do not, or the comparison would prove little
    assert 0 < row_by_row_clf.denoise.overflowed_rows < row_by_row.unet_evals
    for batch_size in (5, 64):
        mixed = _half_classifier(model_dirs["pixel-text"], False, batch_size).classify([dark, bright, dark])
        np.testing.assert_array_equal(mixed[1].errors, row_by_row.errors)
