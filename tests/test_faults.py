"""Fault paths of the engine, by injection: a real tiny denoiser wrapped so that it runs out of
memory above a batch size, or returns non-finite rows, set as `clf.denoise`. The results must
equal the run without faults."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from fastgen import DiffusionClassifier

CLASSES = ["cat", "dog", "bird"]


class OutOfMemoryAbove(nn.Module):
    """The real denoiser, except that more than `limit` rows raise CUDA's out-of-memory error."""

    def __init__(self, inner: nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit = inner, limit
        self.raised, self.sizes = 0, []

    def forward(self, x_t, t, cond):
        self.sizes.append(x_t.shape[0])
        if x_t.shape[0] > self.limit:
            self.raised += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected above {self.limit} rows)")
        return self.inner(x_t, t, cond)


class NonFiniteRows(nn.Module):
    """The real denoiser, with rows at timesteps >= `from_t` overwritten by inf (or NaN), as an
    fp16 overflow would leave them."""

    def __init__(self, inner: nn.Module, from_t: int, value: float = float("inf")):
        super().__init__()
        self.inner, self.from_t, self.value = inner, from_t, value
        self.poisoned_calls = 0

    def forward(self, x_t, t, cond):
        out = self.inner(x_t, t, cond)
        bad = t >= self.from_t
        self.poisoned_calls += int(bad.any())
        return out.masked_fill(bad.view(-1, 1, 1, 1), self.value)


def _classifier(folder, **kwargs) -> DiffusionClassifier:
    options = {"policy": "exhaustive", "policy_options": {"n_samples": 8}, "device": "cpu", "batch_size": 16}
    return DiffusionClassifier.from_pretrained(folder, classes=CLASSES, **{**options, **kwargs})


def _errors(results) -> np.ndarray:
    return np.stack([r.errors for r in results])


@pytest.fixture
def clean(model_dirs, images):
    """A classifier and its fault-free results on four images."""
    clf = _classifier(model_dirs["latent-text"])
    results = clf.classify(images[:4])
    assert np.isfinite(_errors(results)).all() and _errors(results).std(axis=1).min() > 0
    return clf, results


def _assert_same(results, reference):
    np.testing.assert_allclose(_errors(results), _errors(reference), rtol=0, atol=1e-5)
    assert [r.prediction for r in results] == [r.prediction for r in reference]
    assert [r.unet_evals for r in results] == [r.unet_evals for r in reference]


def test_out_of_memory_splits_the_batch_and_remembers_the_size(clean, images, caplog):
    clf, reference = clean
    faulty = OutOfMemoryAbove(clf.adapter.denoiser, limit=5)
    clf.denoise = faulty
    with caplog.at_level(logging.WARNING, logger="fastgen.engine.faults"):
        results = clf.classify(images[:4])
    _assert_same(results, reference)
    # 16 rows fail, 8 fail, 4 fit; every later batch goes straight to chunks of 4.
    assert faulty.raised == 2 and clf.guard.max_rows[torch.float32] == 4
    assert max(size for size in faulty.sizes[2:]) == 4
    assert "out of memory" in caplog.text
    # remembered across calls: a second classify never fails again
    faulty.raised = 0
    _assert_same(clf.classify(images[:4]), reference)
    assert faulty.raised == 0


class FixedShapeOutOfMemoryAbove(OutOfMemoryAbove):
    """As a compiled / CUDA-graph denoiser declares itself: it wants one batch shape."""

    shares_prefix = False
    wants_fixed_batch = True
    max_batch = None


def test_out_of_memory_at_a_fixed_batch_shrinks_the_fixed_size(clean, images, caplog):
    """Splitting rows cannot help a fixed-batch denoiser (each piece is padded back to the size
    that failed): the fixed size itself is halved, and results stay those of a clean run."""
    clf, reference = clean
    faulty = FixedShapeOutOfMemoryAbove(clf.adapter.denoiser, limit=5)
    clf.denoise = faulty
    with caplog.at_level(logging.WARNING, logger="fastgen.engine.padding"):
        results = clf.classify(images[:4])
    _assert_same(results, reference)
    assert faulty.sizes[:3] == [16, 8, 4] and faulty.raised == 2
    assert set(faulty.sizes[2:]) == {4}  # one shape from then on: one recompile, not one per size
    assert "fixed batch size 16" in caplog.text
    faulty.raised, faulty.sizes = 0, []  # remembered across calls: no failing size again
    _assert_same(clf.classify(images[:4]), reference)
    assert faulty.raised == 0 and set(faulty.sizes) == {4}


def test_out_of_memory_on_one_row_is_raised_with_advice(clean, images):
    clf, _ = clean
    clf.denoise = OutOfMemoryAbove(clf.adapter.denoiser, limit=0)
    with pytest.raises(torch.OutOfMemoryError, match="single row"):
        clf.classify(images[:1])
    clf.denoise = FixedShapeOutOfMemoryAbove(clf.adapter.denoiser, limit=0)
    with pytest.raises(torch.OutOfMemoryError, match="single row"):
        clf.classify(images[:1])


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_non_finite_batches_are_recomputed_in_fp32(clean, images, caplog, value):
    clf, reference = clean
    faulty = NonFiniteRows(clf.adapter.denoiser, from_t=600, value=value)
    clf.denoise = faulty
    assert not clf.guard.has_fp32  # built only when first needed
    with caplog.at_level(logging.WARNING, logger="fastgen.engine.runner"):
        results = clf.classify(images[:4])
    assert faulty.poisoned_calls > 0
    _assert_same(results, reference)
    assert "recomputing those rows in fp32" in caplog.text
    assert clf.guard.has_fp32


def test_rows_non_finite_even_in_fp32_never_reach_a_score(clean, images):
    clf, _ = clean
    broken = NonFiniteRows(clf.adapter.denoiser, from_t=700)
    clf.adapter.denoiser = broken  # the fp32 fallback is built from this module
    clf.denoise = broken
    with pytest.raises(FloatingPointError, match="even in fp32"):
        clf.classify(images[:2])


def test_fp16_overflow_falls_back_to_an_fp32_copy(model_dirs, images):
    fp32 = _classifier(model_dirs["pixel-text"]).classify(images[:2])
    clf = _classifier(model_dirs["pixel-text"], dtype="fp16")
    half = clf.adapter.denoiser
    clf.denoise = NonFiniteRows(half, from_t=0)  # every fp16 batch overflows
    results = clf.classify(images[:2])
    fallback = clf.guard.fp32_denoiser()
    assert fallback is not half and next(fallback.parameters()).dtype == torch.float32
    assert next(half.parameters()).dtype == torch.float16  # the fast path is left as it was
    assert np.isfinite(_errors(results)).all()
    # Every row was scored in fp32 from fp16-rounded weights and prompt embeddings: exactly what an
    # fp32 run of that same fallback module with those embeddings computes.
    rounded = _classifier(model_dirs["pixel-text"])
    rounded.denoise, rounded.conditions = fallback, clf.conditions.float()
    expected = rounded.classify(images[:2])
    np.testing.assert_allclose(_errors(results), _errors(expected), rtol=0, atol=1e-6)
    # and the rounding moves no prediction of the fp32 model's
    assert [r.prediction for r in results] == [r.prediction for r in fp32]
    np.testing.assert_allclose(_errors(results), _errors(fp32), rtol=0, atol=5e-3)
