"""Calibrated class probabilities from per-class errors.

A softmax over raw errors is nearly uniform (errors of different classes differ by a few percent),
so fastgen fits one of two maps on labelled results and saves it as a small JSON file:

* **temperature**: p = softmax(-errors / T), T fitted by minimising the negative log-likelihood;
* **Platt** (adaptive runs, whose denoiser budget varies per image): the top class's probability is
  sigmoid(w_margin * margin + w_evals * log(UNet evaluations) + b), where margin is the gap between
  the two lowest errors relative to the lowest; the rest of the mass is shared among the other
  classes in proportion to their temperature-scaled softmax (a lone class gets 1). An adaptive
  policy spends more calls on hard images, so the budget itself says how sure the run was.

Either way a result's probabilities sum to 1.

**Pruned classes** (null scores) were dropped because they were worse than the classes kept. Each
gets its partial error (its mean error over the samples it had when dropped, `partial_scores` in
a results line) but never less than the largest survivor's error, raised by 1e-6 relative so it
ranks below every survivor; without a partial error (older files) it gets the largest survivor's
error raised by 1%. So a pruned class keeps a small probability, never zero, and the prediction
stays the survivor's.

Metrics (`ece`, `nll`, `brier`) are reported on records not used for fitting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastgen.engine.result import all_right_temperature

FORMAT = 1
ECE_BINS = 15


@dataclass
class Scored:
    """The scored records of a results file as arrays: errors [N, K] (pruned classes filled in),
    evaluations spent [N], and labels [N] (-1: unknown)."""

    classes: list[str]
    errors: np.ndarray
    evals: np.ndarray
    labels: np.ndarray
    paths: list[str]


def filled_errors(
    scores: dict[str, float | None], classes: Sequence[str], partial: dict[str, float | None] | None = None
) -> np.ndarray:
    """Errors in `classes` order, pruned (null) or missing classes filled by the rule above."""
    as_array = lambda d: np.array([np.nan if d.get(c) is None else float(d[c]) for c in classes], dtype=np.float64)
    values = as_array(scores)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("the record has no finite score")
    worst = finite.max()
    partial_values = as_array(partial or {})
    fill = np.where(
        np.isfinite(partial_values), np.maximum(partial_values, worst * (1 + 1e-6) + 1e-12), worst * 1.01 + 1e-12
    )
    return np.where(np.isfinite(values), values, fill)


def scored_records(records: Sequence[dict[str, Any]], classes: Sequence[str], labels: Sequence[str | None]) -> Scored:
    """Arrays of `records` (scored ones only) for `classes`; a label outside `classes` is -1."""
    index = {c: i for i, c in enumerate(classes)}
    rows, evals, ys, paths = [], [], [], []
    for record, label in zip(records, labels):
        rows.append(filled_errors(record["scores"], classes, record.get("partial_scores")))
        evals.append(float(record.get("unet_evals") or 1))
        ys.append(index.get(label, -1) if label is not None else -1)
        paths.append(record.get("path", ""))
    errors = np.stack(rows) if rows else np.zeros((0, len(classes)))
    return Scored(list(classes), errors, np.array(evals), np.array(ys, dtype=np.int64), paths)


def softmax_of_errors(errors: np.ndarray, temperature: float) -> np.ndarray:
    logits = -errors / temperature
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _softmax_of_others(errors: np.ndarray, top: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(-errors / T) over every class but `top` (0 there), per row: the temperature-scaled
    softmax renormalised over the others, computed on its own so that it sums to 1 even where
    the full softmax gives the others no mass at all (underflow)."""
    logits = -errors / temperature
    logits[np.arange(len(top)), top] = -np.inf
    if errors.shape[1] == 1:
        return np.zeros_like(errors)
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def margins(errors: np.ndarray) -> np.ndarray:
    """(second lowest - lowest error) / lowest: how clearly the winner won, scale-free."""
    two = np.sort(errors, axis=1)[:, :2] if errors.shape[1] > 1 else np.concatenate([errors, errors], axis=1)
    return (two[:, 1] - two[:, 0]) / np.maximum(np.abs(two[:, 0]), 1e-12)


