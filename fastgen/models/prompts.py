"""What the text-conditioned adapters share: tokenizer + text encoder + UNet loading, and
prompt -> text embedding."""

from __future__ import annotations

import torch

from fastgen.inputs.classes import ClassSpec
from fastgen.models.base import Adapter, TextDenoiser
from fastgen.models.loading import load_component


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], *, device, dtype) -> torch.Tensor:
    """Token ids padded to the tokenizer's length -> the encoder's last hidden state [P, L, D]."""
    tokens = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    ids = tokens.input_ids.to(text_encoder.device)
    hidden = text_encoder(ids, return_dict=False)[0]
    return hidden.to(device=device, dtype=dtype)


class TextConditionedAdapter(Adapter):
    """A `UNet2DConditionModel` conditioned on CLIP-style prompt embeddings."""

    def _load_text_and_unet(self, model, index, load: dict):
        """Load tokenizer, text encoder, UNet and scheduler; returns the UNet."""
        self.tokenizer = load_component(model, index, "tokenizer", **load)
        text_encoder = load_component(model, index, "text_encoder", dtype=self.dtype, **load)
        self.text_encoder = text_encoder.to(self.device).eval()
        unet = load_component(model, index, "unet", dtype=self.dtype, **load).to(self.device).eval()
        scheduler = load_component(model, index, "scheduler", **load)
        self.set_diffusion_schedule(scheduler)
        self.denoiser = TextDenoiser(unet)
        return unet

    def encode_conditions(self, classes: ClassSpec) -> torch.Tensor:
        return encode_prompts(
            self.tokenizer, self.text_encoder, classes.flat_prompts, device=self.device, dtype=self.dtype
        )
