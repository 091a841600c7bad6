"""Accuracy floors for tests on the embedded models, from their measured held-out error rates.

A test scores a fixed subset of n held-out images. Its floor is the lowest accuracy a model with
the measured error rate reaches there with probability 1 - RISK if the subset were drawn at
random: the errors on n images are Binomial(n, rate) and the floor allows its 1 - RISK
quantile. So a model that still scores what it was measured at passes on any CPU (rounding may
flip a near tie or two), and one that lost a few points fails."""

from __future__ import annotations

from scipy.stats import binom

RISK = 1e-3

# errors on all 450 held-out digits, from the models' TRAINING.md and docs/embedded-models.md
DIGITS_EXHAUSTIVE_ERROR_RATE = 6 / 450  # exhaustive, 10 samples per class (25 samples: 4 / 450)
DIGITS_DEFAULT_POLICY_ERROR_RATE = 3 / 450  # `fastgen demo`'s default: the sequential rule with error weights
DIGITS_FLOW_ERROR_RATE = 6 / 450  # exhaustive, 25 samples per class, the default density and weighting
LOGISTIC_BASELINE_ERROR_RATE = 14 / 450  # the demo's logistic regression: 0.9689


def accuracy_floor(n_images: int, error_rate: float, risk: float = RISK) -> float:
    """The accuracy on n images that a model with held-out `error_rate` stays at or above with
    probability at least 1 - risk."""
    most_errors = int(binom.ppf(1 - risk, n_images, error_rate))
    return 1 - most_errors / n_images