@dataclass
class Calibration:
    """A fitted map from a result's errors (and evaluations spent) to class probabilities."""

    method: str  # "temperature" or "platt"
    temperature: float
    platt: dict[str, float] | None = None  # {"margin": w, "log_evals": w, "bias": b}
    classes: list[str] = field(default_factory=list)
    fitted_on: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    # The images it was fitted on, so that a report measures it on the others only.
    fitted_paths: list[str] = field(default_factory=list)

    def class_mismatch(self, classes: Sequence[str]) -> str | None:
        """A warning when `classes` are not the ones this calibration was fitted on (its maps
        still apply: they do not depend on the classes, but its accuracy was measured on others)."""
        if not self.classes or list(classes) == list(self.classes):
            return None
        unknown = [c for c in classes if c not in self.classes]
        missing = [c for c in self.classes if c not in classes]
        parts = ([f"{len(unknown)} class(es) it never saw ({', '.join(unknown[:5])})"] if unknown else []) + (
            [f"not {len(missing)} of its classes ({', '.join(missing[:5])})"] if missing else []
        )
        return (
            "the calibration was fitted on other classes: this run has "
            + ("; ".join(parts) if parts else "its classes in another order")
            + "; its probabilities are still computed, but were never checked on these classes"
        )

    def probabilities_of(self, errors: np.ndarray, evals: np.ndarray) -> np.ndarray:
        """[N, K] probabilities for errors [N, K] (pruned classes already filled in); each row
        sums to 1."""
        p = softmax_of_errors(errors, self.temperature)
        if self.method != "platt" or self.platt is None:
            return p
        w = self.platt
        z = w["margin"] * margins(errors) + w["log_evals"] * np.log(np.maximum(evals, 1)) + w["bias"]
        top = errors.argmin(axis=1)
        rows = np.arange(len(top))
        # With one class there is no other class to give the rest of the mass to: it is certain.
        top_p = 1 / (1 + np.exp(-z)) if errors.shape[1] > 1 else np.ones(len(top))
        out = _softmax_of_others(errors, top, self.temperature) * (1 - top_p)[:, None]
        out[rows, top] = top_p
        return out

    def probabilities(
        self, scores: dict[str, float | None], unet_evals: int, partial_scores: dict[str, float | None] | None = None
    ) -> dict[str, float]:
        """`{class: probability}` for one result (`ImageResult.scores` / a results line's `scores`).
        Classes of the result unknown to this calibration are still scored: the temperature and
        Platt maps do not depend on which classes there are."""
        classes = list(scores)
        errors = filled_errors(scores, classes, partial_scores)[None]
        p = self.probabilities_of(errors, np.array([float(unet_evals)]))[0]
        return {c: float(v) for c, v in zip(classes, p)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"fastgen": "calibration", "format": FORMAT, **asdict(self)}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"calibration file {str(path)!r} cannot be read: {error}") from None
        if not isinstance(data, dict) or data.get("fastgen") != "calibration":
            raise ValueError(f"{str(path)!r} is not a fastgen calibration file (made by `fastgen calibrate`)")
        fields = {
            k: data[k]
            for k in ("method", "temperature", "platt", "classes", "fitted_on", "metrics", "fitted_paths")
            if k in data
        }
        return cls(**fields)


