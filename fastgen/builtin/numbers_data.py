"""Handwritten three-digit numbers 000-999 composed from the scikit-learn digits.

An image is three 8x8 digits side by side: uint8 [8, 24], ink bright on a dark background
(pixels `round(v * 255 / 16)`, as `builtin:digits`). Number `n` is written with its hundreds,
tens and units digit from left to right (7 is `0 0 7`), and its class name is the three digit
words, `"zero zero seven"`; prompts are `"a handwritten number zero zero seven"`, so every digit
is its own CLIP token.

Digit images come from the fixed split of `fastgen.builtin.digits_data.digits_split` (the same
as `builtin:digits`): training compositions draw only from its training part, the held-out
generator `heldout_numbers` only from its held-out part, so no held-out digit image is ever
seen in training. Both are seeded generators, not files.

Parent prompts replace the digits not yet known by the word `any`: `"four any any"` (hundreds
known) and `"four two any"` (hundreds and tens known); see `parent_name`.
"""

from __future__ import annotations

import numpy as np

from fastgen.builtin.digits_data import CLASS_NAMES as DIGIT_WORDS
from fastgen.builtin.digits_data import SPLIT_SEED, TEST_SIZE, load_digit_images

TEMPLATE = "a handwritten number {}"
ANY = "any"
N_DIGITS = 3
N_CLASSES = 10**N_DIGITS
DIGIT_SIZE = 8
HEIGHT, WIDTH = DIGIT_SIZE, DIGIT_SIZE * N_DIGITS
HELDOUT_SEED = 0
POSITIONS = ("hundreds", "tens", "units")


def digits_of(number: int | np.ndarray) -> np.ndarray:
    """Number(s) 0..999 -> their digits [..., 3], hundreds first."""
    number = np.asarray(number, dtype=np.int64)
    if (number < 0).any() or (number >= N_CLASSES).any():
        raise ValueError(f"numbers must be in 0..{N_CLASSES - 1}")
    return np.stack([number // 100, number // 10 % 10, number % 10], axis=-1)


def class_name(number: int) -> str:
    """7 -> "zero zero seven"."""
    return " ".join(DIGIT_WORDS[d] for d in digits_of(number))


def class_names() -> list[str]:
    """The 1,000 class names; class index == the number."""
    return [class_name(n) for n in range(N_CLASSES)]


def parent_name(digits: tuple[int, ...] | list[int]) -> str:
    """Known leading digits -> a (partial) class name: (4,) -> "four any any"."""
    if not 0 <= len(digits) <= N_DIGITS:
        raise ValueError(f"expected at most {N_DIGITS} digits, got {digits!r}")
    words = [DIGIT_WORDS[int(d)] for d in digits] + [ANY] * (N_DIGITS - len(digits))
    return " ".join(words)


def prompts() -> list[str]:
    """One prompt per class, in number order."""
    return [TEMPLATE.format(name) for name in class_names()]


def split_indices(seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices into `load_digit_images()`: the partition of `digits_split`.

    `digits_split(seed)` returns exactly `images[train]`, `images[heldout]` (same stratified
    shuffle of the same labels); the indices let tests check that the two never overlap.
    """
    from sklearn.model_selection import train_test_split

    _, labels = load_digit_images()
    train, heldout = train_test_split(np.arange(len(labels)), test_size=TEST_SIZE, random_state=seed, stratify=labels)
    return train, heldout


class DigitPool:
    """Digit images of one part of the split, grouped by digit, to compose numbers from."""

    def __init__(self, part: str, split_seed: int = SPLIT_SEED):
        if part not in ("train", "heldout"):
            raise ValueError(f"part must be 'train' or 'heldout', got {part!r}")
        images, labels = load_digit_images()
        train, heldout = split_indices(split_seed)
        self.part = part
        self.indices = train if part == "train" else heldout  # into load_digit_images()
        self.images = images[self.indices]  # uint8 [M, 8, 8]
        self.labels = labels[self.indices]
        self.by_digit = [np.flatnonzero(self.labels == d) for d in range(10)]  # into self.images

    def draw(self, numbers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Positions into `self.images` [n, 3]: a random image of each digit of each number."""
        digits = digits_of(numbers)
        # One uniform draw per (image, position) in order, so a prefix of the numbers gets the
        # same picks whatever follows it.
        u = rng.random(digits.shape)
        picks = np.empty(digits.shape, dtype=np.int64)
        for d in range(10):
            where = digits == d
            pool = self.by_digit[d]
            picks[where] = pool[np.minimum((u[where] * len(pool)).astype(np.int64), len(pool) - 1)]
        return picks

    def compose(self, picks: np.ndarray) -> np.ndarray:
        """uint8 [n, 8, 24]: the picked digit images side by side."""
        parts = self.images[picks]  # [n, 3, 8, 8]
        return np.ascontiguousarray(parts.transpose(0, 2, 1, 3).reshape(len(picks), HEIGHT, WIDTH))


def heldout_numbers(
    n: int = N_CLASSES, seed: int = HELDOUT_SEED, *, split_seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """The held-out test set: (images uint8 [n, 8, 24], labels int64 [n]).

    Image i shows number `i % 1000` (so any 1,000 consecutive images hold every number once);
    each of its digits is a random held-out image of that digit, drawn from `seed`. The first k
    images of `heldout_numbers(n)` are `heldout_numbers(k)` for every k <= n.
    """
    labels = np.arange(n, dtype=np.int64) % N_CLASSES
    pool = DigitPool("heldout", split_seed)
    picks = pool.draw(labels, np.random.default_rng(seed)) if n else np.zeros((0, 3), np.int64)
    return pool.compose(picks), labels


def training_numbers(
    n: int, rng: np.random.Generator, *, pool: DigitPool | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n training compositions of uniformly random numbers: (images uint8 [n, 8, 24], labels
    int64 [n], picks [n, 3] = positions into the training pool's images). Training split only."""
    pool = pool or DigitPool("train")
    if pool.part != "train":
        raise ValueError("training compositions must come from the training pool")
    labels = rng.integers(0, N_CLASSES, size=n)
    picks = pool.draw(labels, rng)
    return pool.compose(picks), labels, picks
