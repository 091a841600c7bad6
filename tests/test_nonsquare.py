"""Non-square models (`sample_size=(H, W)`): loading, the resize rule, engine == reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_predictions, errors_of, small_classifier

from fastgen.inputs.classes import build_classes
from fastgen.inputs.images import load_pixels, resize_center_crop
from fastgen.models import load_adapter
from fastgen.testing import make_pixel_text


@pytest.fixture(scope="module")
def strip_model(tmp_path_factory):
    return make_pixel_text(tmp_path_factory.mktemp("strip") / "model", sample_size=(8, 24), seed=5)


def _bicubic(tensor, size):
    return F.interpolate(tensor[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)


def test_a_non_square_model_round_trips_and_exposes_its_shape(strip_model):
    saved = json.loads((strip_model / "unet" / "config.json").read_text())
    assert saved["sample_size"] == [8, 24]
    adapter = load_adapter(strip_model, local_files_only=True)
    assert adapter.image_hw == (8, 24) and adapter.image_size == (8, 24)
    assert adapter.x0_shape == (3, 8, 24)
    x0 = adapter.encode_images(torch.rand(2, 3, 8, 24))
    cond = adapter.encode_conditions(build_classes(["cat", "dog"], templates=["a {}"]))
    out = adapter.denoiser(x0, torch.tensor([10, 500]), cond)
    assert out.shape == (2, 3, 8, 24)


def test_engine_matches_reference_on_a_non_square_model(strip_model):
    g = torch.Generator().manual_seed(7)
    # the model's aspect, a larger strip, a square and a tall image: all become 3 x 8 x 24
    images = [torch.rand(3, h, w, generator=g) for h, w in [(8, 24), (16, 48), (20, 20), (30, 12)]]
    clf = small_classifier(strip_model, "pixel-text", batch_size=5)
    reference = [clf.classify_reference(image) for image in images]
    assert errors_of(reference).std(axis=1).min() > 0
    for batch_size in (1, 7, 64):
        clf.batch_size = batch_size
        results = clf.classify(images)
        np.testing.assert_allclose(errors_of(results), errors_of(reference), rtol=0, atol=1e-5)
        assert_same_predictions(results, reference, atol=1e-5)
        assert [r.unet_evals for r in results] == [r.unet_evals for r in reference]


def test_resize_rule_covers_then_center_crops():
    g = torch.Generator().manual_seed(0)
    # same aspect: resized only
    strip = torch.rand(1, 16, 48, generator=g)
    torch.testing.assert_close(resize_center_crop(strip, (8, 24)), _bicubic(strip, (8, 24)))
    # exact size: untouched
    exact = torch.rand(1, 8, 24, generator=g)
    assert torch.equal(resize_center_crop(exact, (8, 24)), exact)
    # a square input is scaled to 24 x 24 (covers 8 x 24), the middle 8 rows kept
    square = torch.rand(1, 12, 12, generator=g)
    torch.testing.assert_close(resize_center_crop(square, (8, 24)), _bicubic(square, (24, 24))[:, 8:16, :])
    # a wider input is scaled to height 8 and its sides are cropped
    wide = torch.rand(1, 8, 40, generator=g)
    torch.testing.assert_close(resize_center_crop(wide, (8, 24)), _bicubic(wide, (8, 40))[:, :, 8:32])
    # a taller-aspect model from a wide input: 4 x 2 from 6 x 9 scales to 4 x 6, keeps columns 2..3
    odd = torch.rand(1, 6, 9, generator=g)
    torch.testing.assert_close(resize_center_crop(odd, (4, 2)), _bicubic(odd, (4, 6))[:, :, 2:4])


def test_square_sizes_behave_as_before():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 20, 16, generator=g)
    as_int = resize_center_crop(image, 8)
    assert torch.equal(as_int, resize_center_crop(image, (8, 8)))
    # the old rule: shorter side to 8 (16 -> 8, 20 -> 10), central 8 rows
    torch.testing.assert_close(as_int, _bicubic(image, (10, 8))[:, 1:9, :])
    array = (torch.rand(30, 90, 3, generator=g).numpy() * 255).astype(np.uint8)
    assert load_pixels(array, size=(8, 24), channels=1).shape == (1, 8, 24)
