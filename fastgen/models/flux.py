"""Flux: `FluxTransformer2DModel` on 2x2-packed latents with image position ids, conditioned on the
CLIP pooled projection and T5's sequence; guidance-distilled checkpoints (`guidance_embeds`)
also take the guidance scale as an input.

The engine keeps x0 and the noise in the VAE's latent layout [C, h, w]; the denoiser packs each
noised latent into (h/2)(w/2) tokens of 4C values just before the transformer and unpacks its
output, so packing is a reshape inside the model call and every engine step (shared noise,
kernels, backends) is the same as for any other model. Flux has no fixed resolution: fastgen
scores at `resolution` (pixels, from `conditioning` or the model's fastgen.json; default
1024 x 1024, the pipeline's default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastgen.inputs.classes import ClassSpec
from fastgen.models.base import vae_scale
from fastgen.models.flow_text import FlowTextAdapter, PackedTextDenoiser, check_flow_scheduler, pack_conditions
from fastgen.models.loading import ModelLoadError, load_component, require_components
from fastgen.models.schedules import FlowSchedule, flow_shift

COMPONENTS = ("transformer", "scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
FLUX_MAX_SEQUENCE_LENGTH = 512  # diffusers' default for Flux pipelines
FLUX_RESOLUTION = (1024, 1024)
FLUX_GUIDANCE = 3.5  # the Flux pipeline's default guidance_scale, for guidance-distilled models


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C], the token layout of diffusers' Flux pipeline."""
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack_latents` for latents of height x width."""
    b, _, packed = tokens.shape
    c = packed // 4
    patches = tokens.reshape(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, c, height, width)


def latent_image_ids(height: int, width: int) -> torch.Tensor:
    """[(h/2)(w/2), 3] position ids (0, row, column) of the packed tokens."""
    rows = torch.arange(height // 2, dtype=torch.float32)[:, None].expand(height // 2, width // 2)
    cols = torch.arange(width // 2, dtype=torch.float32)[None, :].expand(height // 2, width // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)


class FluxDenoiser(PackedTextDenoiser):
    """`FluxTransformer2DModel` on (x_t [B, C, h, w], t, packed condition); Flux takes the noise
    level s itself (it multiplies by 1000 inside), and the guidance scale when distilled."""

    def __init__(self, transformer, num_train_timesteps: int, latent_hw: tuple[int, int], guidance: float | None):
        super().__init__(transformer, num_train_timesteps)
        self.latent_hw = latent_hw
        self.guidance = guidance
        self.register_buffer("img_ids", latent_image_ids(*latent_hw), persistent=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        sequence, pooled = self.unpack(cond)
        s = self.noise_level(t)
        guidance = None if self.guidance is None else torch.full_like(s, self.guidance)
        text_ids = torch.zeros(sequence.shape[1], 3, dtype=self.img_ids.dtype, device=x_t.device)
        out = self.transformer(
            hidden_states=pack_latents(x_t),
            timestep=s,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=sequence,
            txt_ids=text_ids,
            img_ids=self.img_ids,
            return_dict=False,
        )[0]
        return unpack_latents(out, *self.latent_hw)


def flux_text_pipeline(parts: dict[str, Any]):
    """A `FluxPipeline` around the text components, to call its own `encode_prompt`."""
    from diffusers import FluxPipeline

    return FluxPipeline(vae=None, **parts)


class FluxAdapter(FlowTextAdapter):
    kind = "flux"
    SETTINGS = ("max_sequence_length", "resolution", "guidance")

    def __init__(self, model, index, folder: Path | None, *, device, dtype, load: dict, conditioning=None):
        super().__init__(device=device, dtype=dtype)
        self.name = str(model)
        require_components(index, folder, COMPONENTS, "Flux", str(model))
        self._take_conditioning(conditioning)
        parts = self._load_parts(model, index, tuple(n for n in COMPONENTS if n != "scheduler"), load)
        scheduler = load_component(model, index, "scheduler", **load)
        check_flow_scheduler(scheduler, str(model))
        self.vae, transformer = parts.pop("vae"), parts["transformer"]
        self.text_pipeline = flux_text_pipeline({**parts, "scheduler": scheduler})
        self.tokenizer = parts["tokenizer_2"]  # T5's: its length is the condition's
        latent_hw = self._latent_hw()
        self.guidance = self._guidance(bool(transformer.config.guidance_embeds))
        self.max_sequence_length = int(self.conditioning.get("max_sequence_length", FLUX_MAX_SEQUENCE_LENGTH))
        tokens = (latent_hw[0] // 2) * (latent_hw[1] // 2)
        self.schedule = FlowSchedule(
            int(scheduler.config.num_train_timesteps), shift=flow_shift(dict(scheduler.config), tokens)
        )
        self.prediction_type = self.schedule.prediction_type
        self.denoiser = FluxDenoiser(transformer, self.schedule.num_train_timesteps, latent_hw, self.guidance)
        self._x0_shape = (int(self.vae.config.latent_channels), *latent_hw)
        check_flux_latents(self)

    def _latent_hw(self) -> tuple[int, int]:
        """The latent size of the scoring resolution (`resolution`, default 1024 x 1024)."""
        scale = vae_scale(self.vae)
        height, width = (int(v) for v in self.conditioning.get("resolution", FLUX_RESOLUTION))
        if height % (2 * scale) or width % (2 * scale):
            raise ValueError(
                f"Flux resolution {height}x{width} must be a multiple of {2 * scale} on both sides "
                "(the VAE's scale times the 2x2 packing)"
            )
        self.image_hw, self.image_channels = (height, width), int(self.vae.config.in_channels)
        return height // scale, width // scale

    def _guidance(self, distilled: bool) -> float | None:
        """The guidance input of a guidance-distilled checkpoint (default: the pipeline's 3.5);
        asking it of another is refused."""
        guidance = self.conditioning.get("guidance")
        if guidance is not None and not distilled:
            raise ValueError(
                f"guidance={guidance} was asked of {self.name!r}, whose transformer has no guidance input "
                "(guidance_embeds is false: not a guidance-distilled checkpoint); leave guidance unset"
            )
        if distilled:
            return float(FLUX_GUIDANCE if guidance is None else guidance)
        return None

    def conditioning_settings(self) -> dict[str, Any]:
        return {
            "max_sequence_length": self.max_sequence_length,
            "resolution": list(self.image_hw),
            "guidance": self.guidance,
        }

    @property
    def text_length(self) -> int:
        return self.max_sequence_length  # T5's tokens are Flux's whole text sequence

    @torch.no_grad()
    def encode_conditions(self, classes: ClassSpec) -> torch.Tensor:
        sequence, pooled, _ = self.text_pipeline.encode_prompt(
            prompt=classes.flat_prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return pack_conditions(sequence, pooled).to(self.device, self.dtype)


def check_flux_latents(adapter: FluxAdapter) -> None:
    if adapter.x0_shape[0] * 4 != int(adapter.denoiser.transformer.config.in_channels):
        raise ModelLoadError(
            f"Flux transformer of {adapter.name!r} takes {adapter.denoiser.transformer.config.in_channels} "
            f"channels, but the VAE's {adapter.x0_shape[0]} latent channels pack into {adapter.x0_shape[0] * 4}"
        )
