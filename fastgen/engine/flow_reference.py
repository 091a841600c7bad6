"""The plain flow-matching error of one sample, written out from the definitions.

The oracle for SD3 / Flux-style models, beside `reference.one_error` for DDPM models: the noise
level of index t is s = (t + 1/2) / T, the noised input x_t = (1 - s) x0 + s eps, the target the
velocity v = eps - x0, and the weight of the velocity error one of

    velocity: 1;    epsilon: (1 - s)^2 (the noise error, since eps_hat - eps = (1 - s)(v_hat - v));
    sd3: the logit-normal density exp(-logit(s)^2 / 2) / (sqrt(2 pi) s (1 - s)).

Nothing here is shared with the engine's schedule code; `reference_classify` uses it for every
adapter whose schedule is a flow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastgen.models.schedules import FLOW_DEFAULTS


def flow_weight(s: float, weighting: str | None) -> float:
    weighting = weighting or FLOW_DEFAULTS["flow_weighting"]  # what None means
    if weighting == "velocity":
        return 1.0
    if weighting == "epsilon":
        return (1.0 - s) ** 2
    if weighting == "sd3":
        logit = math.log(s / (1.0 - s))
        return math.exp(-0.5 * logit * logit) / (math.sqrt(2.0 * math.pi) * s * (1.0 - s))
    raise ValueError(f"unknown flow weighting {weighting!r}")


def flow_one_error(adapter, x0, condition, t: int, eps, *, loss: str, weighting: str | None) -> float:
    """w(s) * mean loss between the predicted and the true velocity, for one sample."""
    s = (t + 0.5) / adapter.num_train_timesteps
    x_t = (1.0 - s) * x0 + s * eps
    with torch.no_grad():
        prediction = adapter.denoiser(
            x_t[None].to(adapter.dtype), torch.tensor([t], device=adapter.device), condition[None]
        )[0].float()
    target = eps - x0
    if loss == "l2":
        value = ((prediction - target) ** 2).mean()
    elif loss == "l1":
        value = (prediction - target).abs().mean()
    else:
        value = F.huber_loss(prediction, target, delta=1.0)
    return flow_weight(s, weighting) * value.item()
