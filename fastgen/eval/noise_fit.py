"""Fit a model's noise profile (`fastgen.engine.policies.noise_profile`) on labelled training
images. Fit on training images only: never on images you report on.

Rule: every image is scored exhaustively on the same `n_samples` samples twice, with two seeds.
With `even` timesteps sample s has the same timestep in both runs and only its noise differs, so
for every rival class k of an image the paired difference d = e_k - e_label of the two runs
differs by noise alone: (d_a - d_b) / sqrt(2) is one draw of that noise at sample s's timestep.
Per band of timesteps, the root mean square of those draws over all images and rivals is the
band's typical noise. Pairs differ in how noisy they are, so the profile is that typical noise
scaled up by the `quantile` of the pairs' own scale (each pair's root mean square of its draws
over the typical noise at their timesteps): a profile meant to cover that share of pairs. The
spread of those scales is recorded too (`PAIR_SCALE_POINTS` quantiles), for a boundary that
states its error on average over pairs (`coverage="average"`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastgen.api import DiffusionClassifier
from fastgen.engine.policies import Exhaustive
from fastgen.engine.policies.noise_profile import FITTED_FOR, NoiseProfile
from fastgen.engine.sampling import timestep_sequence

PAIR_SCALE_POINTS = 200  # quantiles of the pairs' noise scale kept in the profile


@dataclass(frozen=True)
class _RecordingExhaustive(Exhaustive):
    """Exhaustive scoring that hands the per-sample table the engine shows its policy to `sink`."""

    sink: list | None = None

    def next_round(self, class_errors, alive):
        self.sink.append(class_errors.detach().double().clone())
        return super().next_round(class_errors, alive)


def sample_errors(clf: DiffusionClassifier, images: Sequence[Any], *, n_samples: int, seed: int) -> np.ndarray:
    """Per-sample errors [N, K, n_samples] of every image and class on the first `n_samples`
    shared samples of `seed`, as the engine computes them (one image per call, so the tables come
    back in image order)."""
    tables: list[torch.Tensor] = []
    config = clf.config.replace(policy=_RecordingExhaustive(n_samples=n_samples, sink=tables), seed=seed)
    recorder = DiffusionClassifier(clf.adapter, clf.classes, config=config)
    recorder.denoise = clf.denoise
    out = []
    for image in images:
        tables.clear()
        recorder.classify([image])
        out.append(tables[-1].numpy())
    return np.stack(out)


def profile_from_tables(
    first: np.ndarray, second: np.ndarray, labels: Sequence[int], timesteps: np.ndarray, *,
    num_train_timesteps: int, n_bands: int, quantile: float,
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:  # fmt: skip
    """(band sd [n_bands], typical band noise [n_bands], scale, quantiles of the pairs' noise
    scale) from two seeds' tables [N, K, n] on the same timesteps [n] (the rule in the module
    docstring)."""
    labels = np.asarray(labels)
    n_images, n_classes, _ = first.shape
    rows = np.arange(n_images)
    d_first = first - first[rows, labels][:, None, :]
    d_second = second - second[rows, labels][:, None, :]
    rivals = np.ones((n_images, n_classes), dtype=bool)
    rivals[rows, labels] = False
    noise = ((d_first - d_second) / np.sqrt(2.0))[rivals]  # [pairs, n]
    bands = np.minimum(timesteps * n_bands // num_train_timesteps, n_bands - 1)
    typical = np.full(n_bands, np.nan)
    for band in np.unique(bands):
        typical[band] = np.sqrt(np.mean(noise[:, bands == band] ** 2))
    if np.any(~np.isfinite(typical[np.unique(bands)])) or np.nanmax(typical) <= 0:
        raise ValueError("the two runs' errors are identical: no noise to fit")
    # A band no sample falls in is never drawn with these settings; give it the largest noise.
    typical = np.where(np.isnan(typical), np.nanmax(typical), np.maximum(typical, np.nanmax(typical) * 1e-6))
    pair_scale = np.sqrt(np.mean((noise / typical[bands]) ** 2, axis=1))
    scale = max(1.0, float(np.quantile(pair_scale, quantile)))
    points = (np.arange(PAIR_SCALE_POINTS) + 0.5) / PAIR_SCALE_POINTS
    return typical * scale, typical, scale, np.quantile(pair_scale, points)


def fit_noise_profile(
    clf: DiffusionClassifier,
    images: Sequence[Any],
    labels: Sequence[int],
    *,
    n_samples: int = 64,
    n_bands: int = 16,
    seeds: tuple[int, int] = (0, 1),
    quantile: float = 0.99,
) -> NoiseProfile:
    """The noise profile of `clf`'s model under its scoring settings, from labelled training
    `images` (labels index its classes)."""
    if len(images) != len(labels) or not len(images):
        raise ValueError(f"need one label per image and at least one image, got {len(images)} and {len(labels)}")
    if clf.config.timesteps != "even":
        raise ValueError(
            "a noise profile is fitted with timesteps='even' (the same timestep for sample s in every run)"
        )
    if seeds[0] == seeds[1]:
        raise ValueError("the two runs need different seeds")
    if n_samples < n_bands:
        raise ValueError(f"need n_samples >= n_bands so that every band gets samples, got {n_samples}, {n_bands}")
    num_train_timesteps = int(clf.adapter.schedule.num_train_timesteps)
    timesteps = timestep_sequence(
        n_samples, num_train_timesteps, mode="even", band_weights=clf.config.timestep_weights
    ).numpy()
    first, second = (sample_errors(clf, images, n_samples=n_samples, seed=s) for s in seeds)
    band_sd, typical, scale, pair_scales = profile_from_tables(
        first, second, labels, timesteps, num_train_timesteps=num_train_timesteps, n_bands=n_bands, quantile=quantile
    )
    return NoiseProfile(
        band_sd=tuple(round(float(s), 6) for s in band_sd),
        num_train_timesteps=num_train_timesteps,
        fitted_for={name: getattr(clf.config, name) for name in FITTED_FOR},
        fit={
            "images": len(images), "classes": len(clf.classes), "n_samples": n_samples, "seeds": list(seeds),
            "quantile": quantile, "scale": round(scale, 4), "typical_sd": [round(float(s), 6) for s in typical],
            "pair_scales": [round(float(s), 4) for s in pair_scales],
        },
    )  # fmt: skip
