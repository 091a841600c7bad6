"""Model adapters, one per family, chosen from the model folder's `model_index.json`."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fastgen.builtin import BUILTIN_PREFIX, resolve_builtin
from fastgen.models.base import Adapter
from fastgen.models.class_conditional import ClassConditionalAdapter
from fastgen.models.latent_text import LatentTextAdapter
from fastgen.models.loading import ModelLoadError, folder_defaults, hub_offline, model_index, quiet_hub_libraries
from fastgen.models.pixel_text import PixelTextAdapter

__all__ = ["Adapter", "ModelLoadError", "load_adapter", "resolve_model"]


def resolve_model(model: str | Path) -> str | Path:
    """`builtin:NAME` -> the folder shipped in the package; anything else unchanged."""
    if isinstance(model, str) and model.startswith(BUILTIN_PREFIX):
        return resolve_builtin(model)
    return model


def _adapter_class(index: dict, model: str) -> type[Adapter]:
    if "transformer" in index:
        return ClassConditionalAdapter
    if "unet" not in index:
        raise ModelLoadError(
            f"model {model!r} has neither a 'unet' nor a 'transformer' component in "
            "model_index.json; it is not a diffusion model fastgen can use"
        )
    unet_class = index["unet"][1]
    if unet_class == "UNet2DModel":
        return ClassConditionalAdapter
    if "text_encoder" in index or "tokenizer" in index:
        return LatentTextAdapter if "vae" in index else PixelTextAdapter
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
) -> Adapter:
    """Load `model` (hub id, local folder, or `builtin:NAME`) behind the right adapter."""
    quiet_hub_libraries()
    resolved = resolve_model(model)
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    with hub_offline(local_files_only):
        index, folder = model_index(resolved, local_files_only=local_files_only)
        cls = _adapter_class(index, str(model))
        load = {"local_files_only": local_files_only, "allow_pickle": allow_pickle}
        adapter = cls(resolved, index, folder, device=torch.device(device), dtype=dtype, load=load)
    adapter.name = str(model)
    adapter.defaults = folder_defaults(folder)
    return adapter
