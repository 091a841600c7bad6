"""Value types for the command line's options, and a parser whose errors are one line.

Each type checks a value as the user typed it, so argparse reports it under the option the user
typed (`argument --batch-size: expected an integer >= 1, got '0'`) rather than under the name of
a Python argument further down."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from fastgen.engine.config import MAX_SEED


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def int_in(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An integer within [minimum, maximum]."""
    expected = f"an integer in {minimum}..{maximum}" if maximum is not None else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        value = _integer(text)
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = int_in(1)
seed_value = int_in(0, MAX_SEED)


def positive_int_list(text: str) -> tuple[int, ...]:
    """A comma list of integers >= 1, such as 50,500."""
    values = [_integer(part) for part in text.split(",")]
    if not values or any(v is None or v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1 separated by commas (such as 50,500), got {text!r}")
    return tuple(values)  # type: ignore[arg-type]


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def error_weights_value(text: str) -> tuple[float, ...]:
    """`none` (every band of timesteps counts the same: (1.0,)) or a comma list of weights >= 0,
    not all 0, such as 0.1,0.5,2."""
    if text.strip().lower() == "none":
        return (1.0,)
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or any(not math.isfinite(v) or v < 0 for v in values) or not any(values):
        raise argparse.ArgumentTypeError(f"expected none or weights >= 0 separated by commas (not all 0), got {text!r}")
    return values


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def open_probability(text: str) -> float:
    """A number strictly between 0 and 1."""
    value = finite_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {text!r}")
    return value


def positive_int_or_all(text: str) -> int | None:
    """A count, or 'all' (None)."""
    if text == "all":
        return None
    value = _integer(text)
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'all', got {text!r}")
    return value


def threads_value(text: str) -> int | str:
    """`auto` or a whole number of threads >= 1."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number of threads >= 1, got {text!r}")
    return value
