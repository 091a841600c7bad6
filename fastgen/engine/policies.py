"""Adaptive evaluation policies: how many shared-noise samples to score, and which classes stay.

A policy only reads error tables and decides; it never runs a model. The engine and the
reference call the same policy objects, so pruning decisions are identical by construction.

Sample counts are cumulative per surviving class: after a round that ended at `n_done` samples,
every alive class has scores for samples 0..n_done-1 (nested grids reuse earlier scores).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from scipy import stats

from fastgen.choices import POLICIES


class Policy(ABC):
    """Decides the next cumulative sample count and the classes that survive a round."""

    @property
    @abstractmethod
    def max_samples(self) -> int:
        """No class is ever scored on more samples than this."""

    @abstractmethod
    def first_round(self) -> int:
        """Cumulative samples every class gets in the first round."""

    @abstractmethod
    def next_round(
        self, class_errors: torch.Tensor, alive: list[int]
    ) -> tuple[list[int], int | None]:
        """Given per-sample errors [len(alive), n_done] of the alive classes, return the classes
        to keep (a subset of `alive`, in its order) and the next cumulative sample count, or None
        when evaluation of this image is finished."""


def _rank(class_errors: torch.Tensor, alive: list[int]) -> list[int]:
    """Alive classes sorted by mean error, ties broken by class index (stable sort)."""
    means = class_errors.double().mean(dim=1)
    order = sorted(range(len(alive)), key=lambda i: (means[i].item(), alive[i]))
    return [alive[i] for i in order]


@dataclass(frozen=True)
class Exhaustive(Policy):
    """Every class on `n_samples` samples; no pruning."""

    n_samples: int = 100

    def __post_init__(self):
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")

    @property
    def max_samples(self) -> int:
        return self.n_samples

    def first_round(self) -> int:
        return self.n_samples

    def next_round(self, class_errors, alive):
        return list(alive), None


@dataclass(frozen=True)
class FixedStages(Policy):
    """The published stage schedules: after stage i (cumulative `n_samples[i]` samples) keep the
    `to_keep[i]` classes with the lowest mean error. Stops as soon as one class is left.

    Li et al.'s CIFAR-10 schedule is `FixedStages((50, 500), (5, 1))`: 10*50 + 5*450 = 2,750
    UNet calls per image with one prompt per class.
    """

    n_samples: tuple[int, ...] = (50, 500)
    to_keep: tuple[int, ...] = (5, 1)

    def __post_init__(self):
        object.__setattr__(self, "n_samples", tuple(int(n) for n in self.n_samples))
        object.__setattr__(self, "to_keep", tuple(int(k) for k in self.to_keep))
        if not self.n_samples or len(self.n_samples) != len(self.to_keep):
            raise ValueError(
                f"n_samples and to_keep must be non-empty and of equal length, got "
                f"{self.n_samples} and {self.to_keep}"
            )
        if any(b <= a for a, b in zip(self.n_samples, self.n_samples[1:])) or self.n_samples[0] < 1:
            raise ValueError(f"n_samples must be positive and increasing, got {self.n_samples}")
        if any(k < 1 for k in self.to_keep):
            raise ValueError(f"to_keep must be >= 1, got {self.to_keep}")

    @property
    def max_samples(self) -> int:
        return self.n_samples[-1]

    def first_round(self) -> int:
        return self.n_samples[0]

    def next_round(self, class_errors, alive):
        n_done = class_errors.shape[1]
        stage = self.n_samples.index(n_done)
        kept = _rank(class_errors, alive)[: self.to_keep[stage]]
        kept = [c for c in alive if c in kept]
        if len(kept) == 1 or stage + 1 == len(self.n_samples):
            return kept, None
        return kept, self.n_samples[stage + 1]


@dataclass(frozen=True)
class PairedTest(Policy):
    """Successive elimination on the shared-noise differences (Clark & Jaini).

    From `min_samples` on, every `check_every` samples, each class is compared with the class of
    lowest mean error by a one-sided paired t-test on the per-sample differences; it is dropped
    when p < `alpha`. Stops when one class is left or at `max_samples`.
    """

    alpha: float = 2e-3
    min_samples: int = 20
    max_samples: int = 500
    check_every: int = 5

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 2 <= self.min_samples <= self.max_samples:
            raise ValueError(
                f"need 2 <= min_samples <= max_samples, got {self.min_samples}, {self.max_samples}"
            )
        if self.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.check_every}")

    def first_round(self) -> int:
        return self.min_samples

    def p_values(self, class_errors: torch.Tensor, best: int) -> list[float]:
        """One-sided p-value of 'class i is no worse than the best', per alive row."""
        diffs = (class_errors.double() - class_errors[best].double()).numpy()
        n = diffs.shape[1]
        out = []
        for row in diffs:
            mean, std = row.mean(), row.std(ddof=1)
            if std == 0:
                out.append(0.0 if mean > 0 else 1.0)
                continue
            t_stat = mean / (std / math.sqrt(n))
            out.append(float(stats.t.sf(t_stat, df=n - 1)))
        return out

    def next_round(self, class_errors, alive):
        n_done = class_errors.shape[1]
        means = class_errors.double().mean(dim=1)
        best = min(range(len(alive)), key=lambda i: (means[i].item(), alive[i]))
        p = self.p_values(class_errors, best)
        kept = [c for i, c in enumerate(alive) if i == best or p[i] >= self.alpha]
        if len(kept) == 1 or n_done >= self.max_samples:
            return kept, None
        return kept, min(n_done + self.check_every, self.max_samples)


def make_policy(name: str | Policy | None = None, **options) -> Policy:
    """Build a policy from its name (`exhaustive`, `stages`, `paired`) and its options."""
    if isinstance(name, Policy):
        return name
    name = name or "paired"
    if name == "exhaustive":
        return Exhaustive(**_pick(_one_count(options), "n_samples"))
    if name == "stages":
        return FixedStages(**_pick(options, "n_samples", "to_keep"))
    if name == "paired":
        return PairedTest(**_pick(options, "alpha", "min_samples", "max_samples", "check_every"))
    raise ValueError(f"policy must be one of {POLICIES}, got {name!r}")


def _one_count(options: dict) -> dict:
    """The exhaustive policy takes one `n_samples`; a one-element sequence (as the command line
    parses `--n-samples 50`) is that count."""
    n_samples = options.get("n_samples")
    if isinstance(n_samples, (tuple, list)):
        if len(n_samples) != 1:
            raise ValueError(f"the exhaustive policy takes one n_samples, got {tuple(n_samples)}")
        return {**options, "n_samples": n_samples[0]}
    return options


def _pick(options: dict, *names: str) -> dict:
    return {k: options[k] for k in names if options.get(k) is not None}
