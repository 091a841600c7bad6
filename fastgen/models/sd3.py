"""Stable Diffusion 3 / 3.5: `SD3Transformer2DModel` + `FlowMatchEulerDiscreteScheduler`, two CLIP
text encoders with projection and an optional T5, and a VAE (or none: pixel space).

A class's condition is SD3's pair (joint-attention sequence, pooled projection) from diffusers'
own `encode_prompt` (`fastgen.models.sd3_text`), packed into one row
(`fastgen.models.flow_text`). The scheduler's shift at this resolution is the `shifted`
timestep density (`fastgen.models.schedules`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastgen.inputs.classes import ClassSpec
from fastgen.models.base import sample_hw, vae_scale
from fastgen.models.flow_text import FlowTextAdapter, PackedTextDenoiser, check_flow_scheduler, pack_conditions
from fastgen.models.loading import ModelLoadError, load_component, present, require_components
from fastgen.models.schedules import FlowSchedule, flow_shift
from fastgen.models.sd3_text import SD3_MAX_SEQUENCE_LENGTH, encode_sd3_prompts, sd3_text_pipeline

COMPONENTS = ("transformer", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


class SD3Denoiser(PackedTextDenoiser):
    """`SD3Transformer2DModel` on (x_t, t, packed condition); SD3 takes the timestep 1000 s."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        sequence, pooled = self.unpack(cond)
        return self.transformer(
            hidden_states=x_t,
            encoder_hidden_states=sequence,
            pooled_projections=pooled,
            timestep=self.noise_level(t) * 1000.0,
            return_dict=False,
        )[0]


class SD3Adapter(FlowTextAdapter):
    kind = "sd3"
    SETTINGS = ("max_sequence_length",)

    def __init__(self, model, index, folder: Path | None, *, device, dtype, load: dict, conditioning=None):
        super().__init__(device=device, dtype=dtype)
        require_components(index, folder, COMPONENTS, "Stable Diffusion 3", str(model))
        self._take_conditioning(conditioning)
        has_t5 = present(index, "text_encoder_3")
        if has_t5 != present(index, "tokenizer_3"):
            raise ModelLoadError(
                f"model {str(model)!r} has only one of text_encoder_3/ and tokenizer_3/ (T5 needs both)"
            )
        t5 = ("text_encoder_3", "tokenizer_3") if has_t5 else ()
        vae = ("vae",) if present(index, "vae") else ()
        parts = self._load_parts(model, index, (*COMPONENTS[2:], *t5, "transformer", *vae), load)
        scheduler = load_component(model, index, "scheduler", **load)
        check_flow_scheduler(scheduler, str(model))
        self.vae, transformer = parts.pop("vae", None), parts["transformer"]
        self.text_pipeline = sd3_text_pipeline({**parts, "scheduler": scheduler})
        self.tokenizer = parts["tokenizer"]
        config = transformer.config
        height, width = sample_hw(config.sample_size)
        patch = int(config.patch_size)
        tokens = (height // patch) * (width // patch)
        self.schedule = FlowSchedule(
            int(scheduler.config.num_train_timesteps), shift=flow_shift(dict(scheduler.config), tokens)
        )
        self.prediction_type = self.schedule.prediction_type
        self.denoiser = SD3Denoiser(transformer, self.schedule.num_train_timesteps)
        self._x0_shape = (int(config.in_channels), height, width)
        if self.vae is not None:
            scale = vae_scale(self.vae)
            self.image_hw, self.image_channels = (height * scale, width * scale), int(self.vae.config.in_channels)
        else:
            self.image_hw, self.image_channels = (height, width), int(config.in_channels)

    @property
    def max_sequence_length(self) -> int:
        """T5 tokens per prompt (the caller's or the model's fastgen.json `conditioning`, else
        diffusers' default); with no T5 this many zero tokens follow the CLIP tokens, as in the
        pipeline."""
        return int(self.conditioning.get("max_sequence_length", SD3_MAX_SEQUENCE_LENGTH))

    def conditioning_settings(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length}

    @property
    def text_length(self) -> int:
        """CLIP's tokens, then T5's (or its zeros)."""
        return int(self.tokenizer.model_max_length) + self.max_sequence_length

    @torch.no_grad()
    def encode_conditions(self, classes: ClassSpec) -> torch.Tensor:
        sequence, pooled = encode_sd3_prompts(
            self.text_pipeline, classes.flat_prompts, max_sequence_length=self.max_sequence_length, device=self.device
        )
        return pack_conditions(sequence, pooled).to(self.device, self.dtype)
