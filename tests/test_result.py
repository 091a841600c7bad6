"""Probabilities from errors, and temperature fitting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastgen import fit_temperature, softmax_neg_errors
from fastgen.engine.result import ImageResult


def test_softmax_over_negative_errors_with_pruned_classes():
    errors = np.array([[0.2, 0.1, math.nan]])
    probs = softmax_neg_errors(errors, temperature=0.1)
    expected = np.exp([-2.0, -1.0]) / np.exp([-2.0, -1.0]).sum()
    np.testing.assert_allclose(probs[0, :2], expected)
    assert probs[0, 2] == 0.0
    with pytest.raises(ValueError, match="temperature"):
        softmax_neg_errors(errors, temperature=0)


def test_result_prediction_ignores_pruned_classes():
    result = ImageResult(
        ("a", "b", "c"), np.array([math.nan, 0.4, 0.3]), np.array([0.1, 0.4, 0.3]), np.array([5, 20, 20]), 45
    )
    assert result.prediction == "c"
    assert result.scores == {"a": None, "b": 0.4, "c": 0.3}
    assert result.probabilities(1.0)[0] == 0.0


def test_fit_temperature_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    n, k, true_t = 4000, 5, 0.05
    errors = rng.normal(1.0, 0.05, size=(n, k))
    probs = softmax_neg_errors(errors, true_t)
    labels = np.array([rng.choice(k, p=p) for p in probs])
    fitted = fit_temperature(errors, labels)
    assert abs(fitted - true_t) / true_t < 0.1
    with pytest.raises(ValueError, match="pruned"):
        fit_temperature(np.array([[math.nan, 1.0]]), np.array([0]))


def test_a_fitting_set_without_a_wrong_answer_gets_laplaces_confidence_not_certainty():
    """Every image right: the NLL would fall without end as T shrinks; the fitted T instead puts
    a mean top-class probability of (n + 1) / (n + 2) on them, for both temperature fits."""
    from fastgen.api.calibration import fit_temperature as fit_calibration_temperature
    from fastgen.api.calibration import softmax_of_errors

    rng = np.random.default_rng(3)
    n, k = 40, 6
    errors = rng.normal(1.0, 0.05, size=(n, k))
    labels = errors.argmin(axis=1)
    t = fit_temperature(errors, labels)
    assert softmax_neg_errors(errors, t).max(axis=1).mean() == pytest.approx(41 / 42, abs=1e-4)
    t = fit_calibration_temperature(errors, labels)
    assert softmax_of_errors(errors, t).max(axis=1).mean() == pytest.approx(41 / 42, abs=1e-4)
    labels[0] = (labels[0] + 1) % k  # one wrong answer: the maximum-likelihood fit again
    assert softmax_neg_errors(errors, fit_temperature(errors, labels)).max(axis=1).mean() < 41 / 42
