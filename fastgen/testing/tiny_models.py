"""Builders for tiny diffusers models of every kind fastgen serves (random weights, seeded)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiTTransformer2DModel,
    UNet2DConditionModel,
    UNet2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from fastgen.models.clip_vocab import write_clip_tokenizer
from fastgen.models.layout import save_model_folder

TEXT_DIM = 32


def _scheduler(prediction_type: str) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=prediction_type)


def _text_parts(
    folder: Path, max_length: int = 12, tokenizer_from: Path | None = None
) -> tuple[CLIPTokenizer, CLIPTextModel]:
    """A CLIP tokenizer (the real vocabulary, from open-clip-torch, or a saved CLIP tokenizer
    folder `tokenizer_from`) and a 2-layer text encoder sized to its prompt length."""
    if tokenizer_from is None:
        write_clip_tokenizer(folder / "_tokenizer_src", model_max_length=max_length)
        tokenizer_from = folder / "_tokenizer_src"
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_from)
    max_length = tokenizer.model_max_length
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_length,
        eos_token_id=49407,
        bos_token_id=49406,
        pad_token_id=49407,
    )
    return tokenizer, CLIPTextModel(config).eval()


def _cond_unet(channels: int, sample_size: int | tuple[int, int]) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def make_latent_text(
    folder: str | Path, *, prediction_type: str = "epsilon", seed: int = 0, tokenizer_from: Path | None = None
) -> Path:
    """SD-layout latent text-to-image model: 16 px images, 4 x 8 x 8 latents. `tokenizer_from`
    (a saved CLIP tokenizer folder) spares the need for open-clip-torch's vocabulary."""
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer, text_encoder = _text_parts(folder, tokenizer_from=tokenizer_from)
    components = {
        "vae": _vae(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": _cond_unet(4, 8),
        "scheduler": _scheduler(prediction_type),
    }
    return save_model_folder(folder, components, pipeline_class="StableDiffusionPipeline")


def make_pixel_text(
    folder: str | Path,
    *,
    channels: int = 3,
    prediction_type: str = "epsilon",
    seed: int = 0,
    sample_size: int | tuple[int, int] = 8,
) -> Path:
    """Pixel-space text-conditioned model on 8 x 8 images, or `sample_size=(H, W)` (the SD
    layout without vae/)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer, text_encoder = _text_parts(folder)
    components = {
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": _cond_unet(channels, sample_size),
        "scheduler": _scheduler(prediction_type),
    }
    return save_model_folder(folder, components, pipeline_class="PixelTextToImage")


def make_dit(folder: str | Path, *, num_labels: int = 10, seed: int = 0) -> Path:
    """DiT with a VAE (learned sigma: 8 output channels for 4 latent channels)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=num_labels,
        norm_num_groups=8,
    )
    id2label = {str(i): f"class{i}, synonym{i}" for i in range(num_labels)}
    components = {"transformer": transformer, "vae": _vae(), "scheduler": _scheduler("epsilon")}
    return save_model_folder(folder, components, pipeline_class="DiTPipeline", extra={"id2label": id2label})


def make_label_unet(
    folder: str | Path, *, num_labels: int = 10, prediction_type: str = "epsilon", seed: int = 0
) -> Path:
    """Pixel-space UNet2DModel with a class-label embedding, 3 x 8 x 8."""
    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=num_labels,
    )
    components = {"unet": unet, "scheduler": _scheduler(prediction_type)}
    return save_model_folder(folder, components, pipeline_class="DDPMPipeline")
