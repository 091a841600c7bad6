"""Successive elimination by paired tests on the shared-noise differences (Clark & Jaini),
vectorised over the alive classes, with an optional cheap screening round first.

Because every class of an image is scored on the same (timestep, noise) samples, the per-sample
difference between a class and the current best cancels most of the noise: a one-sided paired
t-test on those differences tells early which classes cannot win.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import special

from fastgen.engine.policies.base import Policy, best_row


def paired_p_values(class_errors: torch.Tensor, best: int) -> np.ndarray:
    """One-sided p-value of "row i is no worse than row `best`", for every row at once.

    t = mean(d) / (std(d) / sqrt(n)) for the per-sample differences d = row - best, and
    p = P(T_{n-1} >= t). A row identical to the best in every sample has p = 1; a constant
    positive difference (zero spread) has p = 0.
    """
    diffs = (class_errors.double() - class_errors[best].double()).numpy()
    n = diffs.shape[1]
    mean = diffs.mean(axis=1)
    std = diffs.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_stat = mean / (std / np.sqrt(n))
        p = special.stdtr(n - 1, -t_stat)  # the Student t survival function at t
    return np.where(std == 0, np.where(mean > 0, 0.0, 1.0), p)


@dataclass(frozen=True)
class PairedTest(Policy):
    """From `min_samples` on, every `check_every` samples, each class is compared with the class
    of lowest mean error by a one-sided paired t-test; it is dropped when p < `alpha`. Stops when
    one class is left or at `max_samples`.

    With `screen_samples` > 0, a screening round comes first: every class on that many shared
    samples, then only the `screen_keep` classes of lowest mean error go on to the tests. Its
    samples are the first of the timestep sequence, so they are reused by the survivors.
    """

    alpha: float = 2e-3
    min_samples: int = 20
    max_samples: int = 500
    check_every: int = 5
    screen_samples: int = 0
    screen_keep: int = 50

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 2 <= self.min_samples <= self.max_samples:
            raise ValueError(f"need 2 <= min_samples <= max_samples, got {self.min_samples}, {self.max_samples}")
        if self.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.check_every}")
        if not 0 <= self.screen_samples < self.min_samples:
            raise ValueError(f"screen_samples must be in [0, min_samples), got {self.screen_samples}")
        if self.screen_keep < 1:
            raise ValueError(f"screen_keep must be >= 1, got {self.screen_keep}")

    def first_round(self) -> int:
        return self.screen_samples or self.min_samples

    def p_values(self, class_errors: torch.Tensor, best: int) -> list[float]:
        """One-sided p-value of 'class i is no worse than the best', per alive row."""
        return paired_p_values(class_errors, best).tolist()

    def next_round(self, class_errors, alive):
        n_done = class_errors.shape[1]
        best = best_row(class_errors, alive)
        if n_done < self.min_samples:  # the screening round just ended
            order = np.lexsort((np.asarray(alive), class_errors.double().mean(dim=1).numpy()))
            keep = set(order[: self.screen_keep].tolist())
            kept = [c for i, c in enumerate(alive) if i in keep]
            return kept, (self.min_samples if len(kept) > 1 else None)
        p = paired_p_values(class_errors, best)
        kept = [c for i, c in enumerate(alive) if i == best or p[i] >= self.alpha]
        if len(kept) == 1 or n_done >= self.max_samples:
            return kept, None
        return kept, min(n_done + self.check_every, self.max_samples)

    def decided(self, alive: list[int]) -> bool:
        """Whether the run ended with one class standing (False: `max_samples` came first, with
        the classes left not separated from the leader by the test)."""
        return len(alive) == 1
