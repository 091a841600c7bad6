"""Stable Diffusion 3 / 3.5: `SD3Transformer2DModel` + `FlowMatchEulerDiscreteScheduler`, two CLIP
text encoders with projection and an optional T5, and a VAE (or none: pixel space).

x0 is `(vae.encode(x).latent_dist.mean - shift_factor) * scaling_factor` (the pixels in
[-1, 1] without a VAE). A class's condition is SD3's pair (joint-attention sequence, pooled
projection) from diffusers' own `encode_prompt`, packed into one row `[L * D + D_pooled]` so the
engine and the backends pass one tensor per row as for every other model. The scheduler's shift
at this resolution is the `shifted` timestep density (`fastgen.models.schedules`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastgen.inputs.classes import ClassSpec
from fastgen.models.base import Adapter, ModelDenoiser, sample_hw
from fastgen.models.loading import ModelLoadError, load_component, present, require_components
from fastgen.models.schedules import FlowSchedule, flow_shift
from fastgen.models.sd3_text import SD3_MAX_SEQUENCE_LENGTH, encode_sd3_prompts, sd3_text_pipeline

COMPONENTS = ("transformer", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


class PackedTextDenoiser(ModelDenoiser):
    """What the flow transformers share: a packed condition row `[L * D + D_pooled]` split back
    into the sequence [L, D] and the pooled vector, and the timestep index t turned into the
    noise level s = (t + 1/2) / T the model is conditioned on (computed, not looked up, so it
    keeps full precision whatever dtype the module is cast to)."""

    def __init__(self, transformer: torch.nn.Module, num_train_timesteps: int):
        super().__init__()
        self.transformer = transformer
        self.num_train_timesteps = int(num_train_timesteps)
        self.text_width = int(transformer.config.joint_attention_dim)
        self.pooled_width = int(transformer.config.pooled_projection_dim)

    def unpack(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sequence = cond[:, : -self.pooled_width].reshape(cond.shape[0], -1, self.text_width)
        return sequence, cond[:, -self.pooled_width :]

    def noise_level(self, t: torch.Tensor) -> torch.Tensor:
        return (t.to(torch.float32) + 0.5) / self.num_train_timesteps


class SD3Denoiser(PackedTextDenoiser):
    """`SD3Transformer2DModel` on (x_t, t, packed condition); SD3 takes the timestep 1000 s."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        sequence, pooled = self.unpack(cond)
        timestep = self.noise_level(t) * 1000.0
        return self.transformer(
            hidden_states=x_t,
            encoder_hidden_states=sequence,
            pooled_projections=pooled,
            timestep=timestep,
            return_dict=False,
        )[0]


def pack_conditions(sequence: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """[P, L, D] and [P, D_pooled] -> one row per prompt, [P, L * D + D_pooled]."""
    return torch.cat([sequence.flatten(1), pooled], dim=1)


def load_vae(model, index: dict, load: dict, dtype: torch.dtype, device) -> Any:
    return load_component(model, index, "vae", dtype=dtype, **load).to(device).eval() if present(index, "vae") else None


def check_flow_scheduler(scheduler: Any, model: str) -> None:
    if not hasattr(scheduler.config, "shift") or hasattr(scheduler, "alphas_cumprod"):
        raise ModelLoadError(
            f"model {model!r} pairs a flow-matching transformer with {type(scheduler).__name__}; "
            "expected FlowMatchEulerDiscreteScheduler (or another flow-matching scheduler with a shift)"
        )


class SD3Adapter(Adapter):
    kind = "sd3"

    def __init__(self, model, index, folder: Path | None, *, device, dtype, load: dict, conditioning=None):
        super().__init__(device=device, dtype=dtype)
        require_components(index, folder, COMPONENTS, "Stable Diffusion 3", str(model))
        has_t5 = present(index, "text_encoder_3")
        if has_t5 != present(index, "tokenizer_3"):
            raise ModelLoadError(
                f"model {str(model)!r} has only one of text_encoder_3/ and tokenizer_3/ (T5 needs both)"
            )
        parts: dict[str, Any] = {}
        for name in COMPONENTS[2:] + (("text_encoder_3", "tokenizer_3") if has_t5 else ()):
            is_encoder = name.startswith("text_encoder")
            part = load_component(model, index, name, dtype=dtype if is_encoder else None, **load)
            parts[name] = part.to(self.device).eval() if is_encoder else part
        transformer = load_component(model, index, "transformer", dtype=dtype, **load).to(self.device).eval()
        scheduler = load_component(model, index, "scheduler", **load)
        check_flow_scheduler(scheduler, str(model))
        self.vae = load_vae(model, index, load, dtype, self.device)
        self.text_pipeline = sd3_text_pipeline({**parts, "transformer": transformer, "scheduler": scheduler})
        self.tokenizer = parts["tokenizer"]
        self.conditioning = dict(conditioning or {})
        unknown = set(self.conditioning) - {"max_sequence_length"}
        if unknown:
            raise ValueError(
                f"conditioning settings {sorted(unknown)} do not apply to SD3 models (known: max_sequence_length)"
            )
        config = transformer.config
        height, width = sample_hw(config.sample_size)
        patch = int(config.patch_size)
        self.schedule = FlowSchedule(
            int(scheduler.config.num_train_timesteps),
            shift=flow_shift(dict(scheduler.config), (height // patch) * (width // patch)),
        )
        self.prediction_type = self.schedule.prediction_type
        self.denoiser = SD3Denoiser(transformer, self.schedule.num_train_timesteps)
        self._x0_shape = (int(config.in_channels), height, width)
        if self.vae is not None:
            scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
            self.image_hw = (height * scale, width * scale)
            self.image_channels = int(self.vae.config.in_channels)
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
        """Tokens of the joint-attention sequence: CLIP's, then T5's (or its zeros)."""
        return int(self.tokenizer.model_max_length) + self.max_sequence_length

    @property
    def condition_shape(self) -> tuple[int, ...]:
        return (self.text_length * self.denoiser.text_width + self.denoiser.pooled_width,)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_flow_latents(self.vae, pixels, device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def encode_conditions(self, classes: ClassSpec) -> torch.Tensor:
        sequence, pooled = encode_sd3_prompts(
            self.text_pipeline, classes.flat_prompts, max_sequence_length=self.max_sequence_length, device=self.device
        )
        return pack_conditions(sequence, pooled).to(self.device, self.dtype)


def encode_flow_latents(vae, pixels: torch.Tensor, *, device, dtype) -> torch.Tensor:
    """Pixels in [0, 1] -> x0: the pixels in [-1, 1], or the VAE posterior mean shifted and
    scaled by the VAE's `shift_factor` and `scaling_factor` (as SD3 and Flux encode)."""
    if vae is None:
        return pixels.to(device, torch.float32) * 2 - 1
    latents = vae.encode(pixels.to(device, dtype) * 2 - 1).latent_dist.mean.float()
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    return (latents - shift) * float(vae.config.scaling_factor)
