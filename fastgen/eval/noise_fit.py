"""Fit a model's noise profile (`fastgen.engine.policies.noise_profile`) on labelled training
images. Fit on training images only: never on images you report on.

Rule: every image is scored exhaustively on `n_samples` samples of the `stratified` order, each
image with noise of its own (seed `first_seed + i` for image i), so images are independent draws.
In that order samples 2j and 2j+1 share a timestep, so for every rival class k of an image the
paired difference d = e_k - e_label of the two differs by noise alone: (d_2j - d_2j+1) / sqrt(2)
is one draw of that pair's noise at pair j's timestep. Per band of timesteps, the root mean
square of those draws over all images and rivals is the band's typical noise. Pairs differ in how
noisy they are, so the profile is that typical noise scaled up by the `quantile` of the pairs'
own scale (each pair's root mean square of its draws over the typical noise at their timesteps),
and raised, band by band, to the `ucl` upper confidence limit of a bootstrap over images (the
fit's own sampling error: a band estimated from few draws is given room). The spread of the pair
scales is recorded too (`PAIR_SCALE_POINTS` quantiles), for `coverage="pair-average"`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastgen.api import DiffusionClassifier
from fastgen.api.classifier import run_facts
from fastgen.engine.policies import Exhaustive
from fastgen.engine.policies.noise_profile import FITTED_FOR, PROFILE_TIMESTEPS, NoiseProfile
from fastgen.engine.sampling import timestep_sequence

PAIR_SCALE_POINTS = 200  # quantiles of the pairs' noise scale kept in the profile


@dataclass(frozen=True)
class _RecordingExhaustive(Exhaustive):
    """Exhaustive scoring that hands the per-sample table the engine shows its policy to `sink`."""

    sink: list | None = None

    def next_round(self, class_errors, alive):
        self.sink.append(class_errors.detach().double().clone())
        return super().next_round(class_errors, alive)


def sample_errors(
    clf: DiffusionClassifier, images: Sequence[Any], *, n_samples: int, seeds: Sequence[int]
) -> np.ndarray:
    """Per-sample errors [N, K, n_samples] of every image and class on the first `n_samples`
    samples, image i with the noise of `seeds[i]`, as the engine computes them."""
    if len(seeds) != len(images):
        raise ValueError(f"need one seed per image, got {len(seeds)} for {len(images)}")
    tables: list[torch.Tensor] = []
    config = clf.config.replace(policy=_RecordingExhaustive(n_samples=n_samples, sink=tables))
    recorder = DiffusionClassifier(clf.adapter, clf.classes, config=config)
    recorder.denoise = clf.denoise
    out = []
    for image, seed in zip(images, seeds):
        recorder.config = recorder.config.replace(seed=int(seed))
        tables.clear()
        recorder.classify([image])
        out.append(tables[-1].numpy())
    return np.stack(out)


def pair_noise(tables: np.ndarray, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(draws [N, K - 1, m], image index [N, K - 1]): for every image and rival class, the noise
    draws (d_2j - d_2j+1) / sqrt(2) of its paired difference with the labelled class."""
    labels = np.asarray(labels)
    n_images, n_classes, n = tables.shape
    rows = np.arange(n_images)
    differences = tables - tables[rows, labels][:, None, :]
    rivals = np.ones((n_images, n_classes), dtype=bool)
    rivals[rows, labels] = False
    m = n // 2
    pairs = differences[:, :, : 2 * m].reshape(n_images, n_classes, m, 2)
    draws = (pairs[..., 0] - pairs[..., 1]) / np.sqrt(2.0)
    return draws[rivals].reshape(n_images, n_classes - 1, m), np.repeat(rows, n_classes - 1).reshape(n_images, -1)


