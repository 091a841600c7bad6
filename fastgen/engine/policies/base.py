"""The policy interface: what the engine and the reference ask after every round.

A policy only reads error tables and decides; it never runs a model. The engine and the
reference call the same policy objects, so pruning decisions are identical by construction.

Policies decide over *units*: the classes (indices 0..K-1) and, for a policy that scores a
label tree, the tree's inner nodes (indices K.. after `bind`). Sample counts are cumulative:
after a round that ended at n samples, every alive unit has scores for samples 0..n-1 (nested
grids reuse earlier scores); a unit that becomes alive later is scored from sample 0.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch


class Policy(ABC):
    """Decides the next cumulative sample count and the units alive in the next round."""

    @property
    @abstractmethod
    def max_samples(self) -> int:
        """No unit is ever scored on more samples than this."""

    @abstractmethod
    def first_round(self) -> int:
        """Cumulative samples every initial unit gets in the first round."""

    @abstractmethod
    def next_round(self, class_errors: torch.Tensor, alive: list[int]) -> tuple[list[int], int | None]:
        """Given per-sample errors [len(alive), n_done] of the alive units, return the units
        alive next (for most policies a subset of `alive`, in its order) and the next
        cumulative sample count, or None when evaluation of this image is finished."""

    def decided(self, alive: list[int]) -> bool:
        """Whether a run that ended with these classes standing reached a decision. A fixed
        schedule's answer is the class of lowest error by definition: always True here; an
        adaptive policy that can run out of budget with several classes tied says False."""
        return True

    def bind(self, class_names: Sequence[str]) -> Policy:
        """This policy for one set of classes (a tree policy resolves its tree here)."""
        return self

    def extra_units(self) -> list[tuple[str, tuple[str, ...]]]:
        """(name, prompts) of the units beyond the classes, numbered from K on (after `bind`)."""
        return []

    def initial_units(self, n_classes: int) -> list[int]:
        """The units scored in the first round."""
        return list(range(n_classes))


def mean_errors(class_errors: torch.Tensor) -> torch.Tensor:
    """Per-row mean in float64: the statistic every ranking and the final scores use."""
    return class_errors.double().mean(dim=1)


def rank(class_errors: torch.Tensor, alive: list[int]) -> list[int]:
    """Alive units sorted by mean error, ties broken by unit index (stable sort)."""
    means = mean_errors(class_errors)
    order = sorted(range(len(alive)), key=lambda i: (means[i].item(), alive[i]))
    return [alive[i] for i in order]


def best_row(class_errors: torch.Tensor, alive: list[int]) -> int:
    """The row of the unit with the lowest mean error (ties: the lower unit index)."""
    means = mean_errors(class_errors)
    return min(range(len(alive)), key=lambda i: (means[i].item(), alive[i]))
