"""Image inputs: every accepted form, and clear errors for the rest."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from helpers import zero_png
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
        assert rgb.min() >= 0 and rgb.max() <= 1 and rgb.std() > 0.05


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
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["3.PNG", "a/1.png", "a/b/2.jpg"]
    with pytest.raises(FileNotFoundError, match="no image file"):
        find_images([str(tmp_path / "zzz*.png")])


# -- high bit depths, transparency, orientation, limits ---------------------------------------------
def _gradient16(seed=5, size=(12, 12)) -> np.ndarray:
    """Seeded 16-bit values spread over the whole range, most far above 255."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 65536, size=size, dtype=np.uint16)


def test_a_16_bit_png_decodes_to_its_own_values(tmp_path):
    values = _gradient16()
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    pixels = load_pixels(path, size=12, channels=1)
    assert torch.allclose(pixels[0], torch.from_numpy(values / 65535.0).float(), atol=1e-6)
    rgb = load_pixels(path, size=12, channels=3)  # gray replicated, not saturated
    assert torch.allclose(rgb, pixels.expand(3, -1, -1), atol=1e-6)


@pytest.mark.parametrize("mode, dtype", [("I;16B", ">u2"), ("I;16L", "<u2"), ("I;16", "<u2")])
def test_16_bit_modes_of_either_byte_order(mode, dtype):
    values = _gradient16(seed=6)
    image = Image.frombytes(mode, (12, 12), values.astype(dtype).tobytes())
    pixels = load_pixels(image, size=12, channels=1)
    assert torch.allclose(pixels[0], torch.from_numpy(values / 65535.0).float(), atol=1e-6)


def test_32_bit_integer_images_by_their_range():
    sixteen = _gradient16(seed=7).astype(np.int32)
    pixels = load_pixels(Image.fromarray(sixteen), size=12, channels=1)
    assert torch.allclose(pixels[0], torch.from_numpy(sixteen / 65535.0).float(), atol=1e-6)
    wide = sixteen * 30_000 + 1  # past 16 bits: the full 32-bit scale
    pixels = load_pixels(Image.fromarray(wide), size=12, channels=1)
    assert torch.allclose(pixels[0], torch.from_numpy(wide / (2**31 - 1)).float(), atol=1e-6)
    with pytest.raises(ImageError, match="negative values"):
        sixteen[3, 4] = -1
        load_pixels(Image.fromarray(sixteen), size=12, channels=1)


