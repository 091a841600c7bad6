"""Animal-Shape for `builtin:animals`: fetch the wheel, read it, remove duplicates, split.

Animal-Shape is the `animal-mnist` wheel on PyPI (MIT): 10,000 28x28 grayscale silhouettes of ten
animals, 1,000 each, stored bright (255) on a black (0) background. Its own loader imports
TensorFlow; here the wheel is opened as a zip and its two gzipped pickles are read with an
unpickler that only rebuilds numpy arrays. The pinned version's sha256 is checked after every
download and before every read.

Duplicates. Exact duplicates are identical 28x28 images (284 copies: 9,716 distinct images).
Near duplicates are pairs whose 16x16 versions (the model's resolution, made by the engine's own
resize) differ by at most NEAR_DUPLICATE_MAD grey levels (of 255) per pixel on average, as they are
or with one of them mirrored left-right; the data hold re-cropped, re-scaled and mirrored copies of
the same silhouette. 6 is the largest whole threshold at which no such pair joins two classes
(at 7 a mirrored pair does; at 8 three direct pairs do). Going through the distinct images in the
wheel's order, an image is dropped when it is a near duplicate of one already kept, so no two kept
images are near duplicates, and no training image is a near duplicate of a held-out one.

Split: the kept images, stratified by class, 75/25, `random_state=0` (scikit-learn's
`train_test_split`), in the order that function returns.

    python -m training.animals_data [--cache-dir DIR] [--wheel FILE]

fetches the wheel (or checks FILE), prints the counts and writes the held-out split to
`fastgen/builtin/animals/heldout.npz`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastgen.builtin.animals_data import (
    CLASS_NAMES,
    HELDOUT_FILE,
    IMAGE_SIZE,
    SOURCE_SIZE,
    SPLIT_SEED,
    TEST_SIZE,
)
from fastgen.inputs.images import resize_center_crop

PACKAGE = "animal-mnist"
WHEEL_VERSION = "0.4"
WHEEL_FILE = "animal_mnist-0.4-py3-none-any.whl"
WHEEL_SHA256 = "aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce"
IMAGES_MEMBER = "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz"
LABELS_MEMBER = "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz"
DEFAULT_CACHE_DIR = Path("~/.cache/fastgen/animal-mnist")
N_SOURCE_IMAGES = 10_000
NEAR_DUPLICATE_MAD = 6


# ----------------------------------------------------------------------------- the wheel


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_wheel(path: Path) -> Path:
    """`path` if it is the pinned wheel, else a ValueError naming both digests."""
    found = sha256_of(path)
    if found != WHEEL_SHA256:
        raise ValueError(
            f"{path} has sha256 {found}, expected {WHEEL_SHA256} ({PACKAGE}=={WHEEL_VERSION}); "
            "delete it to download it again"
        )
    return path


def cache_dir_or_default(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()


def cached_wheel(cache_dir: str | Path | None = None) -> Path | None:
    """The pinned wheel in the cache, or None when it has not been fetched yet."""
    path = cache_dir_or_default(cache_dir) / WHEEL_FILE
    return check_wheel(path) if path.is_file() else None


def fetch_wheel(cache_dir: str | Path | None = None) -> Path:
    """The pinned wheel, downloaded with pip into `cache_dir` the first time and checked."""
    if (path := cached_wheel(cache_dir)) is not None:
        return path
    folder = cache_dir_or_default(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # Download into a scratch folder inside the cache, so an interrupted or wrong download never
    # sits where a checked wheel is expected.
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += [f"{PACKAGE}=={WHEEL_VERSION}", "-d", scratch]
        subprocess.run(command, check=True)
        downloaded = check_wheel(Path(scratch) / WHEEL_FILE)
        shutil.move(str(downloaded), folder / WHEEL_FILE)
    return folder / WHEEL_FILE


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else: a pickle can run any callable it names."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy_reconstruct()
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the Animal-Shape data")


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _read_member(wheel: zipfile.ZipFile, member: str) -> np.ndarray:
    raw = gzip.decompress(wheel.read(member))
    return np.asarray(_ArrayUnpickler(io.BytesIO(raw)).load())


def read_wheel(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [10000, 28, 28], labels int64 [10000]) from the checked wheel."""
    with zipfile.ZipFile(check_wheel(Path(path))) as wheel:
        images = _read_member(wheel, IMAGES_MEMBER)
        labels = _read_member(wheel, LABELS_MEMBER).astype(np.int64)
    expected = (N_SOURCE_IMAGES, SOURCE_SIZE, SOURCE_SIZE)
    if images.shape != expected or images.dtype != np.uint8 or labels.shape != (N_SOURCE_IMAGES,):
        raise ValueError(f"unexpected Animal-Shape arrays: images {images.shape} {images.dtype}, labels {labels.shape}")
    return images, labels