def band_noise(draws: np.ndarray, bands: np.ndarray, n_bands: int, quantile: float) -> tuple[np.ndarray, ...]:
    """(band sd at the quantile [n_bands], typical sd [n_bands], scale, pair scales) from draws
    [images, rivals, m] whose pair j falls in band `bands[j]`."""
    flat = draws.reshape(-1, draws.shape[-1])
    typical = np.full(n_bands, np.nan)
    for band in np.unique(bands):
        typical[band] = np.sqrt(np.mean(flat[:, bands == band] ** 2))
    if np.any(~np.isfinite(typical[np.unique(bands)])) or np.nanmax(typical) <= 0:
        raise ValueError("the paired samples' errors are identical: no noise to fit")
    # A band no pair falls in is never drawn with these settings; give it the largest noise.
    typical = np.where(np.isnan(typical), np.nanmax(typical), np.maximum(typical, np.nanmax(typical) * 1e-6))
    pair_scale = np.sqrt(np.mean((flat / typical[bands]) ** 2, axis=1))
    scale = max(1.0, float(np.quantile(pair_scale, quantile)))
    return typical * scale, typical, scale, pair_scale


def fit_noise_profile(
    clf: DiffusionClassifier,
    images: Sequence[Any],
    labels: Sequence[int],
    *,
    n_samples: int = 128,
    n_bands: int = 16,
    first_seed: int = 1000,
    quantile: float = 0.99,
    ucl: float = 0.95,
    bootstrap: int = 400,
    prompts: Sequence[str] | None = None,
) -> NoiseProfile:
    """The noise profile of `clf`'s model under its scoring settings, from labelled training
    `images` (labels index its classes). `prompts`: the prompts the profile is declared to hold
    for (default: the classifier's own; a model fitted on a sample of its classes names them
    all)."""
    if len(images) != len(labels) or len(images) < 2:
        raise ValueError(f"need one label per image and at least two images, got {len(images)} and {len(labels)}")
    if clf.config.timesteps not in PROFILE_TIMESTEPS:
        raise ValueError(
            f"a noise profile is fitted with timesteps={PROFILE_TIMESTEPS[0]!r} (paired samples at a fixed "
            f"timestep), got {clf.config.timesteps!r}"
        )
    if n_samples < 2 * n_bands or n_samples % 2:
        raise ValueError(f"need an even n_samples >= 2 x n_bands so that every band gets pairs, got {n_samples}")
    num_train_timesteps = int(clf.adapter.schedule.num_train_timesteps)
    timesteps = timestep_sequence(
        n_samples, num_train_timesteps, mode=clf.config.timesteps, band_weights=clf.config.timestep_weights,
        stratum_weights=clf.config.error_weights,
    ).numpy()  # fmt: skip
    pair_bands = np.minimum(timesteps[0::2] * n_bands // num_train_timesteps, n_bands - 1)
    seeds = [first_seed + i for i in range(len(images))]
    tables = sample_errors(clf, images, n_samples=n_samples, seeds=seeds)
    draws, _ = pair_noise(tables, labels)
    band_sd, typical, scale, pair_scale = band_noise(draws, pair_bands, n_bands, quantile)
    # The fit's own sampling error: images are independent (noise of their own), so resampling
    # them gives the spread of every band's estimate; each band takes its `ucl` upper limit.
    rng = np.random.default_rng(first_seed)
    resampled = np.stack([
        band_noise(draws[rng.integers(0, len(images), len(images))], pair_bands, n_bands, quantile)[0]
        for _ in range(bootstrap)
    ])  # fmt: skip
    upper = np.maximum(band_sd, np.quantile(resampled, ucl, axis=0))
    facts = run_facts(clf.adapter, clf.units, clf.config)
    if prompts is not None:
        facts["prompts"] = tuple(prompts)
    points = (np.arange(PAIR_SCALE_POINTS) + 0.5) / PAIR_SCALE_POINTS
    return NoiseProfile(
        band_sd=tuple(round(float(s), 7) for s in upper),
        num_train_timesteps=num_train_timesteps,
        fitted_for={"model": facts["model"], **{name: facts[name] for name in FITTED_FOR}},
        fit={
            "images": len(images), "classes": len(clf.classes), "n_samples": n_samples, "n_bands": n_bands,
            "noise": f"independent per image: seeds {first_seed}..{first_seed + len(images) - 1}",
            "quantile": quantile, "scale": round(scale, 4), "ucl": ucl, "bootstrap": bootstrap,
            "ucl_over_point": [round(float(u / p), 4) for u, p in zip(upper, band_sd)],
            "typical_sd": [round(float(s), 7) for s in typical],
            "pair_scales": [round(float(s), 4) for s in np.quantile(pair_scale, points)],
        },
    )  # fmt: skip
