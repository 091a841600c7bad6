"""A content hash of a loaded model's denoiser: what a fitted noise profile (or anything else
fitted on one model) names as the model it holds for.

The hash covers every parameter and buffer of the denoiser module (name, dtype, shape, bytes, as
loaded), the config of the diffusers model inside it, and the noise schedule (DDPM's
alphas_cumprod and prediction type, or the flow schedule's length and shift). Two loads of the
same checkpoint at the same dtype give the same hash, wherever the folder lives; the same
checkpoint at another dtype gives another (its weights are other numbers), which is why a
profile's `dtype` is compared first.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def _update_with_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
    if flat.numel():
        digest.update(flat.view(torch.uint8).numpy())


def _configs(module: torch.nn.Module) -> list[dict[str, Any]]:
    """The diffusers/transformers configs of the models inside the denoiser wrapper."""
    out = []
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if isinstance(config, dict):
            out.append({k: v for k, v in config.items() if not str(k).startswith("_")})
    return out


def denoiser_digest(adapter: Any) -> str:
    """'sha256:<hex>' of the adapter's denoiser and schedule; computed once per adapter."""
    cached = getattr(adapter, "_denoiser_digest", None)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name, tensor in sorted(adapter.denoiser.state_dict().items()):
        _update_with_tensor(digest, name, tensor)
    digest.update(json.dumps(_configs(adapter.denoiser), sort_keys=True, default=str).encode())
    schedule = adapter.schedule
    for name, value in sorted(vars(schedule).items()):
        if isinstance(value, torch.Tensor):
            _update_with_tensor(digest, f"schedule.{name}", value)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            digest.update(f"schedule.{name}={value!r}|".encode())
    digest.update(f"T={adapter.num_train_timesteps}|".encode())
    value = "sha256:" + digest.hexdigest()
    adapter._denoiser_digest = value
    return value
