"""Turn user images (PIL images, file paths, numpy arrays, tensors) into model-sized pixels.

Every input becomes a float32 tensor [C, H, W] in [0, 1] with the model's channel count and
resolution H x W. Resizing rule (`resize_center_crop`): the image is scaled, preserving its aspect
ratio, by the smallest factor that makes it cover H x W (bicubic, antialiased), then the central
H x W window is cut out. For a square model this is "resize the shorter side, center-crop"; for a
non-square model (e.g. an 8 x 24 strip) an input of the model's aspect is only resized, and a
squarer input loses its top and bottom (a taller one) or its sides (a wider one); nothing is padded.
Failures raise `ImageError`, which names the image and what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

ImageInput = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageError(ValueError):
    """An input image could not be used; the message says which and why."""


def _describe(image: ImageInput) -> str:
    if isinstance(image, (str, Path)):
        return f"image file {str(image)!r}"
    return f"{type(image).__name__} image"


def open_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file {str(path)!r} does not exist")
    try:
        with Image.open(path) as handle:
            handle.load()
            return handle.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(
            f"image file {str(path)!r} cannot be decoded ({error}); check that it is a complete "
            "PNG/JPEG/... file, or remove it"
        ) from None


def _pil_to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    mode = "L" if channels == 1 else "RGB"
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparent pixels on white, as viewers show them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _array_to_tensor(array: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """HW, HWC (numpy) or CHW / HW (tensor) arrays; uint8 in [0, 255] or float in [0, 1]."""
    is_numpy = isinstance(array, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(array)) if is_numpy else array.detach().cpu()
    if tensor.dim() == 2:
        tensor = tensor[None]
    elif tensor.dim() == 3 and is_numpy:
        tensor = tensor.permute(2, 0, 1)
    elif tensor.dim() != 3:
        raise ImageError(f"{name} has shape {tuple(array.shape)}; expected HW, HWC or CHW")
    if tensor.shape[0] not in (1, 3, 4):
        raise ImageError(
            f"{name} has {tensor.shape[0]} channels (shape {tuple(array.shape)}); expected 1, 3 "
            "or 4 (numpy arrays are HWC, tensors CHW)"
        )
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif tensor.is_floating_point():
        tensor = tensor.float()
        if not torch.isfinite(tensor).all():
            raise ImageError(f"{name} contains NaN or infinite values")
        if tensor.min() < -1e-3 or tensor.max() > 1 + 1e-3:
            raise ImageError(
                f"{name} has values in [{tensor.min():.3g}, {tensor.max():.3g}]; float images "
                "must be in [0, 1] (divide uint8 data by 255)"
            )
        tensor = tensor.clamp(0, 1)
    else:
        raise ImageError(f"{name} has dtype {tensor.dtype}; expected uint8 or floating point")
    return tensor[:3]


def _match_channels(tensor: torch.Tensor, channels: int) -> torch.Tensor:
    if tensor.shape[0] == channels:
        return tensor
    if channels == 3:
        return tensor.expand(3, -1, -1).contiguous()
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    return (tensor * luma).sum(dim=0, keepdim=True)


def target_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """A model resolution given as one side (square) or (H, W), as (H, W)."""
    if isinstance(size, (tuple, list)):
        height, width = (int(s) for s in size)
    else:
        height = width = int(size)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {size!r}")
    return height, width


def resize_center_crop(tensor: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Scale [C, h, w] to cover H x W preserving aspect ratio (bicubic, antialiased), then
    center-crop H x W; `size` is one side (square) or (H, W). See the module docstring."""
    out_h, out_w = target_hw(size)
    _, height, width = tensor.shape
    if (height, width) != (out_h, out_w):
        scale = max(out_h / height, out_w / width)
        new_h, new_w = max(out_h, round(height * scale)), max(out_w, round(width * scale))
        tensor = F.interpolate(
            tensor[None], size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
        )[0].clamp(0, 1)
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
        tensor = tensor[:, top : top + out_h, left : left + out_w]
    return tensor.contiguous()


def load_pixels(image: ImageInput, *, size: int | tuple[int, int], channels: int) -> torch.Tensor:
    """One input image -> float32 [channels, H, W] in [0, 1]; `size` is one side or (H, W)."""
    name = _describe(image)
    if isinstance(image, (str, Path)):
        tensor = _pil_to_tensor(open_image(image), channels)
    elif isinstance(image, Image.Image):
        tensor = _pil_to_tensor(image, channels)
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        tensor = _match_channels(_array_to_tensor(image, name), channels)
    else:
        raise ImageError(
            f"unsupported image type {type(image).__name__}; pass a PIL image, a file path, a "
            "numpy array (HWC) or a tensor (CHW)"
        )
    if min(tensor.shape[1:]) < 1:
        raise ImageError(f"{name} is empty (shape {tuple(tensor.shape)})")
    return resize_center_crop(tensor, size)


def find_images(inputs: list[str]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted, de-duplicated list."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path().glob(item)) if not path.is_absolute() else sorted(
                Path(path.anchor).glob(str(path.relative_to(path.anchor)))
            )
            if not matches:
                raise FileNotFoundError(f"no image file, folder or glob match for {item!r}")
            found += [p for p in matches if p.is_file()]
    unique = list(dict.fromkeys(found))
    return unique
