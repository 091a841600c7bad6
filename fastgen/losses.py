"""Per-row noise-prediction error: the target in the model's prediction space, the loss, the
timestep weight, and the mean over C x H x W in fp32.

The bottom layer: it imports nothing from fastgen, and both the engine and the Triton kernels
read the loss registry from here. `row_errors` is the plain-torch definition the engine runs
off CUDA; fused kernels must match it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class Loss:
    """One element-wise loss: its plain-torch definition and the Triton kernel's switch value."""

    kernel_code: int
    elementwise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _squared(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction - target) ** 2


def _absolute(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction - target).abs()


def _huber(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.huber_loss(prediction, target, reduction="none", delta=1.0)


LOSSES: dict[str, Loss] = {
    "l2": Loss(kernel_code=0, elementwise=_squared),
    "l1": Loss(kernel_code=1, elementwise=_absolute),
    "huber": Loss(kernel_code=2, elementwise=_huber),
}


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {loss!r}")
    return loss


def target_coefficients(prediction_type: str, alphas_cumprod_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with target = a * eps + b * x0, per row, in fp32.

    epsilon: eps; v_prediction: sqrt(abar) eps - sqrt(1 - abar) x0; sample: x0.
    """
    abar = alphas_cumprod_t.double()
    ones, zeros = torch.ones_like(abar), torch.zeros_like(abar)
    if prediction_type == "epsilon":
        a, b = ones, zeros
    elif prediction_type == "v_prediction":
        a, b = abar.sqrt(), -(1 - abar).sqrt()
    elif prediction_type == "sample":
        a, b = zeros, ones
    else:
        raise ValueError(f"prediction type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return a.float(), b.float()


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    return LOSSES[check_loss(loss)].elementwise(prediction, target)


def row_errors(
    prediction: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    target_a: torch.Tensor,
    target_b: torch.Tensor,
    weight: torch.Tensor,
    loss: str,
) -> torch.Tensor:
    """weight * mean_{CHW} loss(prediction, a * eps + b * x0), one fp32 value per row."""
    shape = (-1,) + (1,) * (prediction.dim() - 1)
    target = target_a.view(shape) * eps.float() + target_b.view(shape) * x0.float()
    per_element = elementwise_loss(prediction.float(), target, loss)
    return weight.float() * per_element.flatten(1).mean(dim=1)