def test_float_images_in_unit_or_byte_range(tmp_path):
    unit = np.random.default_rng(8).random((12, 12), dtype=np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(unit).save(path)
    assert Image.open(path).mode == "F"
    assert torch.allclose(load_pixels(path, size=12, channels=1)[0], torch.from_numpy(unit), atol=1e-6)
    gray = Image.fromarray((unit * 255).round().astype(np.uint8))
    as_float = gray.convert("F")  # Pillow's own L -> F keeps 0..255
    assert torch.allclose(load_pixels(as_float, size=12, channels=1), load_pixels(gray, size=12, channels=1), atol=1e-6)
    for bad, message in (
        (np.linspace(-10, 1000, 16).reshape(4, 4), r"values in \[-10, 1e\+03\]"),
        (np.full((4, 4), np.nan), "NaN"),
    ):
        with pytest.raises(ImageError, match=message):
            load_pixels(Image.fromarray(bad.astype(np.float32)), size=4, channels=1)


def test_palette_transparency_is_composited_on_white(tmp_path):
    indices = np.random.default_rng(9).integers(0, 4, size=(8, 8), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    palette = [10, 20, 30, 200, 40, 40, 0, 120, 250, 90, 90, 90]
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.info["transparency"] = 2  # index 2 is see-through
    path = tmp_path / "palette.png"
    image.save(path, transparency=2)
    pixels = load_pixels(path, size=8, channels=3)
    colours = np.array(palette).reshape(-1, 3)[indices] / 255.0
    colours[indices == 2] = 1.0
    assert torch.allclose(pixels, torch.from_numpy(colours).permute(2, 0, 1).float(), atol=1e-6)


def test_exif_orientation_is_applied_as_viewers_show_it(tmp_path):
    array = np.random.default_rng(10).integers(0, 256, size=(6, 10), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.png"
    Image.fromarray(array).save(path, exif=exif)
    pixels = load_pixels(path, size=6, channels=1)  # upright it is 10 high, 6 wide: center crop
    upright = np.rot90(array, k=-1)[2:8] / 255.0
    assert torch.allclose(pixels[0], torch.from_numpy(upright.copy()).float(), atol=1e-6)


def test_a_decompression_bomb_is_an_image_error_naming_the_limit(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(zero_png(14000, 14000))
    assert bomb.stat().st_size < 300_000
    with pytest.raises(
        ImageError, match=r"14000x14000 = 196,000,000 pixels, over the limit of 100,000,000 \(max_pixels"
    ):
        load_pixels(bomb, size=8, channels=1)
    small = tmp_path / "small.png"
    small.write_bytes(zero_png(40, 30))
    with pytest.raises(ImageError, match="40x30 = 1,200 pixels, over the limit of 1,000"):
        load_pixels(small, size=8, channels=1, max_pixels=1000)
    assert load_pixels(small, size=8, channels=1, max_pixels=1200).shape == (1, 8, 8)


def test_a_limit_above_pillows_own_lets_the_image_through(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow itself refuses > 200 pixels
    path = tmp_path / "thirty.png"
    path.write_bytes(zero_png(30, 30))
    assert load_pixels(path, size=8, channels=1, max_pixels=1000).shape == (1, 8, 8)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored
    with pytest.raises(ImageError, match="over the limit of 500"):
        load_pixels(path, size=8, channels=1, max_pixels=500)


def test_degenerate_images_are_classified_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="fastgen.inputs.images"):
        assert load_pixels(Image.new("L", (1, 1), 90), size=8, channels=1).shape == (1, 8, 8)
        assert "is 1x1 pixels" in caplog.text
        clear = Image.new("RGBA", (5, 5), (30, 60, 90, 0))
        assert torch.allclose(load_pixels(clear, size=5, channels=3), torch.ones(3, 5, 5))
        assert "fully transparent" in caplog.text


def test_odd_modes_load_or_fail_as_image_errors():
    base = Image.fromarray(_rgb(11, (9, 9)))
    for mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "RGBX", "RGBa"):
        image = base.convert(mode) if mode != "PA" else base.convert("P").convert("PA")
        assert load_pixels(image, size=9, channels=3).shape == (3, 9, 9), mode
        assert load_pixels(image, size=9, channels=1).shape == (1, 9, 9), mode
    with pytest.raises(ImageError, match="mode 'La'"):
        load_pixels(Image.new("La", (4, 4)), size=4, channels=3)
    with pytest.raises(ImageError, match="0x4 pixels"):
        load_pixels(Image.new("L", (0, 4)), size=4, channels=3)


def test_a_very_long_image_is_trimmed_before_resizing():
    strip = np.zeros((2, 100_000), dtype=np.uint8)
    strip[:, 49_999:50_001] = 255  # a bright center
    pixels = load_pixels(strip, size=64, channels=1)  # without trimming: a 64 x 3.2M intermediate
    assert pixels.shape == (1, 64, 64) and pixels.max() > 0.5


def test_a_broken_exif_block_costs_nothing_and_its_warning_names_the_file(tmp_path, caplog):
    path = tmp_path / "broken-exif.jpg"
    Image.fromarray(_rgb(12, (10, 10))).save(
        path, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + bytes(range(30))
    )
    with caplog.at_level(logging.WARNING, logger="fastgen.inputs.images"):
        assert load_pixels(path, size=10, channels=3).shape == (3, 10, 10)
    assert "broken-exif.jpg" in caplog.text and "EXIF" in caplog.text


# -- finding image files: folders, globs, order ------------------------------------------------------
def _tree(root, names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_a_glob_that_matches_folders_searches_them_and_keeps_only_images(tmp_path):
    _tree(tmp_path, ["data/cat/1.png", "data/cat/notes.txt", "data/dog/deep/2.JPG", "data/readme.md", "data/3.webp"])
    found = find_images([str(tmp_path / "data" / "*")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "data/3.webp",
        "data/cat/1.png",
        "data/dog/deep/2.JPG",
    ]
    assert find_images([str(tmp_path / "data" / "*.md")]) == []  # a match, but no image


def test_the_list_is_sorted_over_all_inputs_and_each_file_listed_once(tmp_path, monkeypatch):
    _tree(tmp_path, ["b/2.png", "b/1.png", "a/9.png", "c/0.png", "labels.csv"])
    monkeypatch.chdir(tmp_path)
    inputs = ["c", str(tmp_path / "b"), "b/1.png", "a", "./b/../a/9.png", "labels.csv", "*/0.png", "[ab]"]
    found = find_images(inputs)
    expected = ["a/9.png", str(tmp_path / "b/1.png"), str(tmp_path / "b/2.png"), "c/0.png", "labels.csv"]
    assert [str(p) for p in found] == expected  # each as first named; an explicit non-image stays
    backwards = find_images(list(reversed(inputs)))
    assert [os.path.abspath(p) for p in backwards] == [os.path.abspath(p) for p in found]
