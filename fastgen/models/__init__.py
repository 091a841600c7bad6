"""Model adapters, one per family, chosen from the model folder's `model_index.json`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fastgen.builtin import BUILTIN_PREFIX, resolve_builtin
from fastgen.models.base import Adapter
from fastgen.models.class_conditional import ClassConditionalAdapter
from fastgen.models.flux import FluxAdapter
from fastgen.models.latent_text import LatentTextAdapter
from fastgen.models.loading import (
    ModelLoadError,
    folder_defaults,
    hub_offline,
    model_index,
    present,
    quiet_hub_libraries,
)
from fastgen.models.pixel_text import PixelTextAdapter
from fastgen.models.sd3 import SD3Adapter

__all__ = ["Adapter", "ModelLoadError", "load_adapter", "resolve_model"]


def resolve_model(model: str | Path) -> str | Path:
    """`builtin:NAME` -> the folder shipped in the package; anything else unchanged."""
    if isinstance(model, str) and model.startswith(BUILTIN_PREFIX):
        return resolve_builtin(model)
    return model


# The transformer classes each adapter serves; any other transformer is refused by name.
TRANSFORMER_ADAPTERS: dict[str, type[Adapter]] = {
    "DiTTransformer2DModel": ClassConditionalAdapter,
    "SD3Transformer2DModel": SD3Adapter,
    "FluxTransformer2DModel": FluxAdapter,
}
FLOW_ADAPTERS = (SD3Adapter, FluxAdapter)


def _adapter_class(index: dict, model: str) -> type[Adapter]:
    if present(index, "transformer"):
        transformer_class = index["transformer"][1]
        if transformer_class not in TRANSFORMER_ADAPTERS:
            raise ModelLoadError(
                f"model {model!r} has a {transformer_class}; fastgen serves the Stable Diffusion layout "
                f"(UNet), SD3 and Flux, and DiT: transformers {', '.join(TRANSFORMER_ADAPTERS)}"
            )
        return TRANSFORMER_ADAPTERS[transformer_class]
    if not present(index, "unet"):
        raise ModelLoadError(
            f"model {model!r} has neither a 'unet' nor a 'transformer' component in model_index.json; "
            "it is not a Stable Diffusion, SD3, Flux or DiT model, nor another diffusion model fastgen can use"
        )
    unet_class = index["unet"][1]
    if unet_class == "UNet2DModel":
        return ClassConditionalAdapter
    if present(index, "text_encoder") or present(index, "tokenizer"):
        return LatentTextAdapter if present(index, "vae") else PixelTextAdapter
    raise ModelLoadError(
        f"model {model!r} has a {unet_class} but no text_encoder/ tokenizer; a text-conditioned model needs both"
    )


def load_adapter(
    model: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    local_files_only: bool | None = None,
    allow_pickle: bool = False,
    conditioning: dict[str, Any] | None = None,
) -> Adapter:
    """Load `model` (hub id, local folder, or `builtin:NAME`) behind the right adapter.

    `conditioning` holds the flow transformers' model settings (SD3: `max_sequence_length`;
    Flux: also `resolution` and `guidance`), over the model's fastgen.json `conditioning`."""
    quiet_hub_libraries()
    resolved = resolve_model(model)
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    with hub_offline(local_files_only):
        index, folder = model_index(resolved, local_files_only=local_files_only)
        cls = _adapter_class(index, str(model))
        defaults = folder_defaults(folder)
        load = {"local_files_only": local_files_only, "allow_pickle": allow_pickle}
        extra = {}
        if issubclass(cls, FLOW_ADAPTERS):
            extra["conditioning"] = {**(defaults.get("conditioning") or {}), **(conditioning or {})}
        elif conditioning:
            raise ValueError(
                f"conditioning settings {sorted(conditioning)} apply to SD3 and Flux models; {str(model)!r} "
                f"is a {cls.kind} model"
            )
        adapter = cls(resolved, index, folder, device=torch.device(device), dtype=dtype, load=load, **extra)
    adapter.name = str(model)
    adapter.defaults = defaults
    return adapter
