"""Per-image results, probabilities, and temperature fitting."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageResult:
    """The outcome of classifying one image.

    * `errors[k]`: mean (weighted) noise-prediction error of class k over the shared samples it
      was scored on, if class k survived to the end; **NaN for classes pruned** by an adaptive
      policy (their error over fewer samples is in `partial_errors`, with the count in
      `n_samples`). With the exhaustive policy no entry is NaN.
    * `prediction`: the surviving class with the lowest error (ties: the lower class index).
    * `unet_evals`: the number of denoiser rows spent on this image.
    * `decided`: False when an adaptive policy ran out of budget with several classes not
      separated at its confidence (`survivors` names them); the prediction is then the survivor
      of lowest error, a guess among ties. Fixed schedules (exhaustive, stages) always decide:
      their answer is the class of lowest error by definition.
    * `policy_record`: what the policy recorded of this image (the noise check of a profile
      boundary: which boundary held it, `fastgen.engine.policies.profile_bound`), or None.
    """

    classes: tuple[str, ...]
    errors: np.ndarray
    partial_errors: np.ndarray
    n_samples: np.ndarray
    unet_evals: int
    path: str | None = None
    decided: bool = True
    policy_record: dict | None = None
    prediction_index: int = field(init=False)

    def __post_init__(self):
        finite = np.where(np.isnan(self.errors), np.inf, self.errors)
        self.prediction_index = int(np.argmin(finite))

    @property
    def prediction(self) -> str:
        return self.classes[self.prediction_index]

    @property
    def survivors(self) -> tuple[str, ...]:
        """The classes the decision is among: the prediction alone when decided, else every class
        still standing (lowest error first, ties: lower index)."""
        if self.decided:
            return (self.prediction,)
        standing = np.flatnonzero(~np.isnan(self.errors))
        return tuple(self.classes[k] for k in sorted(standing.tolist(), key=lambda k: (self.errors[k], k)))

    @property
    def scores(self) -> dict[str, float | None]:
        """Class name -> mean error (None for pruned classes), as written to JSON lines."""
        return {name: (None if math.isnan(e) else float(e)) for name, e in zip(self.classes, self.errors)}

    def probabilities(self, temperature: float = 1.0) -> np.ndarray:
        """softmax(-errors / temperature); pruned classes get probability 0."""
        return softmax_neg_errors(self.errors[None], temperature)[0]


def softmax_neg_errors(errors: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of -errors / T over the finite entries; NaN entries get 0."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = -np.asarray(errors, dtype=np.float64) / temperature
    logits = np.where(np.isnan(logits), -np.inf, logits)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def all_right_temperature(
    mean_top_probability: Callable[[float], float], n: int, low: float, high: float
) -> float | None:
    """log T for a fitting set on which every answer is right, or None when there is none in
    [low, high]. There the NLL only falls as T shrinks (its minimum is the edge of any search),
    so T is instead set where the mean top-class probability is (n + 1) / (n + 2), Laplace's
    estimate of the accuracy after n right answers out of n."""
    from scipy.optimize import brentq

    target = (n + 1) / (n + 2)
    gap = lambda log_t: mean_top_probability(log_t) - target
    if not gap(low) > 0 > gap(high):
        return None
    return float(brentq(gap, low, high, xtol=1e-6))


def fit_temperature(errors: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of `labels` under
    softmax(-errors / T), fitted on labelled data (rows of finite errors, e.g. exhaustive).
    When every image is right, the rule of `all_right_temperature` instead."""
    from scipy.optimize import minimize_scalar

    errors = np.asarray(errors, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if errors.ndim != 2 or errors.shape[0] != labels.shape[0] or errors.shape[0] == 0:
        raise ValueError("errors must be [N, K] and labels [N] with N > 0")
    if np.isnan(errors[np.arange(len(labels)), labels]).any():
        raise ValueError("the true class of some image was pruned; fit on exhaustive results")
    spread = np.nanstd(errors) or 1.0

    def nll(log_t: float) -> float:
        probs = softmax_neg_errors(errors, math.exp(log_t) * spread)
        return -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-300, None)).mean()

    if np.all(np.nanargmin(np.where(np.isnan(errors), np.inf, errors), axis=1) == labels):
        top = lambda log_t: float(softmax_neg_errors(errors, math.exp(log_t) * spread).max(axis=1).mean())
        log_t = all_right_temperature(top, len(labels), -12.0, 12.0)
        if log_t is not None:
            return float(math.exp(log_t) * spread)
    best = minimize_scalar(nll, bounds=(-12.0, 12.0), method="bounded")
    return float(math.exp(best.x) * spread)
