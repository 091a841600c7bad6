"""Per-row noise-prediction error: the target in the model's prediction space, the loss, the
timestep weight, and the mean over C x H x W in fp32.

`row_errors` is the plain-torch definition the engine runs off CUDA; fused kernels must match it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgen.choices import LOSSES

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


def target_coefficients(
    prediction_type: str, alphas_cumprod_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
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
        raise ValueError(
            f"prediction type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )
    return a.float(), b.float()


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "l2":
        return (prediction - target) ** 2
    if loss == "l1":
        return (prediction - target).abs()
    if loss == "huber":
        return F.huber_loss(prediction, target, reduction="none", delta=1.0)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


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
