"""Hostile image files through the real `fastgen classify`.

Hundreds of files a seeded generator writes (random bytes behind image signatures, a small PNG and
JPEG cut at many offsets or with flipped bytes, odd modes, headers declaring huge sizes, a zlib
bomb in a text chunk) go through the command line into a results file that already holds records,
a garbage line and an interrupted last line. The run must complete, every file must end with
exactly one record, and no valid record of the file before the run may be lost or changed.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import png_chunk, zero_png
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fastgen.commands.main import main
from fastgen.inputs.images import ImageError, load_pixels
from fastgen.jobs.results_file import is_record, path_key

SIGNATURES = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "gif": b"GIF89a",
    "bmp": b"BM",
    "webp": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    "tif": b"II*\x00",
    "tiff": b"MM\x00*",
}


def _encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def _digit_like(rng: np.random.Generator, size: int = 12) -> np.ndarray:
    array = np.zeros((size, size), dtype=np.uint8)
    array[2:-2, size // 2 - 1 : size // 2 + 1] = 255  # a bright stroke
    return np.clip(array.astype(int) + rng.integers(0, 40, size=array.shape), 0, 255).astype(np.uint8)


def _with_size(data: bytes, kind: str, width: int, height: int) -> bytes:
    """`data` with the size its header declares replaced."""
    out = bytearray(data)
    if kind == "jpg":  # SOF0: FF C0, length, precision, height, width
        at = out.index(b"\xff\xc0") + 5
        out[at : at + 4] = struct.pack(">HH", height, width)
    elif kind == "gif":  # logical screen descriptor
        out[6:10] = struct.pack("<HH", width, height)
    elif kind == "bmp":  # BITMAPINFOHEADER
        out[18:26] = struct.pack("<ii", width, height)
    return bytes(out)


def _odd_modes(rng: np.random.Generator) -> dict[str, bytes]:
    gray = Image.fromarray(_digit_like(rng))
    rgb = Image.fromarray(rng.integers(0, 256, size=(10, 14, 3), dtype=np.uint8))
    palette = gray.convert("P")
    deep = Image.fromarray(rng.integers(0, 65536, size=(9, 9), dtype=np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 8
    frames = [gray, gray.rotate(90), gray.rotate(180)]
    transparent = Image.new("RGBA", (8, 8), (20, 40, 60, 0))
    return {
        "mode1.png": _encoded(gray.convert("1"), "PNG"),
        "modeLA.png": _encoded(gray.convert("LA"), "PNG"),
        "modeP-transparent.png": _encoded(palette, "PNG", transparency=0),
        "modeI16.png": _encoded(deep, "PNG"),
        "modeI.tif": _encoded(Image.fromarray(rng.integers(0, 70_000, size=(9, 9)).astype(np.int32)), "TIFF"),
        "modeI-negative.tif": _encoded(Image.fromarray(np.full((5, 5), -7, dtype=np.int32)), "TIFF"),
        "modeF.tif": _encoded(Image.fromarray(rng.random((9, 9), dtype=np.float32)), "TIFF"),
        "modeF-huge-values.tif": _encoded(Image.fromarray(np.full((5, 5), 1e9, dtype=np.float32)), "TIFF"),
        "modeCMYK.jpg": _encoded(rgb.convert("CMYK"), "JPEG"),
        "modeCMYK.tif": _encoded(rgb.convert("CMYK"), "TIFF"),
        "modeLAB.tif": _encoded(rgb.convert("LAB"), "TIFF"),
        "transparent.png": _encoded(transparent, "PNG"),
        "one-pixel.png": _encoded(Image.new("L", (1, 1), 200), "PNG"),
        "one-row.png": _encoded(Image.new("L", (700, 1), 30), "PNG"),
        "animated.gif": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "pages.tif": _encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "rotated.jpg": _encoded(rgb, "JPEG", exif=exif),
        "broken-exif.jpg": _encoded(rgb, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + rng.bytes(30)),
        "rgb.bmp": _encoded(rgb, "BMP"),
        "rgba.webp": _encoded(rgb.convert("RGBA"), "WEBP"),
        "trailing-garbage.png": _encoded(gray, "PNG") + rng.bytes(200),
        "empty.png": b"",
        "text.jpg": b"this is not an image\n",
    }


def _huge_declared(rng: np.random.Generator, jpeg: bytes) -> dict[str, bytes]:
    gif = _encoded(Image.fromarray(_digit_like(rng)), "GIF")
    bmp = _encoded(Image.fromarray(_digit_like(rng)), "BMP")
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    tiny_idat = png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    zero_width = struct.pack(">IIBBBBB", 0, 10, 8, 0, 0, 0, 0)
    ztxt_bomb = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"\0" * 20_000_000, 9))
    small_png = zero_png(8, 8)
    return {
        "huge-declared.png": SIGNATURES["png"] + png_chunk(b"IHDR", ihdr) + tiny_idat + png_chunk(b"IEND", b""),
        "bomb-14000.png": zero_png(14000, 14000),
        "huge-declared.jpg": _with_size(jpeg, "jpg", 65000, 65000),
        "huge-declared.gif": _with_size(gif, "gif", 65535, 65535),
        "huge-declared.bmp": _with_size(bmp, "bmp", 200_000, 200_000),
        "zero-width.png": SIGNATURES["png"] + png_chunk(b"IHDR", zero_width) + tiny_idat + png_chunk(b"IEND", b""),
        "text-chunk-bomb.png": small_png[:33] + ztxt_bomb + small_png[33:],
    }


def write_hostile_files(folder: Path, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    png = _encoded(Image.fromarray(_digit_like(rng)), "PNG")
    jpeg = _encoded(Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)), "JPEG", quality=90)
    files: dict[str, bytes] = {}
    for cut in range(len(png)):  # every offset of the PNG
        files[f"cut-png-{cut:04d}.png"] = png[:cut]
    for cut in range(0, len(jpeg), 3):  # every third offset of the JPEG
        files[f"cut-jpg-{cut:04d}.jpg"] = jpeg[:cut]
    for i in range(40):  # one byte changed somewhere
        source, kind = (png, "png") if i % 2 else (jpeg, "jpg")
        flipped = bytearray(source)
        flipped[int(rng.integers(8, len(source)))] ^= int(rng.integers(1, 256))
        files[f"flip-{i:02d}.{kind}"] = bytes(flipped)
    for kind, signature in SIGNATURES.items():  # random bytes behind a real signature
        for i in range(8):
            files[f"random-{kind}-{i}.{kind}"] = signature + rng.bytes(int(rng.integers(0, 400)))
    files.update(_odd_modes(rng))
    files.update(_huge_declared(rng, jpeg))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return sorted(folder / name for name in files)


def _record_lines(path: Path) -> list[dict]:
    lines = path.read_bytes().split(b"\n")
    objects = []
    for line in lines:
        try:
            objects.append(json.loads(line))
        except ValueError:
            continue
    return [o for o in objects if is_record(o)]


def test_hostile_files_never_stop_a_run_nor_cost_a_record(tmp_path, capsys):
    files = write_hostile_files(tmp_path / "hostile")
    assert len(files) > 400
    out = tmp_path / "results.jsonl"
    options = ["--model", "builtin:digits", "--classes", "zero,one", "--policy", "exhaustive", "--n-samples", "2",
               "--batch-size", "256", "--device", "cpu", "--no-progress", "--out", str(out)]  # fmt: skip
    # A first run over some of the files gives a results file with real records ...
    assert main(["classify", *map(str, files[::9]), *options]) == 0
    # ... then a hand edit leaves a garbage line in its middle, and a crash a half-written line.
    lines = out.read_bytes().splitlines(keepends=True)
    lines.insert(len(lines) // 2, b"garbage from an editor\n")
    interrupted = json.dumps({"path": str(files[1]), "prediction": "zero", "scores": {"zero": 0.5}})
    before = b"".join(lines)
    out.write_bytes(before + interrupted[:40].encode())
    valid_before = _record_lines(out)
    capsys.readouterr()

    code = main(["classify", str(tmp_path / "hostile"), *options])
    err = capsys.readouterr().err
    assert code == 0, err
    after = out.read_bytes()
    assert after.startswith(before)  # nothing before the interrupted line changed or went missing
    records = _record_lines(out)
    assert records[: len(valid_before)] == valid_before
    per_file = Counter(path_key(r["path"]) for r in records)
    assert set(per_file) == {path_key(p) for p in files} and set(per_file.values()) == {1}
    by_name = {Path(r["path"]).name: r for r in records}
    for record in records:  # each file either gives a prediction or names why it could not
        assert record.get("prediction") in ("zero", "one") or (isinstance(record.get("error"), str) and record["error"])
    # Which damaged files a decoder still reads varies with Pillow's version; these do not: plain
    # files of formats Pillow has read for decades, and files cut before their header ends or
    # declaring sizes over the limit.
    for name in ("mode1.png", "modeLA.png", "modeP-transparent.png", "one-pixel.png", "rgb.bmp", "rotated.jpg"):
        assert "prediction" in by_name[name], by_name[name]
    unreadable = ["empty.png", "text.jpg", "zero-width.png", "bomb-14000.png", "cut-jpg-0000.jpg"]
    unreadable += [name for name in by_name if name.startswith("huge-declared")]
    unreadable += [f"cut-png-{cut:04d}.png" for cut in range(8 + 8 + 13)]  # signature, IHDR not whole
    for name in unreadable:
        assert "error" in by_name[name], by_name[name]
    assert f"images: {len(files)}, " in err and f"skipped (already in output): {len(valid_before)}, " in err


def _valid_files() -> dict[str, bytes]:
    """One small valid file per signature kind ("tiff" gets the little-endian TIFF Pillow writes)."""
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8))
    formats = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF"}
    return {kind: _encoded(image, format) for kind, format in formats.items()}


VALID_FILES = _valid_files()


@st.composite
def bytes_of_some_kind(draw) -> tuple[str, bytes]:
    """(kind, bytes): random bytes behind the kind's signature, or a valid file of that kind left
    whole, cut short, with one byte changed, or with bytes appended."""
    kind = draw(st.sampled_from(sorted(SIGNATURES)))
    edit = draw(st.sampled_from(["random", "whole", "cut", "flip", "append"]))
    if edit == "random":
        return kind, SIGNATURES[kind] + draw(st.binary(max_size=300))
    data = bytearray(VALID_FILES[kind])
    if edit == "cut":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif edit == "flip":
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif edit == "append":
        data += draw(st.binary(min_size=1, max_size=100))
    return kind, bytes(data)


def test_any_bytes_behind_an_image_signature_give_pixels_or_an_image_error(tmp_path):
    outcomes: Counter = Counter()

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(case=bytes_of_some_kind())
    def check(case: tuple[str, bytes]) -> None:
        kind, data = case
        path = tmp_path / f"x.{kind}"
        path.write_bytes(data)
        try:
            pixels = load_pixels(path, size=8, channels=1)
        except ImageError:
            outcomes["refused"] += 1
            return
        assert pixels.shape == (1, 8, 8) and float(pixels.min()) >= 0 and float(pixels.max()) <= 1
        outcomes["checked"] += 1

    check()
    # the pixel check ran, not only the refusals (whole valid files always decode)
    assert outcomes["checked"] > 0 and outcomes["refused"] > 0, outcomes


@pytest.fixture(scope="module")
def huge_files() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    jpeg = _encoded(Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)), "JPEG")
    return _huge_declared(rng, jpeg)


@pytest.mark.parametrize(
    "name", ["bomb-14000.png", "huge-declared.png", "huge-declared.jpg", "huge-declared.gif", "huge-declared.bmp"]
)
def test_huge_declared_sizes_are_refused_from_the_header(tmp_path, huge_files, name):
    path = tmp_path / name
    path.write_bytes(huge_files[name])
    with pytest.raises(ImageError, match=r"\d+x\d+ = [\d,]+ pixels, over the limit of 100,000,000"):
        load_pixels(path, size=8, channels=1)
