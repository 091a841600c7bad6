"""Image inputs: every accepted form, and clear errors for the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fastgen.inputs.images import ImageError, find_images, load_pixels


def _rgb(seed=0, size=(12, 10)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)


def test_modes_rgb_gray_rgba_palette_load_to_the_model_shape(tmp_path):
    array = _rgb()
    image = Image.fromarray(array)
    for mode in ("RGB", "L", "RGBA", "P"):
        converted = image.convert(mode)
        rgb = load_pixels(converted, size=8, channels=3)
        gray = load_pixels(converted, size=8, channels=1)
        assert rgb.shape == (3, 8, 8) and gray.shape == (1, 8, 8)
        assert 0 <= rgb.min() and rgb.max() <= 1 and rgb.std() > 0.05


def test_transparent_pixels_are_composited_on_white():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # fully transparent black
    pixels = load_pixels(Image.fromarray(rgba, "RGBA"), size=8, channels=3)
    assert torch.allclose(pixels, torch.ones(3, 8, 8))


def test_numpy_tensor_and_pil_agree():
    array = _rgb(1, (8, 8))
    from_pil = load_pixels(Image.fromarray(array), size=8, channels=3)
    from_numpy = load_pixels(array, size=8, channels=3)
    from_tensor = load_pixels(torch.from_numpy(array).permute(2, 0, 1).float() / 255, size=8, channels=3)
    assert torch.allclose(from_pil, from_numpy) and torch.allclose(from_pil, from_tensor, atol=1e-6)


def test_resize_keeps_the_center():
    array = np.zeros((16, 32), dtype=np.uint8)
    array[:, 8:24] = 255  # a bright central square after center crop
    pixels = load_pixels(array, size=8, channels=1)
    assert pixels.shape == (1, 8, 8) and pixels.mean() > 0.95


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4, 5), dtype=np.uint8), "5 channels"),
        (torch.full((3, 4, 4), float("nan")), "NaN or infinite"),
        (torch.full((3, 4, 4), 3.0), r"must be in \[0, 1\]"),
        (np.zeros((4, 4), dtype=np.int32), "dtype"),
        (42, "unsupported image type"),
    ],
)
def test_bad_arrays_are_refused_with_a_reason(bad, message):
    with pytest.raises(ImageError, match=message):
        load_pixels(bad, size=8, channels=3)


def test_corrupt_and_missing_files_are_named(tmp_path):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ImageError, match="broken.png.*cannot be decoded"):
        load_pixels(corrupt, size=8, channels=3)
    with pytest.raises(ImageError, match="does not exist"):
        load_pixels(tmp_path / "nope.png", size=8, channels=3)


def test_find_images_walks_folders_and_globs(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.png", "a/b/2.jpg", "a/notes.txt", "3.PNG"):
        (tmp_path / name).write_bytes(b"x")
    found = find_images([str(tmp_path / "a"), str(tmp_path / "*.PNG")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/1.png", "a/b/2.jpg", "3.PNG"]
    with pytest.raises(FileNotFoundError, match="no image file"):
        find_images([str(tmp_path / "zzz*.png")])
