"""Fit where on the noise schedule a model tells classes apart, on labelled training images.

The fitted `timestep_weights` (K equal bands of [0, T)) become the density the engine draws
timesteps from (`ScoringConfig.timestep_weights`), so samples are not spent where every class
predicts the noise equally well. Fit on training images only: never on images you report on.

Rule, per band j: each image is scored through the engine on `samples_per_band` shared samples
drawn inside band j only; d = error(rival) - error(true class) for every rival class. The band's
signal-to-noise ratio is snr_j = mean(d) / (std(d) * sqrt(samples_per_band)), an estimate of one
sample's mean difference over its spread, and its weight is max(snr_j, 0)^2 (the squared
per-sample SNR is what one sample adds to a paired test's t^2), scaled to a maximum of 1.
Bands whose weight is below `floor` (of the maximum) get 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastgen.api import DiffusionClassifier
from fastgen.engine.policies import Exhaustive


def band_errors(clf: DiffusionClassifier, images: Sequence[Any], *, n_bands: int, samples_per_band: int) -> np.ndarray:
    """Mean errors [n_bands, N, K] of every image and class, scored inside each band alone."""
    out = []
    for band in range(n_bands):
        one_hot = tuple(1.0 if j == band else 0.0 for j in range(n_bands))
        config = clf.config.replace(timestep_weights=one_hot, policy=Exhaustive(n_samples=samples_per_band))
        band_clf = DiffusionClassifier(clf.adapter, clf.classes, config=config)
        band_clf.denoise = clf.denoise
        out.append(np.stack([r.errors for r in band_clf.classify(list(images))]))
    return np.stack(out)


def weights_from_band_errors(
    errors: np.ndarray, labels: Sequence[int], *, samples_per_band: int, floor: float = 0.02
) -> tuple[float, ...]:
    """The fitting rule (module docstring) applied to `band_errors`' output."""
    labels = np.asarray(labels)
    n_bands, n_images, n_classes = errors.shape
    true = errors[:, np.arange(n_images), labels]  # [B, N]
    rivals = np.ones((n_images, n_classes), dtype=bool)
    rivals[np.arange(n_images), labels] = False
    diffs = (errors - true[:, :, None])[:, rivals]  # [B, N * (K - 1)]
    snr = diffs.mean(axis=1) / (diffs.std(axis=1) * np.sqrt(samples_per_band) + 1e-12)
    weights = np.maximum(snr, 0.0) ** 2
    if weights.max() <= 0:
        raise ValueError("no timestep band separates the true class from the others on these images")
    weights = weights / weights.max()
    weights[weights < floor] = 0.0
    return tuple(round(float(w), 4) for w in weights)


def fit_timestep_weights(
    clf: DiffusionClassifier,
    images: Sequence[Any],
    labels: Sequence[int],
    *,
    n_bands: int = 20,
    samples_per_band: int = 4,
    floor: float = 0.02,
) -> tuple[float, ...]:
    """Band weights for `clf`'s model from labelled training `images` (labels index its classes)."""
    if len(images) != len(labels) or not len(images):
        raise ValueError(f"need one label per image and at least one image, got {len(images)} and {len(labels)}")
    errors = band_errors(clf, images, n_bands=n_bands, samples_per_band=samples_per_band)
    return weights_from_band_errors(errors, labels, samples_per_band=samples_per_band, floor=floor)
