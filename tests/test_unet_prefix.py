"""The class-independent prefix of a text UNet, run once per distinct noised input, gives the
UNet's own output for every row; the engine uses it and runs the prefix on fewer rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from helpers import assert_same_predictions, errors_of, small_classifier

from fastgen.models.base import TextDenoiser
from fastgen.models.unet_prefix import UNetSplit, split_block_index

BASE = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (16, 32),
    "norm_num_groups": 8,
    "cross_attention_dim": 24,
    "attention_head_dim": 4,
    "layers_per_block": 1,
}
CONFIGS = {
    # digits-like: a plain block first, so the prefix holds a whole down block
    "plain-block-first": {
        "sample_size": 8,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    },
    # SD-like: cross-attention in the first block, two layers per block, three levels
    "sd-like": {
        "sample_size": 8,
        "block_out_channels": (16, 16, 32),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    },
    # a side that is not a multiple of the downsampling: explicit upsample sizes
    "odd-side": {
        "sample_size": 7,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    },
    # centred input, linear projections, an activation on the time embedding, no mid block
    "variants": {
        "sample_size": 8,
        "center_input_sample": True,
        "use_linear_projection": True,
        "time_embedding_act_fn": "silu",
        "mid_block_type": None,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    },
}


def _unet(config: dict, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**BASE, **config}).eval()


def _inputs(unet: UNet2DConditionModel, n_distinct: int, rows: list[int], seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    side = unet.config.sample_size
    x_t = torch.randn(n_distinct, 3, side, side, generator=g)
    t = torch.randint(0, 1000, (n_distinct,), generator=g)
    cond = torch.randn(len(rows), 5, 24, generator=g)
    return x_t, t, cond, torch.tensor(rows)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefix_then_suffix_is_the_unet_on_every_row(name):
    unet = _unet(CONFIGS[name])
    split = UNetSplit(unet)
    rows = [0, 3, 1, 1, 2, 0, 3, 3, 2, 1]  # unordered, repeated, every input used
    x_t, t, cond, rows = _inputs(unet, 4, rows)
    with torch.inference_mode():
        expected = unet(x_t[rows], t[rows], encoder_hidden_states=cond).sample
        state = split.prefix(x_t, t)
        shared = split(x_t, t, cond, rows)
    assert state.hidden.shape[0] == 4 and all(s.shape[0] == 4 for s in state.skips)
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(shared, expected, rtol=0, atol=1e-5)


def test_where_the_split_falls():
    assert split_block_index(_unet(CONFIGS["plain-block-first"])) == 1
    assert split_block_index(_unet(CONFIGS["sd-like"])) == 0


def test_a_class_embedding_means_no_split():
    # the class would enter with the time embedding, before any cross-attention
    assert split_block_index(_unet({**CONFIGS["plain-block-first"], "num_class_embeds": 4})) is None


def test_a_model_without_a_split_runs_whole_on_gathered_rows():
    plain = {"down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D")}
    unet = _unet({**CONFIGS["plain-block-first"], **plain})
    denoiser = TextDenoiser(unet)
    assert split_block_index(unet) is None and not denoiser.shares_prefix
    x_t, t, cond, rows = _inputs(unet, 3, [2, 0, 1, 2])
    with torch.inference_mode():
        expected = unet(x_t[rows], t[rows], encoder_hidden_states=cond).sample
        torch.testing.assert_close(denoiser(x_t, t, cond, rows), expected, rtol=0, atol=1e-6)


def test_engine_runs_the_prefix_once_per_image_and_sample(model_dirs):
    """3 images x 3 classes x 5 samples in one batch: the first layer sees 15 rows, the last 45;
    the errors equal those of the backend that runs every row whole."""
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 16, 16, generator=g) for _ in range(3)]
    shared = small_classifier(model_dirs["pixel-text"], "pixel-text", batch_size=64, backend="torch")
    whole = small_classifier(
        model_dirs["pixel-text"], "pixel-text", batch_size=64, backend="torch", backend_options={"share_prefix": False}
    )
    assert shared.denoise.shares_prefix and not whole.denoise.shares_prefix
    unet = shared.denoise.module.unet
    first, last = [], []
    hooks = [
        unet.conv_in.register_forward_pre_hook(lambda _, args: first.append(args[0].shape[0])),
        unet.conv_out.register_forward_pre_hook(lambda _, args: last.append(args[0].shape[0])),
    ]
    try:
        results = shared.classify(images)
    finally:
        for hook in hooks:
            hook.remove()
    assert (first, last) == ([15], [45])
    reference = whole.classify(images)
    np.testing.assert_allclose(errors_of(results), errors_of(reference), rtol=0, atol=1e-5)
    assert_same_predictions(results, reference, atol=1e-5)
