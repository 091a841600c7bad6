"""Distribution shifts: deterministic, in range, and of the strength they name."""

from __future__ import annotations

import numpy as np

from fastgen.eval.shifts import blur, contrast, gaussian_noise, standard_shifts


def _images():
    rng = np.random.default_rng(3)
    return rng.uniform(0, 1, size=(5, 8, 8))


def test_every_shift_is_deterministic_and_stays_in_range():
    images = _images()
    for name, shift in standard_shifts().items():
        a, b = shift(images), shift(images)
        np.testing.assert_array_equal(a, b)
        assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1, name


def test_strengths_order_as_named():
    images = _images()
    assert np.abs(gaussian_noise(0.2)(images) - images).mean() > np.abs(gaussian_noise(0.1)(images) - images).mean()
    assert blur(1.0)(images).std() < blur(0.5)(images).std() < images.std()
    half = contrast(0.5)(images)
    np.testing.assert_allclose(half.mean(axis=(1, 2)), images.mean(axis=(1, 2)))
    np.testing.assert_allclose(half.std(axis=(1, 2)), 0.5 * images.std(axis=(1, 2)))
