"""Successive elimination with a stated error: shared-noise paired differences, tested at every
look against a boundary that holds under repeated looks.

Every class of an image is scored on the same (timestep, noise) samples, so the per-sample
difference d = e_k - e_best between a class and the current leader cancels most of the noise. A
class is dropped once its one-sided paired t-test p-value falls below the boundary's level for
this look; the boundary, not a fixed alpha, is what keeps the error stated after many looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from scipy import special

from fastgen.engine.policies.base import Policy, best_row
from fastgen.engine.policies.noise_profile import NoiseProfile
from fastgen.engine.policies.paired import paired_p_values

BOUNDS = ("mixture", "spending", "profile")
COVERAGES = ("quantile", "average")


def mixture_z_boundary(n: int, alpha: float, tightest_at: float) -> float:
    """The one-sided normal-mixture boundary (Howard, Ramdas, McAuliffe & Sekhon 2021, eq. 14)
    for a sum of n unit-variance terms, divided by sqrt(n): the z-score the mean must exceed. With
    mixture variance rho = `tightest_at` (in samples), it is tightest near n = `tightest_at`; the
    probability that the sum ever crosses it is at most alpha."""
    v = n + tightest_at
    return math.sqrt(2.0 * v * math.log(math.sqrt(v / tightest_at) / (2.0 * alpha) + 1.0) / n)


def mixture_sum_boundary(variance: float, alpha: float, rho: float) -> float:
    """The same one-sided normal-mixture boundary for a sum of independent terms whose variances
    are known and add up to `variance`: the value the sum must reach (mixture scale `rho`, in the
    same units). The probability that the centred sum ever crosses it is at most alpha."""
    v = variance + rho
    return math.sqrt(2.0 * v * math.log(math.sqrt(v / rho) / (2.0 * alpha) + 1.0))


def worse_than_best(
    class_errors: torch.Tensor,
    best: int,
    profile: NoiseProfile,
    alpha: float,
    tightest_at: float,
    coverage: str = "quantile",
    max_samples: int = 0,
) -> np.ndarray:
    """Per row: whether the sum of its paired differences with row `best` has crossed the
    known-variance mixture boundary at level `alpha` (variances from `profile`; the mixture scale
    is `tightest_at` samples of the profile's mean variance). `coverage="quantile"`: the
    profile's variances, which cover its fitted quantile of pairs; `"average"`: the typical
    variances at the level that errs at most `alpha` on average over pairs spread as the
    profile's (`NoiseProfile.average_level`, for looks up to `max_samples`)."""
    n_done = class_errors.shape[1]
    sums = (class_errors.double() - class_errors[best].double()).sum(dim=1).numpy()
    typical = coverage == "average"
    if typical:
        alpha = profile.average_level(alpha, tightest_at, max(max_samples, n_done))
    variance = profile.summed_variance(n_done, typical=typical)
    return sums >= mixture_sum_boundary(variance, alpha, tightest_at * profile.mean_variance(typical=typical))


def look_level(bound: str, n: int, look: int, alpha: float, tightest_at: float) -> float:
    """The p-value level a paired t-test must beat at this look, for one comparison at error
    `alpha`. `mixture`: the tail mass of the normal-mixture boundary at n (the t-test's p-value
    below it means the t statistic exceeds the boundary after the Student-t correction for a
    variance estimated from n samples). `spending`: alpha * 6 / (pi^2 look^2), which sums to alpha
    over all looks (Bonferroni over looks)."""
    if bound == "mixture":
        return float(special.ndtr(-mixture_z_boundary(n, alpha, tightest_at)))
    return alpha * 6.0 / (math.pi**2 * look**2)


@dataclass(frozen=True)
class SequentialElimination(Policy):
    """Drop a class once it is worse than the leader at the stated `confidence`, whenever it is
    looked at; stop when one class is left or at `max_samples` (then the result is undecided and
    the survivors are the classes not separated from the winner).

    **What it controls.** With delta = 1 - `confidence` and K classes: the probability that a
    class is ever dropped at a look where its expected error, averaged over the samples seen so
    far, was no larger than the leader's is at most delta. So the class of lowest expected error
    survives with probability >= 1 - delta whenever it is lowest on every prefix of the sample
    plan (the timesteps are a nested even grid, so each prefix approximates the full average; a
    class that wins only on the full grid is not covered). Each of the K - 1 comparisons that
    involve that class holds at level delta / (K - 1) at every look at once (a union bound),
    whichever class leads when it is made.

    **Assumptions.** The samples' noises are independent, so the paired differences are
    independent given the timesteps. The `mixture` boundary is a one-sided normal-mixture
    confidence sequence with the variance estimated from the samples (valid asymptotically,
    Waudby-Smith et al. 2021); each look's level is then met by the paired t-test's p-value (a
    Student-t correction that guards small n, where the estimated variance is itself uncertain,
    and vanishes as n grows). `spending` is exact per look for normal differences and
    Bonferroni over looks. Neither is exact for heavy-tailed differences at a handful of samples;
    `bench/bench_policies.py validity` measures the error on real tables. The error does not
    cover the final pick among undecided survivors.

    `profile`: the same mixture boundary on the plain sum of the differences, with the variance
    known from the model's noise profile (`noise_profile`, a file fitted on training images, see
    `fastgen.engine.policies.noise_profile`) instead of estimated from the samples. The spread
    of the expected difference over timesteps is then not counted as noise, which is what lets
    a class whose disadvantage is plain at every timestep go after two or three samples. Exact
    for normal noise whose sd at each timestep is at most the profile's; the profile states the
    quantile of the per-pair noise it was fitted to cover, and it is refused for scoring
    settings other than those it was fitted for. `coverage="average"` states the error on
    average over pairs instead: the boundary is on the typical noise, at the level that keeps
    the error averaged over pairs whose noise is spread as the profile's fitted pairs' at most
    delta / (K - 1) per comparison (`NoiseProfile.average_level`); a pair noisier than the
    typical one then errs more often than that, a quieter one less.

    `min_samples`: the first look; `check_every`: samples between looks; `tightest_at`: the sample
    count where the mixture boundary is tightest. The defaults are the setting of fewest calls at
    full agreement on training digits (`bench/results/policies_replay_train_15.json`).
    """

    confidence: float = 0.99
    max_samples: int = 64
    min_samples: int = 3
    check_every: int = 1
    bound: str = "mixture"
    tightest_at: float = 2.0
    noise_profile: str = ""  # the profile file, for bound="profile"
    coverage: str = "quantile"  # bound="profile": per pair up to the profile's quantile, or on average
    # Filled by `bind`: the number of classes the union bound spreads the error over.
    _n_classes: int = field(default=0, repr=False, compare=False)
    _profile: NoiseProfile | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 2 <= self.min_samples <= self.max_samples:
            raise ValueError(f"need 2 <= min_samples <= max_samples, got {self.min_samples}, {self.max_samples}")
        if self.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.check_every}")
        if self.bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}, got {self.bound!r}")
        if not self.tightest_at > 0:
            raise ValueError(f"tightest_at must be > 0, got {self.tightest_at}")
        if (self.bound == "profile") != bool(self.noise_profile):
            raise ValueError("bound='profile' and noise_profile=FILE go together: give both or neither")
        if self.coverage not in COVERAGES:
            raise ValueError(f"coverage must be one of {COVERAGES}, got {self.coverage!r}")
        if self.noise_profile and self._profile is None:
            object.__setattr__(self, "_profile", NoiseProfile.load(self.noise_profile))
        if self.coverage == "average" and (self._profile is None or not self._profile.pair_scales().size):
            raise ValueError(
                "coverage='average' needs bound='profile' with a noise profile that records its pairs' "
                "noise scales (fit.pair_scales; fit the profile again if it has none)"
            )

    def check_scoring(self, settings: dict[str, Any]) -> None:
        """Refuse scoring settings the noise profile was not fitted for (its variances would not
        be those of the errors this run computes)."""
        if self._profile is not None:
            self._profile.refuse_mismatches(settings, self.noise_profile)

    def bind(self, class_names):
        return replace(self, _n_classes=len(class_names))

    def first_round(self) -> int:
        return self.min_samples

    def level(self, n_done: int, n_classes: int) -> float:
        """The p-value below which a class is dropped after `n_done` samples."""
        look = 1 + (n_done - self.min_samples) // self.check_every
        return look_level(self.bound, n_done, look, self.pair_alpha(n_classes), self.tightest_at)

    def pair_alpha(self, n_classes: int) -> float:
        return (1.0 - self.confidence) / max(n_classes - 1, 1)

    def next_round(self, class_errors, alive):
        n_done = class_errors.shape[1]
        best = best_row(class_errors, alive)
        n_classes = max(self._n_classes, len(alive))
        if self._profile is not None:
            worse = worse_than_best(
                class_errors, best, self._profile, self.pair_alpha(n_classes), self.tightest_at,
                coverage=self.coverage, max_samples=self.max_samples,
            )  # fmt: skip
            kept = [c for i, c in enumerate(alive) if i == best or not worse[i]]
        else:
            threshold = self.level(n_done, n_classes)
            p = paired_p_values(class_errors, best)
            kept = [c for i, c in enumerate(alive) if i == best or not p[i] < threshold]
        if len(kept) == 1 or n_done >= self.max_samples:
            return kept, None
        return kept, min(n_done + self.check_every, self.max_samples)

    def decided(self, alive: list[int]) -> bool:
        """Whether the run ended with one class standing (False: the budget ran out first)."""
        return len(alive) == 1
