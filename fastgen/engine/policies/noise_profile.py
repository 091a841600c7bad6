"""A model's noise profile: how much the paired difference of two classes' errors varies, at each
timestep, from the noise alone; and what it was fitted for.

Every class of an image is scored on the same (timestep, noise) samples. The spread of the paired
differences d_s over samples s has two parts: the noise, and how much the expected difference
changes with the timestep. Only the first is random given the timesteps; a t-test, which
estimates the spread from the samples, counts both and needs many samples to drop a class whose
advantage is plain at every timestep. A profile states the noise part per band of timesteps,
fitted on a model's training images (`fastgen.eval.noise_fit`), so a test can use it as a known
variance.

**Fitted for, checked.** The numbers hold for one denoiser (a content hash of its weights, its
config and its scheduler's), one set of prompts (the run's must be among them), one dtype and
one set of scoring settings (loss, timesteps, weighting, timestep and error weights, aggregate,
flow settings). A run with anything else is refused (`ProfileMismatch`), naming the fields that
differ and how to get a valid run. Equal error weights of any length and none at all are the
same score.

The file (`noise_profile*.json` beside a model's `fastgen.json`):

    {"format": "fastgen-noise-profile-2", "band_sd": [...], "num_train_timesteps": 1000,
     "fitted_for": {"model": "builtin:digits", "denoiser": "sha256:...", "num_train_timesteps": 1000,
                    "dtype": "float32", "prompts": [...], "loss": "l2", "timesteps": "stratified",
                    "weighting": 0.0, "timestep_weights": null, "error_weights": [...],
                    "aggregate": "mean", "flow_timesteps": null, "flow_weighting": null},
     "fit": {...how it was fitted...}}

`band_sd[j]` is the noise sd of one paired difference at a timestep in band j of len(band_sd)
equal bands of [0, T): the fitted quantile of the pairs' noise, raised to an upper confidence
limit of the fit's own sampling error (`fit.ucl`). The fit also records the typical noise per
band (`fit.typical_sd`) and how the pairs' own noise scales are spread (`fit.pair_scales`).
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

FORMAT = "fastgen-noise-profile-2"
# Scoring settings a profile's numbers depend on (fields of ScoringConfig).
SCORING_FIELDS = (
    "loss", "timesteps", "weighting", "timestep_weights", "error_weights", "aggregate", "flow_timesteps",
    "flow_weighting",
)  # fmt: skip
# What the run itself is: the denoiser, its number of training timesteps, the dtype, the prompts.
MODEL_FIELDS = ("denoiser", "num_train_timesteps", "dtype", "prompts")
FITTED_FOR = MODEL_FIELDS + SCORING_FIELDS
BAND_SETTINGS = ("timestep_weights", "error_weights")  # tuples in memory, lists in the file
# Deterministic orders, where sample s has the same timestep in every run; only `stratified`
# pairs its samples, which the noise check reads.
PROFILE_TIMESTEPS = ("stratified",)


class ProfileMismatch(ValueError):
    """A noise profile used for a run it was not fitted for."""


def same_band_weights(a: Any, b: Any) -> bool:
    """Whether two band-weight settings give the same weight to every timestep: None is every
    weight 1, and (1.0,) the same; (2, 2) doubles every error and is not."""

    def per_fine_band(weights: Any, n: int) -> np.ndarray:
        if weights is None:
            return np.ones(n)
        values = np.asarray(weights, dtype=np.float64)
        return np.repeat(values, n // len(values))

    if a is None and b is None:
        return True
    n = math.lcm(len(a) if a is not None else 1, len(b) if b is not None else 1)
    return bool(np.allclose(per_fine_band(a, n), per_fine_band(b, n), rtol=1e-9, atol=0.0))


def _describe(value: Any) -> str:
    if isinstance(value, str) and len(value) > 24 and value.startswith("sha256:"):
        return value[:19] + "..."
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"[{', '.join(map(repr, value[:3]))}, ... {len(value)} in all]"
    return repr(value)


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
        missing = [k for k in FITTED_FOR if k not in self.fitted_for]
        if missing:
            raise ValueError(f"a noise profile's fitted_for must name {', '.join(missing)}")
        if self.fitted_for.get("timesteps") not in PROFILE_TIMESTEPS:
            raise ValueError(
                "a noise profile needs timesteps='stratified' (sample s has the same timestep in every run, "
                f"and samples come in pairs the noise check reads), got {self.fitted_for.get('timesteps')!r}"
            )

    @classmethod
    def load(cls, path: str | Path) -> NoiseProfile:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(
                f"{path}: not a noise profile of this version (format {data.get('format')!r}, expected {FORMAT!r}); "
                "fit it again (fastgen.eval.noise_fit, python -m training.fit_noise_profile)"
            )
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseProfile:
        fitted_for = dict(data["fitted_for"])
        for name in BAND_SETTINGS:
            if fitted_for.get(name) is not None:
                fitted_for[name] = tuple(float(w) for w in fitted_for[name])
        fitted_for["weighting"] = float(fitted_for.get("weighting", 0.0))
        if fitted_for.get("prompts") is not None:
            fitted_for["prompts"] = tuple(fitted_for["prompts"])
        return cls(
            band_sd=tuple(float(s) for s in data["band_sd"]),
            num_train_timesteps=int(data["num_train_timesteps"]),
            fitted_for=fitted_for,
            fit=dict(data.get("fit") or {}),
        )

    def as_dict(self) -> dict[str, Any]:
        fitted_for = dict(self.fitted_for)
        for name in (*BAND_SETTINGS, "prompts"):
            if fitted_for.get(name) is not None:
                fitted_for[name] = list(fitted_for[name])
        return {
            "format": FORMAT,
            "band_sd": list(self.band_sd),
            "num_train_timesteps": self.num_train_timesteps,
            "fitted_for": fitted_for,
            "fit": self.fit,
        }

    # -- what it holds for ------------------------------------------------------------------
    def mismatches(self, run: dict[str, Any]) -> list[str]:
        """The fields of `run` (scoring settings, and the model facts where given) that differ
        from what the profile was fitted for, as 'name: run value (fitted for profile value)'.
        Fields absent from `run` are not compared (a config's check of its scoring settings,
        before the model and its schedule's defaults are known)."""
        out = []
        for name in FITTED_FOR:
            if name not in run:
                continue
            value, fitted = run[name], self.fitted_for.get(name)
            if name in BAND_SETTINGS:
                same = same_band_weights(value, fitted)
            elif name == "prompts":
                missing = sorted(set(value) - set(fitted or ()))
                if missing:
                    shown = ", ".join(map(repr, missing[:3])) + (
                        f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                    )
                    out.append(f"prompts: {shown} not among the {len(fitted or ())} it was fitted for")
                continue
            elif name == "weighting":
                same = float(value or 0.0) == float(fitted or 0.0)
            else:
                same = value == fitted
            if not same:
                label = f"{name} (model {run['model']!r})" if name == "denoiser" and run.get("model") else name
                fitted_label = _describe(fitted)
                if name == "denoiser" and self.fitted_for.get("model"):
                    fitted_label += f", model {self.fitted_for['model']!r}"
                out.append(f"{label}: {_describe(value)} (fitted for {fitted_label})")
        return out

    def refusal(self, run: dict[str, Any], path: str) -> str | None:
        """The message refusing this profile for `run`, or None when it holds."""
        mismatches = self.mismatches(run)
        if not mismatches:
            return None
        return f"the noise profile {path} was not fitted for this run: {'; '.join(mismatches)}"

    # -- the numbers --------------------------------------------------------------------------
    def timesteps(self, n: int) -> np.ndarray:
        """The timesteps of samples 0..n-1 under the settings it was fitted for."""
        return timestep_sequence(
            n, self.num_train_timesteps, mode=self.fitted_for["timesteps"],
            band_weights=self.fitted_for.get("timestep_weights"),
            stratum_weights=self.fitted_for.get("error_weights"),
        ).numpy()  # fmt: skip

    def sample_sd(self, n: int, typical: bool = False) -> np.ndarray:
        """The noise sd of the paired difference of samples 0..n-1, from their timesteps (at the
        profile's quantile, or for the typical pair)."""
        key = "_sample_sd_typical" if typical else "_sample_sd"
        cached = self.__dict__.get(key)
        if cached is None or len(cached) < n:
            t = self.timesteps(max(2 * n, 64))
            bands = np.minimum(t * len(self.band_sd) // self.num_train_timesteps, len(self.band_sd) - 1)
            cached = self.bands_sd(typical)[bands]
            object.__setattr__(self, key, cached)
        return cached[:n]

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
        quantile or (`typical`) for the typical pair."""
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
