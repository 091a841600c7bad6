"""A Stable-Diffusion-2-base-sized model with random weights, for GPU benchmarks.

The UNet has SD 2 base's configuration (about 0.87 B parameters, about 0.8 TFLOP per row at a
4 x 64 x 64 latent), so it has the real cost. The VAE and text encoder are small stand-ins with
the right interfaces (8x downsampling to 64 x 64 latents, 1024-wide text embeddings): they run
once per image or once per classifier and do not change the denoiser's cost.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from fastgen.models.clip_vocab import write_clip_tokenizer
from fastgen.models.layout import save_model_folder


def sd2_base_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
    )


def make_sd2_base_sized(folder: str | Path, *, seed: int = 0) -> Path:
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(seed)
    write_clip_tokenizer(folder / "_tokenizer_src", model_max_length=77)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "_tokenizer_src")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=1024, num_hidden_layers=1,
        num_attention_heads=8, max_position_embeddings=77, eos_token_id=49407,
    ))  # fmt: skip
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=512,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type="epsilon")
    components = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": sd2_base_unet(),
        "scheduler": scheduler,
    }
    return save_model_folder(folder, components, pipeline_class="StableDiffusionPipeline")
