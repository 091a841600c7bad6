"""Prompt -> text embedding, shared by the text-conditioned adapters."""

from __future__ import annotations

import torch


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
