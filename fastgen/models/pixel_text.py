"""Pixel-space text-conditioned models: the SD layout without `vae/`.

x0 is the image itself scaled to [-1, 1]; a class's condition is the text embedding of its prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastgen.models.base import sample_hw
from fastgen.models.loading import require_components
from fastgen.models.prompts import TextConditionedAdapter

COMPONENTS = ("text_encoder", "tokenizer", "unet", "scheduler")


class PixelTextAdapter(TextConditionedAdapter):
    kind = "pixel-text"

    def __init__(self, model, index, folder: Path | None, *, device, dtype, load: dict):
        super().__init__(device=device, dtype=dtype)
        require_components(index, folder, COMPONENTS, "pixel-space text-conditioned", str(model))
        unet = self._load_text_and_unet(model, index, load)
        self.image_hw = sample_hw(unet.config.sample_size)
        self.image_channels = int(unet.config.in_channels)
        self._x0_shape = (self.image_channels, *self.image_hw)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(self.device, torch.float32) * 2 - 1
