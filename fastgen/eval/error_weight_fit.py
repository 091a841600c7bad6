"""Fit how much each timestep's error counts in a model's score (`ScoringConfig.error_weights`),
on labelled training images. Fit on training images only: never on images you report on.

A class's score is the mean of its per-sample errors, and the classifier compares scores through
the paired differences d = error(rival) - error(true class). How far d is from 0, and how much it
spreads (over images, rivals and the noise), changes by orders of magnitude along the noise
schedule: at low timesteps d is large but as noisy as it is large; at high timesteps it is small
and far less noisy. A plain mean lets the noisiest timesteps decide.

Rule (the diagonal Fisher discriminant of the per-band differences): every image is scored
exhaustively on `n_samples` shared samples on the even grid, without error weights. Per band j of
K equal bands of [0, T), over every image, rival class and sample in the band,
w_j = max(mean(d), 0) / var(d): the weight that makes a sum of independent per-band terms best
separate the true class from its rivals. The weights are scaled to a mean of 1 over the bands, so
scores keep the size of a plain mean's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastgen.api import DiffusionClassifier
from fastgen.engine.policies import Exhaustive
from fastgen.engine.sampling import timestep_sequence
from fastgen.eval.noise_fit import sample_errors


def weights_from_tables(
    tables: np.ndarray, labels: Sequence[int], timesteps: np.ndarray, *, num_train_timesteps: int, n_bands: int
) -> tuple[float, ...]:
    """The rule (module docstring) applied to per-sample errors [N, K, n] on `timesteps` [n]."""
    labels = np.asarray(labels)
    n_images, n_classes, _ = tables.shape
    rows = np.arange(n_images)
    rivals = np.ones((n_images, n_classes), dtype=bool)
    rivals[rows, labels] = False
    diffs = (tables.astype(np.float64) - tables[rows, labels][:, None, :])[rivals]  # [pairs, n]
    bands = np.minimum(timesteps * n_bands // num_train_timesteps, n_bands - 1)
    if len(np.unique(bands)) < n_bands:
        raise ValueError(f"every one of the {n_bands} bands needs samples: give more samples or fewer bands")
    weights = np.zeros(n_bands)
    for band in range(n_bands):
        d = diffs[:, bands == band]
        variance = d.var()
        weights[band] = max(d.mean(), 0.0) / variance if variance > 0 else 0.0
    if not weights.max() > 0:
        raise ValueError("no band of timesteps separates the true class from its rivals on these images")
    weights = weights / weights.mean()
    return tuple(float(f"{w:.4g}") for w in weights)


def fit_error_weights(
    clf: DiffusionClassifier,
    images: Sequence[Any],
    labels: Sequence[int],
    *,
    n_samples: int = 128,
    n_bands: int = 16,
    seed: int = 0,
) -> tuple[float, ...]:
    """Error weights for `clf`'s model from labelled training `images` (labels index its
    classes), scored under `clf`'s settings with even timesteps and no error weights."""
    if len(images) != len(labels) or not len(images):
        raise ValueError(f"need one label per image and at least one image, got {len(images)} and {len(labels)}")
    if clf.config.timestep_weights is not None:
        raise ValueError("fit error weights with timesteps drawn uniformly (no timestep_weights)")
    if n_samples < n_bands:
        raise ValueError(f"need n_samples >= n_bands so that every band gets samples, got {n_samples}, {n_bands}")
    # Exhaustive: the model's own policy may hold a noise profile fitted for its weights.
    config = clf.config.replace(timesteps="even", error_weights=None, policy=Exhaustive(n_samples=n_samples))
    plain = DiffusionClassifier(clf.adapter, clf.classes, config=config)
    plain.denoise = clf.denoise
    num_train_timesteps = int(clf.adapter.schedule.num_train_timesteps)
    timesteps = timestep_sequence(n_samples, num_train_timesteps, mode="even").numpy()
    tables = sample_errors(plain, images, n_samples=n_samples, seeds=[seed] * len(images))
    return weights_from_tables(tables, labels, timesteps, num_train_timesteps=num_train_timesteps, n_bands=n_bands)
