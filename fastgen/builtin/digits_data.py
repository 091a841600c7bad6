"""The scikit-learn digits (1,797 8x8 grayscale images of 0-9) as uint8 images.

The split is fixed by a seed, so training and every later evaluation see the same held-out
quarter of the data.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATE = "a handwritten digit {}"
# What the model expects, as its fastgen.json states it (with "polarity": "bright-on-dark").
INPUT_DESCRIPTION = (
    "an 8x8 grayscale handwritten digit, bright ink (255) on a black (0) background, as "
    "scikit-learn stores the digits; other sizes are resized on their shorter side and "
    "center-cropped to 8x8, and with invert='auto' (the default) an image whose border is "
    "mostly bright (dark ink on white paper) is inverted first"
)
SPLIT_SEED = 0
TEST_SIZE = 0.25


def prompts() -> list[str]:
    """One prompt per class, in label order."""
    return [TEMPLATE.format(name) for name in CLASS_NAMES]


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All digits as uint8 [N, 8, 8] (ink bright, 0..255) and int64 labels [N]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images * 255 / 16).astype(np.uint8)
    return images, data.target.astype(np.int64)


def digits_split(
    seed: int = SPLIT_SEED,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels): a stratified 75/25 split."""
    from sklearn.model_selection import train_test_split

    images, labels = load_digit_images()
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=TEST_SIZE, random_state=seed, stratify=labels
    )
    return train_x, train_y, test_x, test_y


def to_pil(img_uint8: np.ndarray) -> Image.Image:
    """An [8, 8] uint8 array as a grayscale ("L") PIL image."""
    array = np.asarray(img_uint8)
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {array.shape}")
    return Image.fromarray(array).convert("L")
