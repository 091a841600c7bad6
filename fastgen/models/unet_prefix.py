"""The class-independent prefix of a text-conditioned UNet, computed once per noised input.

The engine scores every class of an image on the same (timestep, noise) samples, so a batch
holds each noised input once per class. A `UNet2DConditionModel` sees the class only through
cross-attention: the time embedding, `conv_in`, every down block without cross-attention and
the first resnet of the first block with it compute the same thing for all of those rows.
`UNetSplit` runs that prefix on the distinct inputs only, then gathers its state (hidden states,
time embedding, skip connections) out to one row per class and runs the rest.

Both halves call the UNet's own submodules in the order of diffusers' `forward`; a model whose
config adds anything this split does not reproduce (class or added embeddings, encoder
projections, other first cross-attention blocks) gets no split and runs whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PrefixState:
    """Where the prefix stops: the hidden states entering the first cross-attention, the time
    embedding and the skip connections so far. Every tensor has one row per distinct input."""

    hidden: torch.Tensor
    emb: torch.Tensor
    skips: tuple[torch.Tensor, ...]

    def take(self, rows: torch.Tensor) -> PrefixState:
        """One row per entry of `rows` (indices into this state's rows)."""
        return PrefixState(self.hidden[rows], self.emb[rows], tuple(s[rows] for s in self.skips))

    def flat(self) -> tuple[torch.Tensor, ...]:
        return (self.hidden, self.emb, *self.skips)


def _config_is_plain(unet: nn.Module) -> bool:
    config = unet.config
    return (
        getattr(unet, "class_embedding", None) is None
        and getattr(unet, "add_embedding", None) is None
        and getattr(unet, "encoder_hid_proj", None) is None
        and config.get("time_cond_proj_dim") is None
        and config.get("addition_embed_type") is None
        and not getattr(unet, "position_net", None)
    )


def split_block_index(unet: nn.Module) -> int | None:
    """Index of the down block the split falls in (the first with cross-attention), or None
    when the model is not one this split reproduces exactly."""
    from diffusers.models.unets.unet_2d_blocks import CrossAttnDownBlock2D

    if type(unet).__name__ != "UNet2DConditionModel" or not _config_is_plain(unet):
        return None
    for index, block in enumerate(unet.down_blocks):
        if getattr(block, "has_cross_attention", False):
            return index if type(block) is CrossAttnDownBlock2D else None
    return None


class UNetSplit:
    """The prefix / suffix halves of one `UNet2DConditionModel` (see the module docstring)."""

    def __init__(self, unet: nn.Module):
        index = split_block_index(unet)
        if index is None:
            raise ValueError(
                f"{type(unet).__name__} with this config has no class-independent prefix fastgen can split off"
            )
        self.unet = unet
        self.index = index

    def prefix(self, x_t: torch.Tensor, t: torch.Tensor) -> PrefixState:
        unet = self.unet
        if unet.config.center_input_sample:
            x_t = 2 * x_t - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=x_t, timestep=t), None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        hidden = unet.conv_in(x_t)
        skips: tuple[torch.Tensor, ...] = (hidden,)
        for block in unet.down_blocks[: self.index]:
            hidden, res = block(hidden_states=hidden, temb=emb)
            skips += res
        hidden = unet.down_blocks[self.index].resnets[0](hidden, emb)
        return PrefixState(hidden, emb, skips)

    def suffix(self, cond: torch.Tensor, hidden: torch.Tensor, emb: torch.Tensor, *skips: torch.Tensor) -> torch.Tensor:
        """The rest of the UNet from a (gathered) prefix state; tensors only, so it can be
        compiled or captured as a CUDA graph on its own."""
        unet = self.unet
        block = unet.down_blocks[self.index]
        cross = {"encoder_hidden_states": cond, "return_dict": False}
        # The first cross-attention block, from its first attention on.
        hidden = block.attentions[0](hidden, **cross)[0]
        skips += (hidden,)
        for resnet, attention in zip(block.resnets[1:], block.attentions[1:]):
            hidden = attention(resnet(hidden, emb), **cross)[0]
            skips += (hidden,)
        if block.downsamplers is not None:
            for downsampler in block.downsamplers:
                hidden = downsampler(hidden)
            skips += (hidden,)
        for block in unet.down_blocks[self.index + 1 :]:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(hidden_states=hidden, temb=emb, encoder_hidden_states=cond)
            else:
                hidden, res = block(hidden_states=hidden, temb=emb)
            skips += res
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                hidden = unet.mid_block(hidden, emb, encoder_hidden_states=cond)
            else:
                hidden = unet.mid_block(hidden, emb)
        # diffusers passes explicit upsample sizes when a side is not a multiple of the total
        # downsampling; the skip connections carry the sizes to restore.
        factor = 2**unet.num_upsamplers
        explicit_sizes = any(side % factor for side in skips[0].shape[-2:])
        for i, block in enumerate(unet.up_blocks):
            res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            size = skips[-1].shape[2:] if explicit_sizes and i < len(unet.up_blocks) - 1 else None
            if getattr(block, "has_cross_attention", False):
                hidden = block(
                    hidden_states=hidden, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=cond,
                    upsample_size=size,
                )  # fmt: skip
            else:
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res, upsample_size=size)
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Output row r = the UNet on (x_t[rows[r]], t[rows[r]], cond[r])."""
        return self.suffix(cond, *self.prefix(x_t, t).take(rows).flat())
