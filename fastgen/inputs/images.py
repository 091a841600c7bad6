"""Turn user images (PIL images, file paths, numpy arrays, tensors) into model-sized pixels.

Every input becomes a float32 tensor [C, H, W] in [0, 1] with the model's channel count and
resolution H x W. Resizing rule (`resize_center_crop`): the image is scaled, preserving its aspect
ratio, by the smallest factor that makes it cover H x W (bicubic, antialiased), then the central
H x W window is cut out. For a square model this is "resize the shorter side, center-crop"; for a
non-square model (e.g. an 8 x 24 strip) an input of the model's aspect is only resized, and a
squarer input loses its top and bottom (a taller one) or its sides (a wider one); nothing is padded.
Failures raise `ImageError`, which names the image and what is wrong with it: whatever a file contains
(damaged data, a decompression bomb, an unsupported mode, a bad size) ends as an `ImageError`
for that image, never as another exception.

How Pillow images are read, by mode:

* 8-bit modes (L, RGB, P, CMYK, YCbCr, ...): values / 255; transparent pixels (an alpha channel,
  or a palette or colour marked transparent) are composited on white, as viewers show them;
* 16-bit grayscale (I;16, I;16L, I;16B, I;16N): values / 65535;
* 32-bit integer (I): values / 65535 when they all fit in 0..65535 (how Pillow opens many 16-bit
  files), otherwise / (2**31 - 1); negative values are refused;
* 32-bit float (F): values in [0, 1] as they are; values in [0, 255] (Pillow's own L -> F scale)
  / 255; anything else, NaN or infinity is refused;
* files are turned upright by their EXIF orientation first, as viewers show them.

Encoded bytes (an image file's contents, as tar shards, Parquet cells and datasets hold them) are
decoded exactly as a file with those contents: the same modes, orientation and pixel limit.

Arrays and tensors: uint8 / 255 or float in [0, 1]; numpy arrays are HW or HWC, tensors HW or
CHW, with 1 (grey), 2 (grey, alpha), 3 (RGB) or 4 (RGBA) channels. An alpha channel is composited
on white exactly as a PIL image's is (`_on_white`, in float), so one image gives the same pixels
whichever form it comes in.

A file over `max_pixels` pixels (default 100 million) is refused from its header, before it is
decoded: a 190 KB PNG can declare 14000 x 14000 pixels.
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import math
import os
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

# bytes: an encoded image file (PNG, JPEG, ...) read from a tar shard, a Parquet cell or a dataset.
ImageInput = str | Path | bytes | Image.Image | np.ndarray | torch.Tensor
# Image files with more pixels are refused from their header (--max-pixels).
DEFAULT_MAX_PIXELS = 100_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ORIENTATION_TAG = 0x0112
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Scaling a very long, thin image to cover the model's size would blow up its long side; the part
# beyond this many times the window the final crop keeps is trimmed first (centered, like the crop).
MAX_ASPECT_BEFORE_RESIZE = 4

log = logging.getLogger(__name__)
_PILLOW_LIMIT_LOCK = threading.Lock()


class ImageError(ValueError):
    """An input image could not be used; the message says which and why."""


def _describe(image: ImageInput) -> str:
    if isinstance(image, (str, Path)):
        return f"image file {str(image)!r}"
    if isinstance(image, (bytes, bytearray)):
        return f"encoded image ({len(image):,} bytes)"
    if isinstance(image, Image.Image):
        return "PIL image"
    if isinstance(image, np.ndarray):
        return "numpy image"
    return f"{type(image).__name__} image"


def _check_size(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{name} is {width}x{height} pixels; an image needs at least one pixel")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{name} is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (max_pixels, --max-pixels on the command line); downscale the "
            "image, or raise the limit if you trust the file"
        )


@contextlib.contextmanager
def _pillow_allows(max_pixels: int | None) -> Iterator[None]:
    """Pillow refuses an image over twice its global `MAX_IMAGE_PIXELS` before fastgen sees its
    size. When `max_pixels` asks for more (None: no limit), that global is raised for the
    duration of the call, under a lock since it is shared; otherwise it is left alone and
    fastgen's own check, which is stricter, decides."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or (max_pixels is not None and max_pixels <= 2 * limit):
        yield
        return
    with _PILLOW_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _opened(source: Path | bytes):
    """Pillow's lazy handle on a file or on encoded bytes."""
    return Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)


