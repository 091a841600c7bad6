"""Fixed schedules: every class on the same samples, or the published stage schedules."""

from __future__ import annotations

from dataclasses import dataclass

from fastgen.engine.policies.base import Policy, rank

# Li et al.'s ImageNet schedule (1,000 classes), as published: the anchor for large label sets.
LI_IMAGENET = {"n_samples": (50, 100, 500, 1000), "to_keep": (500, 50, 10, 1)}


@dataclass(frozen=True)
class Exhaustive(Policy):
    """Every class on `n_samples` samples; no pruning."""

    n_samples: int = 100

    def __post_init__(self):
        if isinstance(self.n_samples, (tuple, list)):  # `--n-samples 50` parses as (50,)
            if len(self.n_samples) != 1:
                raise ValueError(f"the exhaustive policy takes one n_samples, got {tuple(self.n_samples)}")
            object.__setattr__(self, "n_samples", int(self.n_samples[0]))
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
    UNet calls per image with one prompt per class; their ImageNet schedule is
    `FixedStages(**LI_IMAGENET)`: 1000*50 + 500*50 + 50*400 + 10*500 = 100,000 calls on nested
    grids (their code re-scores fresh timesteps per stage, 124,500 calls).
    """

    n_samples: tuple[int, ...] = (50, 500)
    to_keep: tuple[int, ...] = (5, 1)

    def __post_init__(self):
        object.__setattr__(self, "n_samples", tuple(int(n) for n in self.n_samples))
        object.__setattr__(self, "to_keep", tuple(int(k) for k in self.to_keep))
        if not self.n_samples or len(self.n_samples) != len(self.to_keep):
            raise ValueError(
                f"n_samples and to_keep must be non-empty and of equal length, got {self.n_samples} and {self.to_keep}"
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
        kept = rank(class_errors, alive)[: self.to_keep[stage]]
        kept = [c for c in alive if c in kept]
        if len(kept) == 1 or stage + 1 == len(self.n_samples):
            return kept, None
        return kept, self.n_samples[stage + 1]
