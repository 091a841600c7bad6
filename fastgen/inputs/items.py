"""An input source's unit: `Item`, one image not yet decoded, and the `Source` protocol every
kind of input implements (`fastgen.inputs.sources` lists them and opens inputs)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Ids of the one item that reports a source (or its rest) as unreadable: ``SOURCE#<truncated>``.
TRUNCATED = "<truncated>"
UNREADABLE = "<unreadable>"
# The keys of error items about a source itself rather than one of its images: the two above, and
# a tar shard's ``<damaged-at-BYTE>``.
_SOURCE_ERROR_KEY = re.compile(r"<(truncated|unreadable|damaged-at-\d+)>")

# `wanted(id, label)` is asked before an item's payload is read; False skips the item (no payload
# is read, nothing is yielded). Jobs use it to leave out finished items and other ranks' items.
Wanted = Callable[[str, "str | None"], bool]


@dataclass(frozen=True)
class Item:
    """One image of a source, not yet decoded."""

    id: str
    payload: bytes | Path | None  # encoded image bytes, or a file path; None when reading failed
    label: str | None = None  # class name (or class index, as text) from the source when it has one
    error: str | None = None  # why the item could not be read, one line


class Source(Protocol):
    name: str  # stable and unique per source: an absolute path

    def items(self, wanted: Wanted | None = None) -> Iterator[Item]: ...


def everything(item_id: str, label: str | None) -> bool:
    """The `wanted` test that keeps every item."""
    return True


def absolute(path: str | Path) -> str:
    """The absolute, normalised form of a path, as results files record paths."""
    return os.path.abspath(str(path))


def source_of_error(item_id: str) -> str | None:
    """The source named by an id of an error item about the source itself (``SOURCE#<truncated>``,
    ``SOURCE#<unreadable>``, ``SOURCE#<damaged-at-BYTE>``); None for any other id."""
    name, sep, key = item_id.rpartition("#")
    return name if sep and _SOURCE_ERROR_KEY.fullmatch(key) else None


def broken_item(name: str, what: str, message: str, wanted: Wanted) -> Iterator[Item]:
    """The one error item ``NAME#WHAT`` that reports source `name` (or its rest) unreadable."""
    item_id = f"{name}#{what}"
    if wanted(item_id, None):
        yield Item(item_id, None, None, message)
