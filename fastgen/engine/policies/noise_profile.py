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
equal bands of [0, T). A profile holds only for the scoring settings it was fitted for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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

    def sample_sd(self, n: int) -> np.ndarray:
        """The noise sd of the paired difference of samples 0..n-1, from their timesteps."""
        t = timestep_sequence(
            n, self.num_train_timesteps, mode="even", band_weights=self.fitted_for.get("timestep_weights")
        ).numpy()
        bands = np.minimum(t * len(self.band_sd) // self.num_train_timesteps, len(self.band_sd) - 1)
        return np.asarray(self.band_sd, dtype=np.float64)[bands]

    def summed_variance(self, n: int) -> float:
        """The variance of the sum of n paired differences (samples 0..n-1). Asked at every look
        of every image, so the per-sample variances are computed once, for twice the largest n
        asked so far."""
        cached = self.__dict__.get("_cumulative")
        if cached is None or len(cached) <= n:
            cumulative = np.concatenate([[0.0], np.cumsum(self.sample_sd(max(2 * n, 64)) ** 2)])
            object.__setattr__(self, "_cumulative", cumulative)
            cached = cumulative
        return float(cached[n])

    def mean_variance(self) -> float:
        """The variance of one sample, averaged over the bands (the scale of the boundary's mixture)."""
        return float(np.mean(np.square(self.band_sd)))
