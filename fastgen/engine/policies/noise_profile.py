"""A model's noise profile: how much the paired difference of two classes' errors varies, at each
timestep, from the noise alone.

Every class of an image is scored on the same (timestep, noise) samples, and with `even`
timesteps sample s always has the same timestep. The spread of the paired differences d_s over s
then has two parts: the noise, and how much the expected difference changes with the timestep.
Only the first is random given the timesteps; a t-test, which estimates the spread from the
samples, counts both and needs many samples to drop a class whose advantage is plain at every
timestep. A profile states the noise part per band of timesteps, fitted on a model's training
images (`fastgen.eval.noise_fit`), so a test can use it as a known variance.

The file (`noise_profile.json` beside a model's `fastgen.json`):

    {"format": "fastgen-noise-profile-1", "band_sd": [...], "num_train_timesteps": 1000,
     "fitted_for": {"loss": "l2", "timesteps": "even", "weighting": 0.0, "timestep_weights": null,
                    "error_weights": null},
     "fit": {...how it was fitted...}}

`band_sd[j]` is the noise sd of one paired difference at a timestep in band j of len(band_sd)
equal bands of [0, T), at the quantile of the pairs' noise the profile was fitted to cover. The
fit also records the typical noise per band (`fit.typical_sd`) and how the pairs' own noise
scales, relative to it, are spread (`fit.pair_scales`: quantiles at (i + 0.5) / m); from these
`average_level` finds the level at which a boundary on the typical noise errs, averaged over
pairs spread like the fitted ones, no more often than asked. A profile holds only for the
scoring settings it was fitted for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, special

from fastgen.engine.sampling import timestep_sequence

FORMAT = "fastgen-noise-profile-1"
FITTED_FOR = ("loss", "timesteps", "weighting", "timestep_weights", "error_weights")
BAND_SETTINGS = ("timestep_weights", "error_weights")  # tuples in memory, lists in the file


@dataclass(frozen=True)
class NoiseProfile:
    band_sd: tuple[float, ...]
    num_train_timesteps: int
    fitted_for: dict[str, Any]
    fit: dict[str, Any]

    def __post_init__(self):
        sd = np.asarray(self.band_sd, dtype=np.float64)
        if sd.ndim != 1 or sd.size == 0 or not np.all(np.isfinite(sd)) or not np.all(sd > 0):
            raise ValueError(f"band_sd must be a non-empty list of finite numbers > 0, got {self.band_sd!r}")
        # Profiles from before `error_weights` existed were fitted without them.
        object.__setattr__(self, "fitted_for", {"error_weights": None, **self.fitted_for})
        if self.fitted_for.get("timesteps") != "even":
            raise ValueError("a noise profile needs timesteps='even' (sample s must have the same timestep every run)")
        missing = [k for k in FITTED_FOR if k not in self.fitted_for]
        if missing:
            raise ValueError(f"a noise profile's fitted_for must name {', '.join(missing)}")

    @classmethod
    def load(cls, path: str | Path) -> NoiseProfile:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a noise profile (format {data.get('format')!r}, expected {FORMAT!r})")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseProfile:
        fitted_for = dict(data["fitted_for"])
        for name in BAND_SETTINGS:
            if fitted_for.get(name) is not None:
                fitted_for[name] = tuple(float(w) for w in fitted_for[name])
        fitted_for["weighting"] = float(fitted_for.get("weighting", 0.0))
        return cls(
            band_sd=tuple(float(s) for s in data["band_sd"]),
            num_train_timesteps=int(data["num_train_timesteps"]),
            fitted_for=fitted_for,
            fit=dict(data.get("fit") or {}),
        )

    def as_dict(self) -> dict[str, Any]:
        fitted_for = dict(self.fitted_for)
        for name in BAND_SETTINGS:
            if fitted_for.get(name) is not None:
                fitted_for[name] = list(fitted_for[name])
        return {
            "format": FORMAT,
            "band_sd": list(self.band_sd),
            "num_train_timesteps": self.num_train_timesteps,
            "fitted_for": fitted_for,
            "fit": self.fit,
        }

    def mismatches(self, settings: dict[str, Any]) -> list[str]:
        """The scoring settings that differ from the ones the profile was fitted for, as
        'name=run value (fitted for profile value)'."""
        out = []
        for name in FITTED_FOR:
            run, fitted = settings.get(name), self.fitted_for.get(name)
            if isinstance(run, list):
                run = tuple(run)
            if run != fitted:
                out.append(f"{name}={run!r} (fitted for {fitted!r})")
        return out

    def refuse_mismatches(self, settings: dict[str, Any], path: str) -> None:
        """Raise a ValueError naming the scoring settings the profile (file `path`) was not fitted
        for: its variances would not be those of the errors such a run computes."""
        mismatches = self.mismatches(settings)
        if mismatches:
            raise ValueError(
                f"the noise profile {path} does not hold for this run's scoring settings: {'; '.join(mismatches)}. "
                "Give another boundary (bound='mixture', --bound mixture) or fit a profile for these settings"
            )

    def sample_sd(self, n: int, typical: bool = False) -> np.ndarray:
        """The noise sd of the paired difference of samples 0..n-1, from their timesteps (at the
        profile's quantile, or for the typical pair)."""
        t = timestep_sequence(
            n, self.num_train_timesteps, mode="even", band_weights=self.fitted_for.get("timestep_weights")
        ).numpy()
        bands = np.minimum(t * len(self.band_sd) // self.num_train_timesteps, len(self.band_sd) - 1)
        return self.bands_sd(typical)[bands]

    def bands_sd(self, typical: bool = False) -> np.ndarray:
        """The noise sd per band: `band_sd`, or the typical noise it was scaled up from."""
        if not typical:
            return np.asarray(self.band_sd, dtype=np.float64)
        recorded = self.fit.get("typical_sd")
        if recorded is None:
            return np.asarray(self.band_sd, dtype=np.float64) / float(self.fit.get("scale", 1.0))
        return np.maximum(np.asarray(recorded, dtype=np.float64), 1e-12)

    def summed_variance(self, n: int, typical: bool = False) -> float:
        """The variance of the sum of n paired differences (samples 0..n-1), at the profile's
        quantile or (`typical`) for the typical pair. Asked at every look of every image, so the
        per-sample variances are computed once, for twice the largest n asked so far."""
        key = "_cumulative_typical" if typical else "_cumulative"
        cached = self.__dict__.get(key)
        if cached is None or len(cached) <= n:
            sd = self.sample_sd(max(2 * n, 64), typical=typical)
            cached = np.concatenate([[0.0], np.cumsum(sd**2)])
            object.__setattr__(self, key, cached)
        return float(cached[n])

    def mean_variance(self, typical: bool = False) -> float:
        """The variance of one sample, averaged over the bands (the scale of the boundary's mixture)."""
        return float(np.mean(np.square(self.bands_sd(typical))))

    def pair_scales(self) -> np.ndarray:
        """Quantiles of the pairs' noise scale relative to the typical noise (empty when the
        profile was fitted before they were recorded)."""
        return np.asarray(self.fit.get("pair_scales") or [], dtype=np.float64)

    def average_level(self, alpha: float, tightest_at: float, max_samples: int) -> float:
        """The level alpha' for a one-sided normal-mixture boundary on the typical noise
        (`mixture_sum_boundary(summed_variance(n, typical=True), alpha', rho)`, rho = `tightest_at`
        typical samples) whose chance of ever being crossed by the noise alone, averaged over
        pairs whose noise is the typical one times a scale s spread as `pair_scales`, is at most
        `alpha` over looks at 2..`max_samples` samples.

        For a pair of scale s the crossing chance is bounded by Ville's inequality applied to the
        one-sided normal mixture martingale of that pair's own variance (mixture scale s^2 rho):
        at a crossing after n samples it is at least 2 Phi(sqrt(2 L_n) / s) (r_n / (2 alpha') +
        1)^(1 / s^2) / r_n, with r_n = sqrt((V_n + rho) / rho) and L_n the boundary's log term, so
        the chance is at most the inverse of its smallest value over n (about alpha' for s = 1,
        more for noisier pairs, less for quieter ones)."""
        scales = self.pair_scales()
        if scales.size == 0:
            raise ValueError(
                "this noise profile records no spread of the pairs' noise (fit.pair_scales): fit it again "
                "(python -m training.fit_noise_profile, fastgen.eval.noise_fit) to use coverage='average'"
            )
        key = (alpha, tightest_at, max_samples)
        cache = self.__dict__.setdefault("_average_levels", {})
        if key not in cache:
            variance = np.array([self.summed_variance(n, typical=True) for n in range(2, max_samples + 1)])
            r = np.sqrt(
                (variance + tightest_at * self.mean_variance(typical=True))
                / (tightest_at * self.mean_variance(typical=True))
            )

            def average_error(log_level: float) -> float:
                log_term = np.log(r / (2.0 * math.exp(log_level)) + 1.0)
                per_scale = [
                    np.max(r * np.exp(-log_term / s**2) / (2.0 * special.ndtr(np.sqrt(2.0 * log_term) / s)))
                    for s in scales
                ]
                return float(np.mean(np.minimum(per_scale, 1.0)))

            low, high = math.log(alpha) - 60.0, math.log(alpha)
            if average_error(high) <= alpha:
                cache[key] = alpha
            else:
                cache[key] = math.exp(optimize.brentq(lambda x: average_error(x) - alpha, low, high, xtol=1e-6))
        return cache[key]