def _over_the_limit(source: Path | bytes, max_pixels: int, name: str) -> ImageError:
    """The error for a file Pillow refused as too large, with its size: the header is read again
    with Pillow's own limit lifted (reading a header decodes no pixels)."""
    try:
        with _pillow_allows(None), _opened(source) as handle:
            _check_size(handle.size, max_pixels, name)
    except ImageError as error:
        return error
    except Exception:  # the header could be read once; a second failure changes nothing
        pass
    return ImageError(
        f"{name} has more pixels than the limit of {max_pixels:,} (max_pixels, --max-pixels on the command line)"
    )


def open_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file, or an image file's bytes, upright; any failure is an `ImageError`
    naming the file (or the bytes' length)."""
    source = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source)
    name = _describe(source)
    if isinstance(source, Path) and not source.is_file():
        raise ImageError(f"{name} does not exist")
    try:
        with _pillow_allows(max_pixels), _pillow_warnings_named(name), _opened(source) as handle:
            _check_size(handle.size, max_pixels, name)  # from the header, before decoding
            handle.load()
            image = handle.copy()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _over_the_limit(source, max_pixels, name) from None
    except Exception as error:  # whatever a damaged or hostile file makes a decoder raise
        raise ImageError(
            f"{name} cannot be decoded ({type(error).__name__}: {_without_addresses(error)}); check that it is a "
            "complete PNG/JPEG/... file, or remove it"
        ) from None
    return upright(image, name)


def _without_addresses(error: Exception) -> str:
    """Pillow names a bytes buffer by its repr, with a memory address: dropped, so that one image's
    error message is the same in every run."""
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the bytes", str(error))


