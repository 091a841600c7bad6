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

from scipy import special

from fastgen.engine.policies.base import Policy, best_row
from fastgen.engine.policies.noise_profile import NoiseProfile, ProfileMismatch
from fastgen.engine.policies.paired import paired_p_values
from fastgen.engine.policies.profile_bound import (
    CHECK_LEVEL,
    SELF_NORMALISED_SHARE,
    ImageWatch,
    check_watch_options,
    profile_decisions,
)

BOUNDS = ("mixture", "spending", "profile")


def mixture_z_boundary(n: int, alpha: float, tightest_at: float) -> float:
    """The one-sided normal-mixture boundary (Howard, Ramdas, McAuliffe & Sekhon 2021, eq. 14)
    for a sum of n unit-variance terms, divided by sqrt(n): the z-score the mean must exceed. With
    mixture variance rho = `tightest_at` (in samples), it is tightest near n = `tightest_at`; the
    probability that the sum ever crosses it is at most alpha."""
    v = n + tightest_at
    return math.sqrt(2.0 * v * math.log(math.sqrt(v / tightest_at) / (2.0 * alpha) + 1.0) / n)


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

    **What it controls.** With delta = 1 - `confidence` and K classes: for one image, the
    probability that a class is ever dropped at a look where its expected error, averaged over
    the samples seen so far, was no larger than the leader's is at most delta. So the class of
    lowest expected error survives with probability >= 1 - delta whenever it is lowest on every
    prefix of the sample plan (each prefix approximates the full average; a class that wins only
    on the full grid is not covered). Each of the K - 1 comparisons that involve that class holds
    at level delta / (K - 1) at every look at once (a union bound), whichever class leads when it
    is made.

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
    known from a noise profile fitted on the model's training images (`noise_profile`: a file,
    or several, of which the first fitted for the run is used; see
    `fastgen.engine.policies.noise_profile`) instead of estimated from the samples. The spread of
    the expected difference over timesteps is then not counted as noise, which is what lets a
    class whose disadvantage is plain at every timestep go after two or three samples. A profile
    fitted for another model, prompts, dtype or scoring settings is refused. Every look checks
    the image's own noise against the profile and bounds an image the data show to be noisier
    with a self-normalised boundary instead (`fastgen.engine.policies.profile_bound`; its share
    of delta is `self_normalised_share`, the check's level `check_level`); the image's record
    says which. `coverage="per-image"` (the default) states delta for each image whose pairs'
    noise is at most the profile's; `"pair-average"` states it only on average over pairs spread
    like the training pairs, paying for noisy pairs with quiet ones.

    `min_samples`: the first look; `check_every`: samples between looks; `tightest_at`: the sample
    count where the mixture boundary is tightest.
    """

    confidence: float = 0.99
    max_samples: int = 64
    min_samples: int = 3
    check_every: int = 1
    bound: str = "mixture"
    tightest_at: float = 2.0
    noise_profile: str | tuple[str, ...] = ""  # bound="profile": the profile file(s)
    coverage: str = "per-image"  # bound="profile": per image, or on average over pairs
    check_level: float = CHECK_LEVEL  # bound="profile": the noise check's false-alarm level per look
    self_normalised_share: float = SELF_NORMALISED_SHARE  # bound="profile": error kept for switched images
    # Filled by `bind`: the number of classes the union bound spreads the error over.
    _n_classes: int = field(default=0, repr=False, compare=False)
    # bound="profile": every file's profile, and the one used (the first fitted for the run).
    _profiles: tuple[tuple[str, NoiseProfile], ...] = field(default=(), repr=False, compare=False)
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
        check_watch_options(self.coverage, self.check_level, self.self_normalised_share)
        load_profiles(self)

    def check_scoring(self, settings: dict[str, Any]) -> None:
        """Refuse scoring settings none of the noise profiles was fitted for (flow settings are
        compared by `for_run`, once the model's schedule has filled them in)."""
        choose_profile(self, {k: v for k, v in settings.items() if not k.startswith("flow_")})

    @property
    def needs_run_facts(self) -> bool:
        return bool(self._profiles)

    def for_run(self, run: dict[str, Any]) -> SequentialElimination:
        """This policy with the profile fitted for `run` (its scoring settings and model facts:
        `fastgen.engine.policies.noise_profile.FITTED_FOR`), or a `ProfileMismatch`."""
        return choose_profile(self, run)

    def bind(self, class_names):
        return replace(self, _n_classes=len(class_names))

    def first_round(self) -> int:
        return self.min_samples

    def start_image(self) -> ImageWatch | None:
        return ImageWatch() if self._profile is not None else None

    def image_record(self, state) -> dict[str, Any] | None:
        return {"noise_check": state.as_record()} if isinstance(state, ImageWatch) else None

    def level(self, n_done: int, n_classes: int) -> float:
        """The p-value below which a class is dropped after `n_done` samples."""
        look = 1 + (n_done - self.min_samples) // self.check_every
        return look_level(self.bound, n_done, look, self.pair_alpha(n_classes), self.tightest_at)

    def pair_alpha(self, n_classes: int) -> float:
        return (1.0 - self.confidence) / max(n_classes - 1, 1)

    def next_round(self, class_errors, alive, state=None):
        n_done = class_errors.shape[1]
        best = best_row(class_errors, alive)
        n_classes = max(self._n_classes, len(alive))
        if self._profile is not None:
            worse = profile_decisions(
                class_errors, best, self._profile, self.pair_alpha(n_classes), self.tightest_at,
                coverage=self.coverage, max_samples=self.max_samples, check_level=self.check_level,
                self_normalised_share=self.self_normalised_share, watch=state,
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


def profile_files(noise_profile: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if not noise_profile:
        return ()
    return (noise_profile,) if isinstance(noise_profile, str) else tuple(noise_profile)


def load_profiles(policy: Any) -> None:
    """Fill a policy's `_profiles` (and `_profile`: the first, until a run picks) from its files."""
    files = profile_files(policy.noise_profile)
    if files and not policy._profiles:
        profiles = tuple((path, NoiseProfile.load(path)) for path in files)
        object.__setattr__(policy, "_profiles", profiles)
        object.__setattr__(policy, "_profile", profiles[0][1])
    if isinstance(policy.noise_profile, list):
        object.__setattr__(policy, "noise_profile", tuple(policy.noise_profile))
    if policy.coverage == "pair-average" and any(not p.pair_scales().size for _, p in policy._profiles):
        raise ValueError(
            "coverage='pair-average' needs a noise profile that records its pairs' noise scales "
            "(fit.pair_scales; fit the profile again if it has none)"
        )


FIT_HINT = (
    "Use a boundary that needs no profile (bound='mixture', --bound mixture), or fit a profile for this run "
    "(fastgen.eval.noise_fit.fit_noise_profile; for the embedded models: python -m training.fit_noise_profile "
    "--model MODEL --out FILE)"
)


def choose_profile(policy: Any, run: dict[str, Any]) -> Any:
    """`policy` with the first of its profiles fitted for `run` as `_profile` (and `noise_profile`
    naming that file), or a ProfileMismatch naming what differs for each of them."""
    if not policy._profiles:
        return policy
    refusals = []
    for path, profile in policy._profiles:
        refusal = profile.refusal(run, path)
        if refusal is None:
            chosen = replace(policy, noise_profile=path, _profiles=policy._profiles, _profile=profile)
            return chosen
        refusals.append(refusal)
    raise ProfileMismatch(" / ".join(refusals) + ". " + FIT_HINT)
