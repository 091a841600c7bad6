"""Distribution shifts for robustness tables: Gaussian noise, blur, contrast reduction.

Each shift maps float images [N, H, W] in [0, 1] to shifted images in [0, 1], deterministically
(noise is seeded), so fastgen and a baseline see exactly the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import gaussian_filter

Shift = Callable[[np.ndarray], np.ndarray]


def gaussian_noise(sigma: float, seed: int = 0) -> Shift:
    def apply(images: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return np.clip(images + rng.normal(0.0, sigma, size=images.shape), 0.0, 1.0)

    return apply


def blur(sigma: float) -> Shift:
    def apply(images: np.ndarray) -> np.ndarray:
        return np.stack([gaussian_filter(image, sigma=sigma, mode="constant") for image in images])

    return apply


def contrast(factor: float) -> Shift:
    """Pull every pixel toward the image's mean: factor 1 is unchanged, 0 is flat."""

    def apply(images: np.ndarray) -> np.ndarray:
        means = images.mean(axis=(1, 2), keepdims=True)
        return np.clip(means + factor * (images - means), 0.0, 1.0)

    return apply


def standard_shifts() -> dict[str, Shift]:
    """The demo's table: each shift at two strengths, plus the clean images."""
    return {
        "clean": lambda images: images,
        "noise sigma=0.1": gaussian_noise(0.1),
        "noise sigma=0.2": gaussian_noise(0.2),
        "blur sigma=0.5px": blur(0.5),
        "blur sigma=1px": blur(1.0),
        "contrast x0.5": contrast(0.5),
        "contrast x0.25": contrast(0.25),
    }
