"""Latent text-to-image models in the Stable Diffusion layout (SD 1.x / 2.x, epsilon or v).

x0 is the VAE posterior mean times the scaling factor; a class's condition is the CLIP text
embedding of its prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastgen.models.base import sample_hw, vae_scale
from fastgen.models.loading import load_component, require_components
from fastgen.models.prompts import TextConditionedAdapter

COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")


class LatentTextAdapter(TextConditionedAdapter):
    kind = "latent-text"

    def __init__(self, model, index, folder: Path | None, *, device, dtype, load: dict):
        super().__init__(device=device, dtype=dtype)
        require_components(index, folder, COMPONENTS, "latent text-to-image", str(model))
        self.vae = load_component(model, index, "vae", dtype=dtype, **load).to(device).eval()
        unet = self._load_text_and_unet(model, index, load)
        latent_h, latent_w = sample_hw(unet.config.sample_size)
        scale = vae_scale(self.vae)
        self.image_hw = (latent_h * scale, latent_w * scale)
        self.image_channels = int(self.vae.config.in_channels)
        self._x0_shape = (int(unet.config.in_channels), latent_h, latent_w)
        self.scaling_factor = float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, self.dtype) * 2 - 1
        latents = self.vae.encode(pixels).latent_dist.mean
        return latents.float() * self.scaling_factor