# -- metrics -------------------------------------------------------------------------------------
def expected_calibration_error(p: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy - confidence| per equal-width confidence bin, weighted by count."""
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == labels)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            total += chosen.mean() * abs(correct[chosen].mean() - confidence[chosen].mean())
    return float(total)


def negative_log_likelihood(p: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-12))))


def brier_score(p: np.ndarray, labels: np.ndarray) -> float:
    onehot = np.zeros_like(p)
    onehot[np.arange(len(labels)), labels] = 1
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def metrics(p: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "ece": expected_calibration_error(p, labels),
        "nll": negative_log_likelihood(p, labels),
        "brier": brier_score(p, labels),
        "accuracy": float(np.mean(p.argmax(axis=1) == labels)) if len(labels) else math.nan,
    }


# -- fitting ------------------------------------------------------------------------------------
def fit_temperature(errors: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising NLL, searched on log T around the errors' own scale.

    When every fitting image is right, the NLL only falls as T shrinks and its minimum is the
    edge of the search, a calibration that puts probability ~1 on every answer and near 0 on the
    truth of the first wrong one. Then T is the one whose mean top-class probability on the
    fitting images is (n + 1) / (n + 2), Laplace's estimate of the accuracy after n right
    answers out of n (`all_right_temperature`)."""
    from scipy.optimize import minimize_scalar

    spread = float(np.median(np.std(errors, axis=1))) or 1.0
    centre = math.log(spread)
    low, high = centre - 12, centre + 6
    n = len(labels)
    if n and np.all(np.argmin(errors, axis=1) == labels):
        top = lambda log_t: float(softmax_of_errors(errors, math.exp(log_t)).max(axis=1).mean())
        log_t = all_right_temperature(top, n, low, high)
        if log_t is not None:
            return float(math.exp(log_t))
    objective = lambda log_t: negative_log_likelihood(softmax_of_errors(errors, math.exp(log_t)), labels)
    found = minimize_scalar(objective, bounds=(low, high), method="bounded")
    return float(math.exp(found.x))


def fit_platt(errors: np.ndarray, evals: np.ndarray, labels: np.ndarray) -> dict[str, float] | None:
    """Logistic regression of "the top class is right" on (margin, log evaluations); None when
    the fitting data has only right (or only wrong) answers."""
    from sklearn.linear_model import LogisticRegression

    correct = (errors.argmin(axis=1) == labels).astype(int)
    if correct.min() == correct.max():
        return None
    features = np.stack([margins(errors), np.log(np.maximum(evals, 1))], axis=1)
    model = LogisticRegression(C=1.0).fit(features, correct)
    return {
        "margin": float(model.coef_[0, 0]),
        "log_evals": float(model.coef_[0, 1]),
        "bias": float(model.intercept_[0]),
    }


def is_adaptive(evals: np.ndarray) -> bool:
    """Whether the run spent different budgets on different images (an adaptive policy)."""
    return len(evals) > 0 and float(evals.max()) > float(evals.min())


def split_indices(n: int, fit_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(n) into (fit, held-out)."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * fit_fraction))
    return np.sort(order[:cut]), np.sort(order[cut:])


def fit_calibration(scored: Scored, *, fit_fraction: float = 0.5, seed: int = 0) -> Calibration:
    """Fit on a seeded `fit_fraction` of the labelled records; metrics before (plain softmax,
    T = 1) and after on the rest."""
    labelled = np.flatnonzero(scored.labels >= 0)
    if len(labelled) < 4:
        raise ValueError(
            f"calibration needs labelled results: {len(labelled)} record(s) have a label among the classes"
        )
    fit, held = split_indices(len(labelled), fit_fraction, seed)
    fit, held = labelled[fit], labelled[held]
    errors, evals, labels = scored.errors, scored.evals, scored.labels
    temperature = fit_temperature(errors[fit], labels[fit])
    platt = fit_platt(errors[fit], evals[fit], labels[fit]) if is_adaptive(evals[fit]) else None
    calibration = Calibration(
        "platt" if platt else "temperature", temperature, platt, scored.classes, fitted_on=len(fit),
        fitted_paths=[scored.paths[i] for i in fit],
    )  # fmt: skip
    calibration.metrics = {
        "held_out": len(held),
        "before": metrics(softmax_of_errors(errors[held], 1.0), labels[held]),
        "after": metrics(calibration.probabilities_of(errors[held], evals[held]), labels[held]),
        "temperature_only": metrics(softmax_of_errors(errors[held], temperature), labels[held]),
        "seed": seed,
    }
    return calibration
