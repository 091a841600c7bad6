"""Every kind of image input means the same image: a 2-D tensor is one grey image as a 2-D array
is, and transparency is composited on white whether it comes as a PIL image, an array or a tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import file_lines
from PIL import Image

from fastgen import DiffusionClassifier
from fastgen.commands.main import main
from fastgen.inputs.images import ImageError, load_pixels


@pytest.fixture(scope="module")
def digits():
    return DiffusionClassifier.from_pretrained(
        "builtin:digits", device="cpu", policy="exhaustive", policy_options={"n_samples": 4}, local_files_only=True
    )


def test_a_2d_tensor_is_one_grey_image_like_a_2d_array(digits):
    grey = np.random.default_rng(8).random((8, 8), dtype=np.float32)
    from_tensor = digits.classify(torch.from_numpy(grey), on_error="return")
    from_array = digits.classify(grey, on_error="return")
    assert len(from_tensor) == 1 and not isinstance(from_tensor[0], ImageError)
    assert np.allclose(from_tensor[0].errors, from_array[0].errors)
    assert from_tensor[0].prediction == from_array[0].prediction


def _rgba(seed: int = 9, size: tuple[int, int] = (10, 14)) -> np.ndarray:
    """Seeded RGBA uint8 pixels whose alpha holds fully clear, fully opaque and partial values."""
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, size=(*size, 4), dtype=np.uint8)
    rgba[0, :, 3], rgba[1, :, 3] = 0, 255
    return rgba


def _every_form(array: np.ndarray) -> dict[str, object]:
    """One HWC uint8 image with alpha last, as PIL, numpy uint8 / float HWC and torch float CHW."""
    as_float = array.astype(np.float32) / 255
    mode = "LA" if array.shape[2] == 2 else "RGBA"
    return {
        "pil": Image.fromarray(array, mode),
        "numpy uint8": array,
        "numpy float": as_float,
        "torch float": torch.from_numpy(as_float).permute(2, 0, 1).contiguous(),
    }


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(10, 14), 8])
@pytest.mark.parametrize("alpha_channels", [4, 2])
def test_transparency_gives_the_same_pixels_in_every_form(alpha_channels, size, channels):
    rgba = _rgba()
    array = rgba if alpha_channels == 4 else np.ascontiguousarray(rgba[:, :, [1, 3]])
    pixels = {kind: load_pixels(image, size=size, channels=channels) for kind, image in _every_form(array).items()}
    reference = pixels.pop("pil")
    assert reference.std() > 0.1
    for kind, other in pixels.items():
        assert torch.equal(other, reference), kind


def test_alpha_composites_the_colour_on_white():
    rgba = _rgba()
    colour, alpha = torch.from_numpy(rgba / 255.0).float().permute(2, 0, 1).split([3, 1])
    pixels = load_pixels(rgba, size=(10, 14), channels=3)
    assert torch.equal(pixels[:, 0], torch.ones(3, 14))  # clear: white
    assert torch.equal(pixels[:, 1], colour[:, 1])  # opaque: its own colour
    assert torch.allclose(pixels, colour * alpha + 1 - alpha, atol=1e-6)


def test_a_transparent_image_with_a_white_stroke_is_white_in_every_form():
    stroke = np.zeros((8, 8, 4), dtype=np.uint8)  # transparent black ...
    stroke[2:6, 3:5] = 255  # ... with an opaque white stroke
    for kind, image in _every_form(stroke).items():
        pixels = load_pixels(image, size=8, channels=1)
        assert torch.allclose(pixels, torch.ones(1, 8, 8)), kind  # the alpha was dropped: mean 0.125


def test_the_command_line_classifies_a_quoted_glob_of_folders(tmp_path, capsys):
    rng = np.random.default_rng(11)
    for name in ("cat/a.png", "cat/b.png", "dog/deep/c.png"):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(tmp_path / "data" / name)
    (tmp_path / "data" / "dog" / "notes.txt").write_text("not an image")
    out = tmp_path / "out.jsonl"
    code = main(["classify", str(tmp_path / "data" / "*"), "--model", "builtin:digits", "--classes", "zero,one",
                 "--policy", "exhaustive", "--n-samples", "2", "--device", "cpu", "--no-progress", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    _, records = file_lines(out)
    assert sorted(Path(r["path"]).name for r in records) == ["a.png", "b.png", "c.png"]
    assert all("prediction" in r for r in records)
