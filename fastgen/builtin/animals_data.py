"""Animal-Shape silhouettes for `builtin:animals`: what the installed package reads, offline.

Animal-Shape (the `animal-mnist` wheel on PyPI, MIT licence) holds 10,000 28x28 grayscale
silhouettes of ten animals, 1,000 each, stored bright (255) on a black (0) background; only the
zebras carry texture (their stripes). `training/animals_data.py` at the repository root fetches it,
removes exact and near duplicates and splits it 75/25 by class; the held-out quarter ships here as
`animals/heldout.npz`, at the model's 16x16 and at the original 28x28, so that the demo, the
tests and any evaluation read the very images the model never saw, without the wheel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fastgen.builtin import BUILTIN_DIR

CLASS_NAMES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
TEMPLATE = "a silhouette of a {}"
IMAGE_SIZE = 16  # the model's resolution
SOURCE_SIZE = 28  # the data's
SPLIT_SEED = 0
TEST_SIZE = 0.25
HELDOUT_FILE = BUILTIN_DIR / "animals" / "heldout.npz"
# What the model expects, as its fastgen.json states it (with "polarity": "bright-on-dark").
INPUT_DESCRIPTION = (
    "a 16x16 grayscale animal silhouette, bright (255) on a black (0) background, as Animal-Shape "
    "stores its 28x28 images; other sizes are resized on their shorter side and center-cropped to "
    "16x16 (an Animal-Shape original becomes the training image), and with invert='auto' (the "
    "default) an image whose border is mostly bright (a dark animal on white) is inverted first"
)


@dataclass(frozen=True)
class HeldOut:
    """The held-out split, in the split's own (shuffled, class-mixed) order."""

    images: np.ndarray  # uint8 [n, 16, 16]: what the model sees
    images_source: np.ndarray  # uint8 [n, 28, 28]: the originals
    labels: np.ndarray  # int64 [n], indices into CLASS_NAMES
    source_index: np.ndarray  # int64 [n]: positions in the wheel's 10,000 images

    def __len__(self) -> int:
        return len(self.labels)


def prompts() -> list[str]:
    """One prompt per class, in label order."""
    return [TEMPLATE.format(name) for name in CLASS_NAMES]


@lru_cache(maxsize=4)
def _read(path: str) -> HeldOut:
    with np.load(path) as data:
        return HeldOut(
            images=data["images_16"],
            images_source=data["images_28"],
            labels=data["labels"].astype(np.int64),
            source_index=data["source_index"].astype(np.int64),
        )


def load_heldout(path: str | Path = HELDOUT_FILE) -> HeldOut:
    """The shipped held-out split (read once per path; treat the arrays as read-only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; write it with `python -m training.animals_data` from the repository root"
        )
    return _read(str(path.resolve()))
