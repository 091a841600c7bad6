"""What the flow-matching text-to-image adapters (SD3 / SD3.5, Flux) share.

A class's condition is the pair (joint-attention sequence [L, D], pooled vector [D_pooled])
that the model's own diffusers pipeline computes; it is packed into one row `[L * D + D_pooled]`
so that the engine, the export and every backend carry one condition tensor per row, as for the
other families, and the denoiser splits it again. x0 is the VAE latent shifted and scaled as
SD3 and Flux encode (`(mean - shift_factor) * scaling_factor`), or the pixels without a VAE.
"""

from __future__ import annotations

from typing import Any

import torch

from fastgen.models.base import Adapter, ModelDenoiser
from fastgen.models.loading import ModelLoadError, load_component


class PackedTextDenoiser(ModelDenoiser):
    """A flow transformer on (x_t, t, packed condition): the row is split back into the sequence
    and the pooled vector, and the timestep index t turned into the noise level
    s = (t + 1/2) / T the model is conditioned on (computed, not looked up, so it keeps full
    precision whatever dtype the module is cast to)."""

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


def pack_conditions(sequence: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """[P, L, D] and [P, D_pooled] -> one row per prompt, [P, L * D + D_pooled]."""
    return torch.cat([sequence.flatten(1), pooled], dim=1)


def check_flow_scheduler(scheduler: Any, model: str) -> None:
    if not hasattr(scheduler.config, "shift") or hasattr(scheduler, "alphas_cumprod"):
        raise ModelLoadError(
            f"model {model!r} pairs a flow-matching transformer with {type(scheduler).__name__}; "
            "expected FlowMatchEulerDiscreteScheduler (or another flow-matching scheduler with a shift)"
        )


class FlowTextAdapter(Adapter):
    """Base of the SD3 and Flux adapters: loading, x0, the packed condition's shape."""

    denoiser: PackedTextDenoiser
    vae: Any = None
    # Settings of `conditioning` this family takes; the caller's and fastgen.json's merged.
    SETTINGS: tuple[str, ...] = ()

    def _take_conditioning(self, conditioning: dict[str, Any] | None) -> None:
        self.conditioning = dict(conditioning or {})
        unknown = sorted(set(self.conditioning) - set(self.SETTINGS))
        if unknown:
            raise ValueError(
                f"conditioning settings {unknown} do not apply to {self.kind.upper()} models "
                f"(known: {', '.join(self.SETTINGS)})"
            )

    def _load_parts(self, model, index: dict, names: tuple[str, ...], load: dict) -> dict[str, Any]:
        """Tokenizers as they are, encoders and the transformer in the adapter's dtype and device."""
        parts: dict[str, Any] = {}
        for name in names:
            is_module = name.startswith(("text_encoder", "transformer", "vae"))
            part = load_component(model, index, name, dtype=self.dtype if is_module else None, **load)
            parts[name] = part.to(self.device).eval() if is_module else part
        return parts

    @property
    def text_length(self) -> int:
        """Tokens of the joint-attention sequence."""
        raise NotImplementedError

    @property
    def condition_shape(self) -> tuple[int, ...]:
        return (self.text_length * self.denoiser.text_width + self.denoiser.pooled_width,)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> x0: the pixels in [-1, 1], or the VAE posterior mean shifted and
        scaled by the VAE's `shift_factor` and `scaling_factor` (as SD3 and Flux encode)."""
        if self.vae is None:
            return pixels.to(self.device, torch.float32) * 2 - 1
        latents = self.vae.encode(pixels.to(self.device, self.dtype) * 2 - 1).latent_dist.mean.float()
        shift = float(getattr(self.vae.config, "shift_factor", None) or 0.0)
        return (latents - shift) * float(self.vae.config.scaling_factor)