@contextlib.contextmanager
def _pillow_warnings_named(name: str) -> Iterator[None]:
    """Pillow warns about damaged files (corrupt EXIF, short reads) without saying which file:
    each warning is logged with the image's name instead. Its decompression-bomb warning is
    dropped, since fastgen's own pixel limit decides."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        finally:
            for message in dict.fromkeys(str(w.message) for w in caught):
                log.warning("%s: %s", name, message)


def upright(image: Image.Image, name: str) -> Image.Image:
    """The image turned by its EXIF orientation, as viewers show it (a new image; the input is
    not changed). An unreadable EXIF block is ignored with a warning."""
    try:
        with _pillow_warnings_named(name):
            orientation = image.getexif().get(ORIENTATION_TAG, 1)
            if orientation in range(2, 9):
                return ImageOps.exif_transpose(image)
    except Exception as error:  # a broken EXIF block must not cost the image
        log.warning("%s: ignoring its unreadable EXIF orientation (%s: %s)", name, type(error).__name__, error)
    return image


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in ALPHA_MODES or image.info.get("transparency") is not None


def _has_alpha(tensor: torch.Tensor) -> bool:
    """Grey or RGB pixels carry an alpha channel last when they have 2 or 4 channels."""
    return tensor.shape[0] in (2, 4)


def _on_white(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """[colour..., alpha] in [0, 1] -> the colour composited on white, as viewers show
    transparent pixels. PIL images, arrays and tensors all go through here, so one image gives the
    same pixels in any form; contiguous so that later steps see the same layout for every form."""
    colour, alpha = tensor[:-1], tensor[-1:]
    if not alpha.any():
        log.warning("%s is fully transparent: it is classified as a blank white image", name)
    return (colour * alpha + (1 - alpha)).contiguous()


def _int32_to_unit(values: np.ndarray, name: str) -> np.ndarray:
    low, high = int(values.min()), int(values.max())
    if low < 0:
        raise ImageError(
            f"{name} is a 32-bit integer image with negative values (min {low}), which have no "
            "brightness scale; convert it to 8 or 16 bits"
        )
    scale = 65535.0 if high <= 65535 else float(2**31 - 1)
    return (values.astype(np.float64) / scale).astype(np.float32)


def _float_to_unit(values: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ImageError(f"{name} is a float image with NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low >= -1e-3 and high <= 1 + 1e-3:
        return np.clip(values, 0, 1).astype(np.float32)
    if low >= 0 and high <= 255:
        return (values / 255.0).astype(np.float32)
    raise ImageError(
        f"{name} is a float image with values in [{low:.3g}, {high:.3g}]; float images must be in [0, 1] (or [0, 255])"
    )


def _eight_bit(image: Image.Image, target: str, name: str) -> np.ndarray:
    """L or RGB values / 255, through RGB for modes Pillow cannot convert directly (LAB -> L). An
    image with transparency keeps its alpha (LA for grey images, else RGBA) for `_on_white`."""
    if _has_transparency(image):
        target = "LA" if image.mode in ("L", "LA") else "RGBA"
    try:
        try:
            converted = image.convert(target)
        except ValueError:
            converted = image.convert("RGB").convert(target)
    except (ValueError, OSError) as error:
        raise ImageError(
            f"{name} has mode {image.mode!r}, which cannot be converted to {target} ({error}); "
            "save it as 8-bit RGB or grayscale"
        ) from None
    return np.asarray(converted, dtype=np.float32) / 255.0


def pil_to_array(image: Image.Image, channels: int, name: str = "PIL image") -> np.ndarray:
    """float32 [H, W, C] in [0, 1], by the mode rules of this module's docstring: 1 or 3 channels,
    or 2 or 4 with alpha last for an image with transparency."""
    if image.mode in SIXTEEN_BIT_MODES:
        array = np.asarray(image).astype(np.float32) / 65535.0
    elif image.mode == "I":
        array = _int32_to_unit(np.asarray(image), name)
    elif image.mode == "F":
        array = _float_to_unit(np.asarray(image), name)
    else:
        array = _eight_bit(image, "L" if channels == 1 else "RGB", name)
    return array[:, :, None] if array.ndim == 2 else array


def _pil_to_tensor(image: Image.Image, channels: int, name: str = "PIL image") -> torch.Tensor:
    _check_size(image.size, None, name)
    try:
        array = pil_to_array(image, channels, name)
    except ImageError:
        raise
    except Exception as error:  # a mode or a state of the image no conversion expects
        raise ImageError(
            f"{name} (mode {image.mode!r}, {image.size[0]}x{image.size[1]}) cannot be converted "
            f"({type(error).__name__}: {error}); save it as 8-bit RGB or grayscale"
        ) from None
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def _array_to_tensor(array: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """HW, HWC (numpy) or CHW / HW (tensor) arrays; uint8 in [0, 255] or float in [0, 1]; an alpha
    channel (2 or 4 channels) is kept, last."""
    is_numpy = isinstance(array, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(array)) if is_numpy else array.detach().cpu()
    if tensor.dim() == 2:
        tensor = tensor[None]
    elif tensor.dim() == 3 and is_numpy:
        tensor = tensor.permute(2, 0, 1)
    elif tensor.dim() != 3:
        raise ImageError(f"{name} has shape {tuple(array.shape)}; expected HW, HWC or CHW")
    if tensor.shape[0] not in (1, 2, 3, 4):
        raise ImageError(
            f"{name} has {tensor.shape[0]} channels (shape {tuple(array.shape)}); expected 1, 2, 3 "
            "or 4 (grey, grey + alpha, RGB, RGBA; numpy arrays are HWC, tensors CHW)"
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
    return tensor


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


def _trim_far_outside(tensor: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Keep at most MAX_ASPECT_BEFORE_RESIZE times the centered window the final crop keeps."""
    _, height, width = tensor.shape
    scale = max(out_h / height, out_w / width)
    keep_h = min(height, math.ceil(MAX_ASPECT_BEFORE_RESIZE * out_h / scale))
    keep_w = min(width, math.ceil(MAX_ASPECT_BEFORE_RESIZE * out_w / scale))
    top, left = (height - keep_h) // 2, (width - keep_w) // 2
    return tensor[:, top : top + keep_h, left : left + keep_w]


