"""The plain algorithm: one image at a time, one class at a time, one denoiser call per sample.

This is the oracle every fast path is tested against. It is written to be read, not to be
fast. It shares with the engine only the definitions of *which* sample is which (the timestep
sequence and the seeded noise), the policies' decisions, and the adapter; every error is
computed here from scratch: `one_error` for DDPM-style models, `flow_one_error` for
flow-matching ones.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fastgen.engine.config import ScoringConfig
from fastgen.engine.policies.base import call_next_round
from fastgen.engine.result import ImageResult
from fastgen.engine.sampling import NoiseBank, SamplePlan, band_error_weight
from fastgen.inputs.classes import ClassSpec
from fastgen.models.base import Adapter
from fastgen.models.schedules import FLOW_DEFAULTS


def one_error(adapter: Adapter, x0, condition, t: int, eps, *, loss: str, weighting: float) -> float:
    """w(t) * mean loss between the model's prediction and its target, for one sample."""
    abar = adapter.alphas_cumprod[t].item()
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    with torch.no_grad():
        prediction = adapter.denoiser(
            x_t[None].to(adapter.dtype),
            torch.tensor([t], device=adapter.device),
            condition[None],
        )[0].float()
    if adapter.prediction_type == "epsilon":
        target = eps
    elif adapter.prediction_type == "v_prediction":
        target = math.sqrt(abar) * eps - math.sqrt(1 - abar) * x0
    else:  # "sample"
        target = x0
    weight = math.exp(-weighting * t / adapter.num_train_timesteps)
    return weight * sample_loss(prediction, target, loss)


def sample_loss(prediction, target, loss: str) -> float:
    """The mean over C x H x W of one sample's loss."""
    if loss == "l2":
        value = ((prediction - target) ** 2).mean()
    elif loss == "l1":
        value = (prediction - target).abs().mean()
    else:
        value = F.huber_loss(prediction, target, delta=1.0)
    return value.item()


# -- flow matching (SD3, Flux) --------------------------------------------------------------------
# Index t is the noise level s = (t + 1/2) / T; x_t = (1 - s) x0 + s eps; the target is the
# velocity v = eps - x0; the velocity error is weighted by one of
#   velocity: 1;   epsilon: (1 - s)^2 (the noise error, since eps_hat - eps = (1 - s)(v_hat - v));
#   sd3: the logit-normal density exp(-logit(s)^2 / 2) / (sqrt(2 pi) s (1 - s)).
# Nothing here is shared with the engine's schedule code (fastgen.models.schedules).


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


def flow_one_error(adapter: Adapter, x0, condition, t: int, eps, *, loss: str, weighting: str | None) -> float:
    """w(s) * mean loss between the predicted and the true velocity, for one sample."""
    s = (t + 0.5) / adapter.num_train_timesteps
    x_t = (1.0 - s) * x0 + s * eps
    with torch.no_grad():
        prediction = adapter.denoiser(
            x_t[None].to(adapter.dtype), torch.tensor([t], device=adapter.device), condition[None]
        )[0].float()
    return flow_weight(s, weighting) * sample_loss(prediction, eps - x0, loss)


def class_sample_errors(errors: dict, prompts: list[int], n: int, aggregate: str) -> list[float]:
    """One class's per-sample errors: mean over its prompts, or the best prompt's row."""
    if aggregate == "mean":
        return [sum(errors[p][s] for p in prompts) / len(prompts) for s in range(n)]
    best = min(prompts, key=lambda p: (np.mean([errors[p][s] for s in range(n)]), p))
    return [errors[best][s] for s in range(n)]


def reference_classify(
    adapter: Adapter, pixels: torch.Tensor, classes: ClassSpec, config: ScoringConfig
) -> ImageResult:
    """Classify one image ([C, H, W] pixels in [0, 1]) the slow, obvious way."""
    loss = config.loss
    if adapter.schedule.kind == "flow":
        score, weighting = flow_one_error, config.flow_weighting
    else:
        score, weighting = one_error, config.weighting
    policy = config.policy.bind(classes.names)
    units = classes.with_units(policy.extra_units())
    x0 = adapter.encode_images(pixels[None])[0].float()
    conditions = adapter.encode_conditions(units)
    prompts_of = units.prompts_of_class
    plan = SamplePlan.for_config(adapter.schedule, config)
    noise = NoiseBank(tuple(x0.shape), seed=config.seed, device=adapter.device)

    def band_weight(t: int) -> float:
        return float(band_error_weight(torch.tensor([t]), config.error_weights, adapter.num_train_timesteps)[0])

    errors: dict[int, dict[int, float]] = {p: {} for p in range(len(conditions))}
    alive = policy.initial_units(len(classes))
    final: dict[int, tuple[float, int]] = {}
    evals, n_target = 0, policy.first_round()
    state = policy.start_image()
    while True:
        for k in alive:
            for p in prompts_of[k]:
                for s in range(n_target):
                    if s in errors[p]:  # scored in an earlier round: nested samples are reused
                        continue
                    t = int(plan.timesteps(s + 1)[s])
                    eps = noise.get([s])[0]
                    error = score(adapter, x0, conditions[p], t, eps, loss=loss, weighting=weighting)
                    errors[p][s] = error * band_weight(t)
                    evals += 1
        per_class = [class_sample_errors(errors, prompts_of[k], n_target, config.aggregate) for k in alive]
        kept, next_target = call_next_round(policy, torch.tensor(per_class, dtype=torch.float32), alive, state)
        for k, row in zip(alive, per_class):
            if k < len(classes) and (k not in kept or next_target is None):
                final[k] = (float(np.mean(np.array(row, dtype=np.float32), dtype=np.float64)), n_target)
        alive = kept
        if next_target is None:
            break
        n_target = next_target

    never = (math.nan, 0)
    partial = np.array([final.get(k, never)[0] for k in range(len(classes))])
    n_samples = np.array([final.get(k, never)[1] for k in range(len(classes))])
    errors_out = np.array([final[k][0] if k in alive else math.nan for k in range(len(classes))])
    decided = policy.decided([k for k in alive if k < len(classes)])
    return ImageResult(
        classes.names, errors_out, partial, n_samples, evals, decided=decided, policy_record=policy.image_record(state)
    )
