"""What a sample's timestep index means for a model family: how x0 and the noise are mixed,
what the denoiser's target is, and how a timestep is weighted and drawn.

Every model is scored on integer timestep indices t in [0, T). The engine, the kernels and the
backends only ever see t and four per-row coefficients,

    x_t = alpha_t * x0 + sigma_t * eps,    target = a_t * eps + b_t * x0,

so a new family is a new schedule, not a new engine.

* `DiffusionSchedule` (DDPM-style epsilon / v / sample models): alpha = sqrt(abar_t),
  sigma = sqrt(1 - abar_t); the target in the model's prediction space; w(t) = exp(-k t / T).
* `FlowSchedule` (rectified flow: SD3 / SD3.5, Flux): index t stands for the noise level
  s_t = (t + 1/2) / T, the midpoints of T equal bins of (0, 1); x_t = (1 - s) x0 + s eps and the
  target is the velocity v = eps - x0. Which levels are drawn (`flow_timesteps`) and how each is
  weighted (`flow_weighting`) are scoring settings; `docs/flow_matching.md` derives them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fastgen.losses import PREDICTION_TYPES, target_coefficients

# Densities of the noise level s that flow timesteps are drawn from.
FLOW_TIMESTEPS = ("uniform", "shifted", "logit-normal")
# Weights of a flow sample's velocity error.
FLOW_WEIGHTINGS = ("velocity", "epsilon", "sd3")
# Used when neither the caller nor the model's fastgen.json chooses (docs/flow_matching.md).
FLOW_DEFAULTS = {"flow_timesteps": "uniform", "flow_weighting": "velocity"}
FLOW_PREDICTION = "flow"  # the prediction type of a flow schedule: the velocity eps - x0


class DiffusionSchedule:
    """A discrete DDPM noise schedule (`alphas_cumprod`) and the model's prediction type."""

    kind = "diffusion"

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
        self.prediction_type = prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def noising(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.alphas_cumprod[t]
        return abar.sqrt(), (1 - abar).sqrt()

    def target(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return target_coefficients(self.prediction_type, self.alphas_cumprod[t])

    def check_config(self, config: Any) -> None:
        for name in ("flow_timesteps", "flow_weighting"):
            if getattr(config, name, None) is not None:
                raise ValueError(
                    f"{name}={getattr(config, name)!r} applies to flow-matching models (SD3, Flux); this "
                    f"model is a {self.prediction_type} diffusion model: use timesteps / weighting instead"
                )

    def density(self, config: Any):
        return None  # timesteps are drawn uniformly over [0, T) unless band weights say otherwise

    def weight(self, t: torch.Tensor, config: Any) -> torch.Tensor:
        """w(t) = exp(-k t / T) with k = `config.weighting` (0: uniform)."""
        return torch.exp(-float(config.weighting) * t.double() / self.num_train_timesteps)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "prediction_type": self.prediction_type, "T": self.num_train_timesteps}


class FlowSchedule:
    """Rectified flow on T noise levels; `shift` is the scheduler's own shift at this model's
    resolution (SD3: its `shift`; Flux: exp(mu) of its dynamic shift)."""

    kind = "flow"
    prediction_type = FLOW_PREDICTION

    def __init__(self, num_train_timesteps: int = 1000, *, shift: float = 1.0):
        if not (isinstance(num_train_timesteps, int) and num_train_timesteps > 0):
            raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}")
        if not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be a positive number, got {shift!r}")
        self._T = num_train_timesteps
        self.shift = float(shift)

    @property
    def num_train_timesteps(self) -> int:
        return self._T

    def sigmas(self, t: torch.Tensor) -> torch.Tensor:
        """The noise level s of each index, float64 in (0, 1)."""
        return (torch.as_tensor(t).double() + 0.5) / self._T

    def noising(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sigmas(t)
        return 1 - s, s

    def target(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ones = torch.ones_like(self.sigmas(t), dtype=torch.float32)
        return ones, -ones  # v = eps - x0

    def check_config(self, config: Any) -> None:
        if float(getattr(config, "weighting", 0.0)) != 0.0:
            raise ValueError(
                f"weighting={config.weighting} (w(t) = exp(-k t / T)) is defined for epsilon / v diffusion "
                f"models; a flow-matching model is weighted with flow_weighting, one of {FLOW_WEIGHTINGS}"
            )

    def resolved(self, config: Any, name: str) -> str:
        value = getattr(config, name, None)
        return FLOW_DEFAULTS[name] if value is None else value

    def density(self, config: Any):
        """u in [0, 1) -> s, the inverse CDF of the chosen density of noise levels (monotone, so
        a nested even sequence of u stays nested and evenly spread under that density)."""
        choice = self.resolved(config, "flow_timesteps")
        if choice == "uniform":
            return None
        if choice == "shifted":
            return lambda u: shifted(u, self.shift)
        return logit_normal_quantile

    def weight(self, t: torch.Tensor, config: Any) -> torch.Tensor:
        choice = self.resolved(config, "flow_weighting")
        s = self.sigmas(t)
        if choice == "velocity":
            return torch.ones_like(s)
        if choice == "epsilon":
            return (1 - s) ** 2  # eps_hat - eps = (1 - s)(v_hat - v)
        return logit_normal_density(s)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "prediction_type": self.prediction_type, "T": self._T, "shift": self.shift}


def shifted(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow schedulers' shift: s = shift u / (1 + (shift - 1) u)."""
    u = u.double()
    return shift * u / (1 + (shift - 1) * u)


def logit_normal_quantile(u: torch.Tensor) -> torch.Tensor:
    """s = sigmoid(Phi^-1(u)): the quantile function of SD3's training density (mean 0, std 1)."""
    u = u.double().clamp(1e-12, 1 - 1e-12)
    return torch.sigmoid(math.sqrt(2.0) * torch.erfinv(2 * u - 1))


def logit_normal_density(s: torch.Tensor) -> torch.Tensor:
    """The logit-normal density (mean 0, std 1) at s in (0, 1)."""
    s = s.double()
    logit = torch.log(s) - torch.log1p(-s)
    return torch.exp(-0.5 * logit**2) / (math.sqrt(2 * math.pi) * s * (1 - s))


def flow_shift(scheduler_config: dict[str, Any], image_seq_len: int) -> float:
    """The shift a `FlowMatchEulerDiscreteScheduler` applies at this image token count: its
    static `shift`, or with `use_dynamic_shifting` exp(mu) (exponential time shift) or mu
    (linear), mu interpolated between base_shift and max_shift over the sequence length as
    diffusers' Flux pipeline computes it."""
    if not scheduler_config.get("use_dynamic_shifting", False):
        return float(scheduler_config.get("shift", 1.0))
    base_len = scheduler_config.get("base_image_seq_len", 256)
    max_len = scheduler_config.get("max_image_seq_len", 4096)
    base_shift = scheduler_config.get("base_shift", 0.5)
    max_shift = scheduler_config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    mu = image_seq_len * slope + (base_shift - slope * base_len)
    return float(mu if scheduler_config.get("time_shift_type", "exponential") == "linear" else math.exp(mu))
