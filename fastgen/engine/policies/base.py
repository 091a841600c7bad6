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
from typing import Any

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
        cumulative sample count, or None when evaluation of this image is finished. A policy
        that keeps per-image state (`start_image`) takes it as a third argument, `state`."""

    def decided(self, alive: list[int]) -> bool:
        """Whether a run that ended with these classes standing reached a decision. A fixed
        schedule's answer is the class of lowest error by definition: always True here; an
        adaptive policy that can run out of budget with several classes tied says False."""
        return True

    def bind(self, class_names: Sequence[str]) -> Policy:
        """This policy for one set of classes (a tree policy resolves its tree here)."""
        return self

    @property
    def needs_run_facts(self) -> bool:
        """Whether `for_run` reads the model facts (computing the denoiser's hash costs a pass
        over its weights, so it is done only for a policy that asks)."""
        return False

    def for_run(self, run: dict[str, Any]) -> Policy:
        """This policy for one run: `run` holds the scoring settings and what the model is (its
        denoiser's hash, training timesteps, dtype, the prompts scored). A policy fitted for some
        of these (a noise profile) refuses a run it was not fitted for; others return self."""
        return self

    def start_image(self) -> Any:
        """State this policy keeps for one image from look to look (None: it keeps none). The
        engine and the reference pass it back with every `next_round` call of that image."""
        return None

    def image_record(self, state: Any) -> dict[str, Any] | None:
        """What an image's results line records of that state (None: nothing)."""
        return None

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


def call_next_round(policy: Policy, class_errors: torch.Tensor, alive: list[int], state: Any):
    """`policy.next_round`, with the image's state when the policy keeps one."""
    if state is None:
        return policy.next_round(class_errors, alive)
    return policy.next_round(class_errors, alive, state)