def resize_center_crop(tensor: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Scale [C, h, w] to cover H x W preserving aspect ratio (bicubic, antialiased), then
    center-crop H x W; `size` is one side (square) or (H, W). See the module docstring."""
    out_h, out_w = target_hw(size)
    _, height, width = tensor.shape
    if (height, width) != (out_h, out_w):
        tensor = _trim_far_outside(tensor, out_h, out_w)
        _, height, width = tensor.shape
        scale = max(out_h / height, out_w / width)
        new_h, new_w = max(out_h, round(height * scale)), max(out_w, round(width * scale))
        tensor = F.interpolate(tensor[None], size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)[
            0
        ].clamp(0, 1)
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
        tensor = tensor[:, top : top + out_h, left : left + out_w]
    return tensor.contiguous()


def _to_tensor(image: ImageInput, channels: int, max_pixels: int, name: str) -> torch.Tensor:
    """Any input -> float32 [channels, h, w] in [0, 1], transparency composited on white."""
    tensor = _decoded(image, channels, max_pixels, name)
    if _has_alpha(tensor):
        tensor = _on_white(tensor, name)
    return _match_channels(tensor, channels)


def _decoded(image: ImageInput, channels: int, max_pixels: int, name: str) -> torch.Tensor:
    """Any input -> float32 [C, h, w] in [0, 1]: 1 or 3 channels (`channels` picks how a PIL
    image is converted) and an alpha channel last if it has one."""
    if isinstance(image, (str, Path, bytes, bytearray)):
        return _pil_to_tensor(open_image(image, max_pixels=max_pixels), channels, name)
    if isinstance(image, Image.Image):
        return _pil_to_tensor(upright(image, name), channels, name)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return _array_to_tensor(image, name)
    raise ImageError(
        f"unsupported image type {type(image).__name__}; pass a PIL image, a file path, a "
        "numpy array (HWC) or a tensor (CHW)"
    )


def _warn_if_degenerate(tensor: torch.Tensor, name: str) -> None:
    _, height, width = tensor.shape
    if min(height, width) == 1:
        log.warning(
            "%s is %dx%d pixels: one row or column carries next to nothing of a class, so its "
            "prediction is close to a guess", name, width, height,
        )  # fmt: skip


def load_pixels(
    image: ImageInput, *, size: int | tuple[int, int], channels: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """One input image -> float32 [channels, H, W] in [0, 1]; `size` is one side or (H, W); any
    failure is an ImageError."""
    name = _describe(image)
    tensor = decode_image(image, channels=channels, max_pixels=max_pixels)
    try:
        return resize_center_crop(tensor, size)
    except Exception as error:  # nothing an image contains may stop a run
        raise ImageError(f"{name} cannot be used ({type(error).__name__}: {error})") from None


def decode_image(image: ImageInput, *, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """One input image -> float32 [channels, h, w] in [0, 1] at its own size: `load_pixels` before
    it resizes (a worker that decodes can hand this on and leave the resize to the model's side,
    with the same result). Any failure is an ImageError."""
    name = _describe(image)
    try:
        tensor = _to_tensor(image, channels, max_pixels, name)
        if min(tensor.shape[1:]) < 1:
            raise ImageError(f"{name} is empty (shape {tuple(tensor.shape)})")
        _warn_if_degenerate(tensor, name)
        return tensor
    except ImageError:
        raise
    except Exception as error:  # nothing an image contains may stop a run
        raise ImageError(f"{name} cannot be used ({type(error).__name__}: {error})") from None


def find_images(inputs: list[str]) -> list[Path]:
    """Expand files, folders and glob patterns into one list of image files, sorted by absolute
    path over all inputs (the order of a job does not depend on the order of its arguments) and
    de-duplicated (a file named twice, in any form, is listed once, as first named).

    A folder, named or matched by a glob, gives its image files (by extension, `IMAGE_SUFFIXES`)
    at any depth; a glob keeps only image files; a file named explicitly is kept whatever its
    extension, so that one which is no image ends as its own error. Paths are returned as named
    (a relative input gives relative paths). An input that is no file, no folder and no glob with a
    match raises FileNotFoundError."""
    named: dict[str, Path] = {}
    for item in inputs:
        for path in _expand(item):
            named.setdefault(os.path.abspath(path), path)
    return [named[key] for key in sorted(named)]


def _expand(item: str) -> list[Path]:
    path = Path(item)
    if path.is_dir():
        return _images_under(path)
    if path.is_file():
        return [path]
    matches = [Path(match) for match in glob.glob(item, recursive=True)]
    if not matches:
        raise FileNotFoundError(f"no image file, folder or glob match for {item!r}")
    found: list[Path] = []
    for match in matches:  # a matched folder is searched like a named one; other files must be images
        found += _images_under(match) if match.is_dir() else [match] if _is_image_file(match) else []
    return found


def _images_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if _is_image_file(path)]


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
