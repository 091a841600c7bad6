"""Prompt conditioning of Stable Diffusion 3 / 3.5 models, computed by diffusers' own pipeline code.

SD3 conditions its transformer on two tensors per prompt: the joint-attention sequence (the two
CLIP encoders' penultimate hidden states side by side, zero-padded to T5's width, followed by
T5's tokens, or by zeros when T5 is absent) and the pooled vector (both CLIP projections side
by side). `StableDiffusion3Pipeline.encode_prompt` defines exactly this, so fastgen builds a
pipeline around the loaded components (no VAE needed) and asks it, rather than restating it;
training scripts call the same function, so a model is scored with the conditioning it was
trained on.
"""

from __future__ import annotations

from typing import Any

import torch

# diffusers' default for SD3 pipelines; a model's fastgen.json may set another
# (`"conditioning": {"max_sequence_length": N}`).
SD3_MAX_SEQUENCE_LENGTH = 256


def sd3_text_pipeline(components: dict[str, Any]):
    """A `StableDiffusion3Pipeline` holding the text components (and the transformer, whose
    `joint_attention_dim` sizes the zeros that stand in for an absent T5)."""
    from diffusers import StableDiffusion3Pipeline

    names = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")
    parts = {name: components.get(name) for name in names}
    return StableDiffusion3Pipeline(
        transformer=components["transformer"], scheduler=components.get("scheduler"), vae=None, **parts
    )


def encode_sd3_prompts(
    pipeline, prompts: list[str], *, max_sequence_length: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(joint-attention embeddings [P, L, D], pooled projections [P, D_pooled]) for `prompts`,
    with gradients when the encoders are in training mode."""
    embeds, _, pooled, _ = pipeline.encode_prompt(
        prompt=list(prompts),
        prompt_2=None,
        prompt_3=None,
        device=torch.device(device),
        do_classifier_free_guidance=False,
        max_sequence_length=int(max_sequence_length),
    )
    return embeds, pooled
