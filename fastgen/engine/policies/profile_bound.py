"""The known-variance boundary of a noise profile, checked against each image's own noise.

With a profile (`noise_profile.NoiseProfile`) a class is dropped once the sum of its paired
differences with the leader crosses a one-sided normal-mixture boundary whose variance is the
profile's (Howard, Ramdas, McAuliffe & Sekhon 2021). That holds for a pair whose noise is at most
the profile's; an image can be noisier than anything the profile was fitted on. So every look
also checks the image's own noise, which the `stratified` order makes readable from the second
sample on: samples 2j and 2j+1 share a timestep, so the difference of their paired differences is
noise alone, and over the m complete pairs

    Q = sum_j (d_2j - d_2j+1)^2 / (2 sd_j^2)     (sd_j: the profile's sd at pair j's timestep)

is at most chi-square with m degrees of freedom when the profile holds. When Q of any comparison
with the leader passes its (1 - `check_level`) quantile, the data contradict the profile and the
image is bounded from then on by a self-normalised boundary instead: the same mixture boundary
with the noise scale estimated from those m contrasts (a Student-t correction for m degrees of
freedom, as the t-test boundary has), the profile supplying only how the noise varies between
bands. The image's record says so (`ImageWatch.as_record`).

**The check's level.** `check_level` (0.1 per look by default) is a false-alarm rate, and a
false alarm costs only calls: the image goes to the self-normalised boundary, which takes the
noise scale from the image's own pairs. A late alarm costs validity: the looks before it use the
profile's boundary, which a pair noisier than the profile crosses more often than stated. So the
level is set high: on tables drawn at 1.25 to 3 times `builtin:digits`' profile
(`bench/bench_validity.py synthetic`, seed 0), 0.01 let the best class go in up to 2.4% of tables
against the stated 1%, every time under the profile's boundary before the check moved the table,
and 0.1 in at most 0.2%; on the held-out digits 0.1 costs 0.8 calls per image more than 0.01
(docs/embedded-models.md, "Does the stated 1% hold?", has the choice among levels).

**Error.** 1 - confidence is split: (1 - `self_normalised_share`) of it for the profile's
boundary, the rest for the self-normalised one, so that the chance a comparison errs under either
is at most its share by a union bound, whatever the check decides. For an image whose pairs' noise
is at most the profile's (`coverage="per-image"`, the default) that is a statement about that
image; `"pair-average"` draws the boundary on the typical noise at the level that holds on average
over pairs spread as the fitted ones (`NoiseProfile.average_level`), a weaker statement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import special, stats

from fastgen.engine.policies.noise_profile import NoiseProfile

COVERAGES = ("per-image", "pair-average")
# The defaults of every rule with a profile (`SequentialElimination`, `LabelTreePolicy`): the
# check's false-alarm level per look (why 0.1: the module docstring) and the share of the error
# kept for images the check moves.
CHECK_LEVEL = 0.1
SELF_NORMALISED_SHARE = 0.1


def check_watch_options(coverage: str, check_level: float, self_normalised_share: float) -> None:
    """A ValueError for a coverage, check level or self-normalised share no rule can use."""
    if coverage not in COVERAGES:
        raise ValueError(f"coverage must be one of {COVERAGES}, got {coverage!r}")
    if not 0 < check_level < 1 or not 0 < self_normalised_share < 1:
        raise ValueError(
            f"check_level and self_normalised_share must be in (0, 1), got {check_level}, {self_normalised_share}"
        )


def mixture_sum_boundary(variance: float, alpha: float, rho: float) -> float:
    """The one-sided normal-mixture boundary for a sum of independent terms whose variances are
    known and add up to `variance`: the value the sum must reach (mixture scale `rho`, in the same
    units). The probability that the centred sum ever crosses it is at most alpha."""
    v = variance + rho
    return math.sqrt(2.0 * v * math.log(math.sqrt(v / rho) / (2.0 * alpha) + 1.0))


@dataclass
class ImageWatch:
    """One image's noise check: where it switched to the self-normalised boundary (None: never)
    and the largest noise scale, relative to the profile, that any comparison showed."""

    switched_at: int | None = None
    largest_scale: float = 0.0
    looks: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        return {
            "bound": "self-normalised" if self.switched_at is not None else "profile",
            "switched_at": self.switched_at,
            "largest_noise_scale": round(self.largest_scale, 4),
        }


def pair_contrasts(differences: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """[rows, m]: (d_2j - d_2j+1) / (sqrt(2) sd_2j) for the m complete sample pairs."""
    m = differences.shape[1] // 2
    if m == 0:
        return np.zeros((differences.shape[0], 0))
    pairs = differences[:, : 2 * m].reshape(differences.shape[0], m, 2)
    return (pairs[..., 0] - pairs[..., 1]) / (math.sqrt(2.0) * sd[0 : 2 * m : 2])


def profile_decisions(
    class_errors: torch.Tensor,
    best: int,
    profile: NoiseProfile,
    alpha: float,
    tightest_at: float,
    *,
    coverage: str = "per-image",
    max_samples: int = 0,
    check_level: float = CHECK_LEVEL,
    self_normalised_share: float = SELF_NORMALISED_SHARE,
    watch: ImageWatch | None = None,
) -> np.ndarray:
    """Per row: whether it is worse than row `best` at error `alpha` for this comparison (the
    rule in the module docstring). `watch` carries the image's check from look to look (without
    one, each look decides from its own data alone)."""
    n_done = class_errors.shape[1]
    differences = (class_errors.double() - class_errors[best].double()).numpy()
    sums = differences.sum(axis=1)
    contrasts = pair_contrasts(differences, profile.sample_sd(n_done))
    m = contrasts.shape[1]
    q = np.square(contrasts).sum(axis=1)
    rivals = np.arange(len(sums)) != best
    contradicted = False
    if m >= 1 and rivals.any():
        contradicted = bool(np.any(q[rivals] > stats.chi2.isf(check_level, m)))
    if watch is not None:
        watch.looks += 1
        if m >= 1 and rivals.any():
            watch.largest_scale = max(watch.largest_scale, float(np.sqrt(q[rivals].max() / m)))
        if contradicted and watch.switched_at is None:
            watch.switched_at = n_done
        contradicted = watch.switched_at is not None
    if contradicted:
        return self_normalised_worse(sums, q, m, profile, n_done, alpha * self_normalised_share, tightest_at) & rivals
    level = alpha * (1.0 - self_normalised_share)
    typical = coverage == "pair-average"
    if typical:
        level = profile.average_level(level, tightest_at, max(max_samples, n_done))
    variance = profile.summed_variance(n_done, typical=typical)
    boundary = mixture_sum_boundary(variance, level, tightest_at * profile.mean_variance(typical=typical))
    return (sums >= boundary) & rivals


def self_normalised_worse(
    sums: np.ndarray, q: np.ndarray, m: int, profile: NoiseProfile, n_done: int, alpha: float, tightest_at: float
) -> np.ndarray:
    """The mixture boundary with the noise scale estimated from m pair contrasts: the scale-free
    z it sets, met by a Student-t p-value on m degrees of freedom."""
    if m < 1:
        return np.zeros(len(sums), dtype=bool)
    variance = profile.summed_variance(n_done)
    z = mixture_sum_boundary(variance, alpha, tightest_at * profile.mean_variance()) / math.sqrt(variance)
    scale2 = np.maximum(q / m, 1e-300)
    t = sums / np.sqrt(scale2 * variance)
    return stats.t.sf(t, m) < special.ndtr(-z)
