"""Pixel-space text-conditioned models: the SD layout without `vae/`.

x0 is the image itself scaled to [-1, 1]; a class's condition is the text embedding of its prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastgen.classes import ClassSpec
from fastgen.models.base import Adapter, TextDenoiser, scheduler_facts
from fastgen.models.latent_text import _side
from fastgen.models.loading import load_component, require_components
from fastgen.models.prompts import encode_prompts

COMPONENTS = ("text_encoder", "tokenizer", "unet", "scheduler")


class PixelTextAdapter(Adapter):
    kind = "pixel-text"

    def __init__(self, model, index, folder: Path | None, *, device, dtype, load: dict):
        super().__init__(device=device, dtype=dtype)
        require_components(index, folder, COMPONENTS, "pixel-space text-conditioned", str(model))
        self.tokenizer = load_component(model, index, "tokenizer", **load)
        self.text_encoder = load_component(model, index, "text_encoder", dtype=dtype, **load)
        self.text_encoder = self.text_encoder.to(device).eval()
        unet = load_component(model, index, "unet", dtype=dtype, **load).to(device).eval()
        scheduler = load_component(model, index, "scheduler", **load)
        self.alphas_cumprod, self.prediction_type = scheduler_facts(scheduler)
        self.denoiser = TextDenoiser(unet)
        self.image_size = _side(unet.config.sample_size)
        self.image_channels = int(unet.config.in_channels)
        self._x0_shape = (self.image_channels, self.image_size, self.image_size)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(self.device, torch.float32) * 2 - 1

    def encode_conditions(self, classes: ClassSpec) -> torch.Tensor:
        return encode_prompts(
            self.tokenizer, self.text_encoder, classes.flat_prompts, device=self.device, dtype=self.dtype
        )