# ----------------------------------------------------------------------------- resolution


def to_model_size(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [N, 28, 28] -> uint8 [N, size, size] by the engine's own rule (`resize_center_crop`:
    bicubic, antialiased), so that an original given to the engine becomes, to within rounding,
    the training image."""
    # The images go through as the channels of one image: the resize treats channels alike.
    pixels = torch.from_numpy(np.ascontiguousarray(images)).float().div(255)
    return resize_center_crop(pixels, size).mul(255).round().to(torch.uint8).numpy()


def border_medians(images: np.ndarray) -> np.ndarray:
    """The median of each image's outermost ring of pixels (the polarity rule's background)."""
    ring = np.concatenate([images[:, 0], images[:, -1], images[:, 1:-1, 0], images[:, 1:-1, -1]], axis=1)
    return np.median(ring, axis=1)


# ----------------------------------------------------------------------------- duplicates


def block_sums(images: np.ndarray, block: int = 4) -> np.ndarray:
    """int32 [N, (H / block) * (W / block)]: the pixel sum of each block x block tile."""
    n, height, width = images.shape
    tiles = images.reshape(n, height // block, block, width // block, block).astype(np.int32)
    return tiles.sum(axis=(2, 4)).reshape(n, -1)


def close_pairs(a: np.ndarray, b: np.ndarray, max_mad: float, chunk: int = 256) -> np.ndarray:
    """Pairs (i, j), int64 [k, 2], whose images a[i], b[j] (uint8, same shape, sides divisible by
    4) differ by at most `max_mad` grey levels per pixel on average."""
    flat_a = a.reshape(len(a), -1).astype(np.int32)
    flat_b = b.reshape(len(b), -1).astype(np.int32)
    limit = max_mad * flat_a.shape[1]  # on sums of absolute differences: integer and exact
    # The L1 distance between 4x4 tile sums is a lower bound on sum |x - y| (and |sum(x) - sum(y)|
    # one on that): images of a are taken in chunks of similar sums against the window of b whose
    # sums can be close, the tile bound leaves a few candidates, and those are compared exactly.
    # Tile sums and their distances are integers below 2**24, exact in float32.
    sums_a, sums_b = flat_a.sum(1), flat_b.sum(1)
    order_a, order_b = np.argsort(sums_a, kind="stable"), np.argsort(sums_b, kind="stable")
    sorted_sums_b = sums_b[order_b]
    tiles_a = torch.from_numpy(block_sums(a)).float()
    tiles_b = torch.from_numpy(block_sums(b)[order_b]).float()
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    for start in range(0, len(a), chunk):
        rows = order_a[start : start + chunk]
        lo = np.searchsorted(sorted_sums_b, sums_a[rows].min() - limit, side="left")
        hi = np.searchsorted(sorted_sums_b, sums_a[rows].max() + limit, side="right")
        bound = torch.cdist(tiles_a[rows], tiles_b[lo:hi], p=1)
        i, j = (bound <= limit).nonzero(as_tuple=True)
        cand_a, cand_b = rows[i.numpy()], order_b[lo + j.numpy()]
        close = np.abs(flat_a[cand_a] - flat_b[cand_b]).sum(1) <= limit
        pairs.append(np.stack([cand_a[close], cand_b[close]], axis=1).astype(np.int64))
    found = np.concatenate(pairs)
    return found[np.lexsort((found[:, 1], found[:, 0]))]


def near_duplicate_pairs(images: np.ndarray, max_mad: float = NEAR_DUPLICATE_MAD) -> np.ndarray:
    """Unordered pairs (i < j) of near duplicates among `images` (uint8 [N, H, W] at the model's
    resolution): close as they are, or with one mirrored left-right."""
    direct = close_pairs(images, images, max_mad)
    mirrored = close_pairs(images, images[:, :, ::-1], max_mad)
    pairs = np.concatenate([direct, mirrored])
    pairs = np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1)
    return np.unique(pairs, axis=0)


def first_of_each_cluster(n: int, pairs: np.ndarray) -> np.ndarray:
    """Mask of items to keep: a pass in order keeps an item unless `pairs` join it to an item
    already kept. No two kept items are then paired, and every dropped item is paired with a kept
    one (keeping whole connected groups down to one item would drop more: pairs chain)."""
    earlier: list[list[int]] = [[] for _ in range(n)]
    for i, j in np.sort(pairs, axis=1):
        earlier[j].append(int(i))
    keep = np.zeros(n, dtype=bool)
    for item in range(n):
        keep[item] = not any(keep[other] for other in earlier[item])
    return keep


# ----------------------------------------------------------------------------- the split


@dataclass
class AnimalSplit:
    """Kept images split 75/25; `*_index` are positions in the wheel's 10,000 images."""

    images_source: np.ndarray  # uint8 [10000, 28, 28], all of the wheel
    images: np.ndarray  # uint8 [10000, 16, 16]
    labels: np.ndarray  # int64 [10000]
    train_index: np.ndarray
    heldout_index: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    def part(self, name: str, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [n, size, size], labels) of "train" or "heldout"; size 16 or 28."""
        index = {"train": self.train_index, "heldout": self.heldout_index}[name]
        images = {IMAGE_SIZE: self.images, SOURCE_SIZE: self.images_source}[size]
        return images[index], self.labels[index]


def deduplicate(images_source: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """(kept positions, counts): the first of each set of identical originals, then the near
    duplicates of an image kept before them dropped (see the module docstring)."""
    # Each image as one opaque value of its bytes: sorting those finds identical images fast.
    rows = np.ascontiguousarray(images_source.reshape(len(images_source), -1))
    _, first_copy = np.unique(rows.view(np.dtype((np.void, rows.shape[1]))).ravel(), return_index=True)
    distinct = np.sort(first_copy)
    pairs = near_duplicate_pairs(images[distinct])
    kept = distinct[first_of_each_cluster(len(distinct), pairs)]
    stats = {
        "source_images": len(images_source),
        "exact_duplicate_copies": len(images_source) - len(distinct),
        "distinct_images": len(distinct),
        "near_duplicate_rule": f"mean |a - b| <= {NEAR_DUPLICATE_MAD} of 255 at {IMAGE_SIZE}x{IMAGE_SIZE}, "
        "as they are or one mirrored left-right",
        "near_duplicate_pairs": len(pairs),
        "distinct_images_with_a_near_duplicate": len(np.unique(pairs)),
        "near_duplicates_removed": len(distinct) - len(kept),
        "kept_images": len(kept),
    }
    return kept, stats


@lru_cache(maxsize=2)
def animal_split(cache_dir: str | None = None, seed: int = SPLIT_SEED) -> AnimalSplit:
    """The split every model, baseline and test of Animal-Shape uses (fetches the wheel once)."""
    from sklearn.model_selection import train_test_split

    images_source, labels = read_wheel(fetch_wheel(cache_dir))
    images = to_model_size(images_source)
    kept, stats = deduplicate(images_source, images)
    train, heldout = train_test_split(kept, test_size=TEST_SIZE, random_state=seed, stratify=labels[kept])
    stats.update(
        {
            "split_seed": seed,
            "train_images": len(train),
            "heldout_images": len(heldout),
            "train_per_class": np.bincount(labels[train], minlength=len(CLASS_NAMES)).tolist(),
            "heldout_per_class": np.bincount(labels[heldout], minlength=len(CLASS_NAMES)).tolist(),
            # The polarity rule's background, on the originals: 0 means every image is bright on dark.
            "images_with_bright_border": int((border_medians(images_source) > 127).sum()),
        }
    )
    return AnimalSplit(images_source, images, labels, np.asarray(train), np.asarray(heldout), stats)


def write_heldout(split: AnimalSplit, path: str | Path = HELDOUT_FILE) -> Path:
    """The held-out split as the compressed npz `fastgen.builtin.animals_data.load_heldout` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    index = split.heldout_index
    np.savez_compressed(
        path,
        images_16=split.images[index],
        images_28=split.images_source[index],
        labels=split.labels[index].astype(np.uint8),
        source_index=index.astype(np.int16),
    )
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=None, help=f"where the wheel is kept (default {DEFAULT_CACHE_DIR})")
    parser.add_argument("--wheel", type=Path, default=None, help="use this copy of the wheel (checked) instead")
    parser.add_argument("--out", type=Path, default=HELDOUT_FILE, help="held-out npz to write")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for the resizing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.wheel is not None:
        folder = cache_dir_or_default(args.cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / WHEEL_FILE).is_file():
            shutil.copyfile(check_wheel(args.wheel), folder / WHEEL_FILE)
    split = animal_split(args.cache_dir)
    print(json.dumps(split.stats, indent=2))
    path = write_heldout(split, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
