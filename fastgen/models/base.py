"""What the engine needs from a model: images -> x0, classes -> conditions, and a denoiser.

The engine never looks inside an adapter. A denoiser is an `nn.Module` with
`forward(x_t [B,C,H,W], t [B] int64, cond [B,...]) -> prediction [B,C,H,W]`; backends wrap or
export exactly this module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from fastgen.inputs.classes import ClassSpec
from fastgen.models.schedules import DiffusionSchedule, FlowSchedule


class Adapter(ABC):
    """A loaded model family member, seen through the few operations classification needs."""

    kind: str  # "latent-text", "pixel-text", "class-conditional", "sd3", "flux"
    denoiser: nn.Module
    # What a timestep index means: DiffusionSchedule (alphas_cumprod + prediction type) or
    # FlowSchedule (fastgen.models.schedules). Diffusion adapters also expose its two fields.
    schedule: DiffusionSchedule | FlowSchedule
    prediction_type: str
    image_hw: tuple[int, int]  # pixels fed to encode_images are [C, H, W] = [C, *image_hw]
    image_channels: int
    name: str = ""
    defaults: dict[str, Any] = {}

    def __init__(self, *, device: torch.device, dtype: torch.dtype):
        self.device = torch.device(device)
        self.dtype = dtype

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] pixels in [0, 1] -> x0 [B, c, h, w] in fp32 on the device."""

    @abstractmethod
    def encode_conditions(self, classes: ClassSpec) -> torch.Tensor:
        """One condition per entry of `classes.flat_prompts`, stacked on the device."""

    @property
    def image_size(self) -> int | tuple[int, int]:
        """The model's input resolution: one side length for square models (as before non-square
        models existed), (H, W) otherwise; `load_pixels(size=...)` takes either. Prefer
        `image_hw`, which is always (H, W)."""
        height, width = self.image_hw
        return height if height == width else (height, width)

    @property
    def x0_shape(self) -> tuple[int, ...]:
        """Shape of one image's x0, known without encoding anything."""
        return self._x0_shape

    @property
    def num_train_timesteps(self) -> int:
        return int(self.schedule.num_train_timesteps)

    def conditioning_settings(self) -> dict[str, Any]:
        """The model settings a score depends on besides the weights (flow transformers: their
        sequence length, resolution, guidance), as used; empty for other families."""
        return {}

    def set_diffusion_schedule(self, scheduler: Any) -> None:
        """Read a DDPM-style scheduler: `alphas_cumprod`, `prediction_type` and `schedule`."""
        self.alphas_cumprod, self.prediction_type = scheduler_facts(scheduler)
        self.schedule = DiffusionSchedule(self.alphas_cumprod, self.prediction_type)


def sample_hw(sample_size: Any) -> tuple[int, int]:
    """A model config's `sample_size` (an int for square models, or [H, W]) as (H, W)."""
    if isinstance(sample_size, (list, tuple)):
        if len(sample_size) != 2:
            raise ValueError(f"sample_size must be an int or (H, W), got {sample_size!r}")
        return int(sample_size[0]), int(sample_size[1])
    return int(sample_size), int(sample_size)


def vae_scale(vae: Any) -> int:
    """Pixels per latent cell along each side: the VAE halves the size once per block after the first."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def sample_side(sample_size: Any) -> int:
    """A square model config's `sample_size` as one side length (see `sample_hw` for any shape)."""
    height, width = sample_hw(sample_size)
    if height != width:
        raise ValueError(f"sample_size {sample_size!r} is not square; use sample_hw")
    return height


def scheduler_facts(scheduler: Any) -> tuple[torch.Tensor, str]:
    """alphas_cumprod and prediction type from a diffusers scheduler, with a clear refusal for
    schedulers that have no discrete DDPM noise schedule (flow matching)."""
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        raise ValueError(
            f"scheduler {type(scheduler).__name__} has no alphas_cumprod; with a UNet fastgen supports "
            "DDPM-style (epsilon / v_prediction / sample) schedulers, and flow matching with the SD3 and "
            "Flux transformers"
        )
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    return torch.as_tensor(alphas, dtype=torch.float64).cpu(), prediction_type


class ModelDenoiser(nn.Module):
    """A model's own denoiser module; declares the engine's `Denoiser` flags (plain defaults)."""

    shares_prefix: bool = False
    wants_fixed_batch: bool = False
    max_batch: int | None = None


class TextDenoiser(ModelDenoiser):
    """UNet2DConditionModel conditioned on prompt embeddings.

    With `rows`, x_t and t hold each distinct noised input once and output row r is the UNet on
    (x_t[rows[r]], t[rows[r]], cond[r]); the class-independent prefix then runs once per distinct
    input (`fastgen.models.unet_prefix`). `shares_prefix` says whether this model has one.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        from fastgen.models.unet_prefix import UNetSplit, split_block_index

        # A plain attribute, not a submodule: it only holds the UNet already registered above.
        self.__dict__["split"] = UNetSplit(unet) if split_block_index(unet) is not None else None

    @property
    def shares_prefix(self) -> bool:
        return self.split is not None

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        if rows is not None:
            if self.split is not None:
                return self.split(x_t, t, cond, rows)
            x_t, t = x_t[rows], t[rows]
        return self.unet(x_t, t, encoder_hidden_states=cond, return_dict=False)[0]


class LabelUNetDenoiser(ModelDenoiser):
    """UNet2DModel conditioned on class labels."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, class_labels=cond, return_dict=False)[0]


class DiTDenoiser(ModelDenoiser):
    """DiTTransformer2DModel; drops the learned-variance half of the output when present."""

    def __init__(self, transformer: nn.Module, latent_channels: int):
        super().__init__()
        self.transformer = transformer
        self.latent_channels = latent_channels

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.transformer(x_t, timestep=t, class_labels=cond, return_dict=False)[0]
        return out[:, : self.latent_channels]
