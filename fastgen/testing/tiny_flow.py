"""Tiny random-weight flow-matching models in the SD3 and Flux folder layouts (seeded).

Both save the components diffusers' own pipelines hold, with `[null, null]` for absent optional
ones, and load back through `from_pretrained`. The CLIP tokenizers carry the real CLIP
vocabulary (open-clip-torch's file, as every tiny text model here); the T5 tokenizer is a real
`T5TokenizerFast` whose small Unigram vocabulary is trained on a fixed word list, since no hub is
reachable.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from fastgen.models.clip_vocab import write_clip_tokenizer
from fastgen.models.layout import save_model_folder

CLIP_LENGTH = 8
T5_WIDTH = 48  # at least the two CLIP widths side by side (16 + 24): SD3 pads CLIP to T5's width
_T5_WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "handwritten",
    "digit",
    "number",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "any",
    "cat",
    "dog",
    "bird",
    "fish",
    "car",
    "tree",
    "house",
    "red",
    "green",
    "blue",
    "small",
    "large",
]


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    write_clip_tokenizer(folder, model_max_length=CLIP_LENGTH)
    return CLIPTokenizer.from_pretrained(folder)


def t5_tokenizer(max_length: int = 16) -> T5TokenizerFast:
    """A real T5 fast tokenizer (Unigram, T5's special tokens, `</s>` appended) on a small vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=160, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator([" ".join(_T5_WORDS)] * 10 + list(_T5_WORDS), trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
        model_max_length=max_length,
    )  # fmt: skip


def _clip_config(hidden: int, projection: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=CLIP_LENGTH, projection_dim=projection,
        eos_token_id=49407, bos_token_id=49406, pad_token_id=49407,
    )  # fmt: skip


def t5_encoder(vocab: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab, d_model=T5_WIDTH, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return T5EncoderModel(config).eval()


def flow_vae(latent_channels: int, *, shift_factor: float, scaling_factor: float) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
        latent_channels=latent_channels, norm_num_groups=8, sample_size=16, shift_factor=shift_factor,
        scaling_factor=scaling_factor, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip


def make_sd3(
    folder: str | Path, *, seed: int = 0, with_t5: bool = True, with_vae: bool = True, shift: float = 3.0
) -> Path:
    """SD3-layout model: 16 px images -> 4 x 8 x 8 latents (or 3 x 8 x 8 pixels without the VAE),
    two CLIP encoders with projection (widths 16 and 24) and, optionally, a T5 encoder."""
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(folder / "_clip_src")
    channels = 4 if with_vae else 3
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=channels, out_channels=channels, num_layers=2,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
        caption_projection_dim=16, pooled_projection_dim=16 + 8, pos_embed_max_size=8, qk_norm="rms_norm",
    )  # fmt: skip
    components = {
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift),
        "text_encoder": CLIPTextModelWithProjection(_clip_config(16, 16)).eval(),
        "tokenizer": tokenizer,
        "text_encoder_2": CLIPTextModelWithProjection(_clip_config(24, 8)).eval(),
        "tokenizer_2": tokenizer,
    }
    absent = {}
    if with_vae:
        components["vae"] = flow_vae(4, shift_factor=0.0609, scaling_factor=1.5305)
    else:
        absent["vae"] = [None, None]
    if with_t5:
        t5_tok = t5_tokenizer()
        components["text_encoder_3"], components["tokenizer_3"] = t5_encoder(len(t5_tok)), t5_tok
    else:
        absent.update(text_encoder_3=[None, None], tokenizer_3=[None, None])
    defaults = {"conditioning": {"max_sequence_length": 6}}
    return save_model_folder(
        folder, components, pipeline_class="StableDiffusion3Pipeline", extra=absent, defaults=defaults
    )


def make_flux(folder: str | Path, *, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """Flux-layout model: 32 px images -> 4 x 16 x 16 latents -> 64 packed tokens of 16 values,
    CLIP pooled + T5 conditioning, dynamic shifting; guidance-distilled when `guidance_embeds`."""
    folder = Path(folder)
    torch.manual_seed(seed)
    t5_tok = t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=T5_WIDTH, pooled_projection_dim=16,
        guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=16, max_image_seq_len=256,
    )  # fmt: skip
    components = {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": flow_vae(4, shift_factor=0.1159, scaling_factor=0.3611),
        "text_encoder": CLIPTextModel(_clip_config(16, 16)).eval(),
        "tokenizer": clip_tokenizer(folder / "_clip_src"),
        "text_encoder_2": t5_encoder(len(t5_tok)),
        "tokenizer_2": t5_tok,
    }
    defaults = {"conditioning": {"resolution": [32, 32], "max_sequence_length": 6}}
    return save_model_folder(folder, components, pipeline_class="FluxPipeline", defaults=defaults)
