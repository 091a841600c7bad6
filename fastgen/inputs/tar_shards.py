"""WebDataset tar shards as input sources: members grouped by sample key, one item per key with
an image member, its label from ``KEY.cls`` or ``KEY.json``. A damaged member header is skipped to
the next readable one and reported as one item; a cut shard yields what it holds, then one item
saying so (`fastgen.inputs.sources` describes ids and errors)."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from fastgen.inputs.images import IMAGE_SUFFIXES
from fastgen.inputs.items import TRUNCATED, Item, Wanted, everything

# Member extensions that hold a sample's image, and fields of KEY.json that hold its label.
TAR_IMAGE_EXTENSIONS = tuple(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
TAR_LABEL_FIELDS = ("label", "class", "cls")


def split_key(member_name: str) -> tuple[str, str]:
    """WebDataset's (key, extension): the name up to the first dot of its last part, the rest."""
    folder, _, base = member_name.rpartition("/")
    stem, dot, extension = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key.removeprefix("./"), extension.lower() if dot else ""


def label_of_json(data: bytes) -> str | None:
    """The "label", "class" or "cls" field of a JSON member; None when it has none."""
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    for name in TAR_LABEL_FIELDS:
        if obj.get(name) is not None:
            return str(obj[name])
    return None


def label_of_member(extension: str, data: bytes) -> str | None:
    if extension == "cls":
        text = data.decode("utf-8", errors="replace").strip()
        return text or None
    return label_of_json(data)


@dataclass
class _Sample:
    """The members of one tar key: its image member and its label members (read lazily)."""

    key: str
    image: tarfile.TarInfo | None = None
    labels: list[tuple[str, tarfile.TarInfo]] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    damage: _Damage | None = None  # a stretch of unreadable bytes instead of a sample


@dataclass
class TarSource:
    """A WebDataset shard: members grouped by key; each key with an image member is one item."""

    name: str  # the shard's absolute path

    def items(self, wanted: Wanted | None = None) -> Iterator[Item]:
        wanted = wanted or everything
        reading = _TarReading(self.name)
        try:
            # ignore_zeros: past a header it cannot read, tarfile looks for the next one instead
            # of ending quietly; `_members` reports the blocks it skipped.
            with tarfile.open(self.name, mode="r:", ignore_zeros=True) as tar:
                for sample in self._samples(tar, reading):
                    item = self._item(tar, sample, wanted)
                    if item is not None:
                        yield item
                reading.problem = reading.problem or self._unfinished(reading.end)
        except (tarfile.TarError, OSError, EOFError) as error:
            reading.problem = f"{type(error).__name__}: {error}"
        if reading.problem is not None:
            yield from self._truncated(reading, wanted)

    @staticmethod
    def _samples(tar: tarfile.TarFile, reading: _TarReading) -> Iterator[_Sample]:
        """Samples in shard order (a key's members are consecutive in a WebDataset shard), and a
        sample without key for each damaged stretch; the sample being read when the shard turns
        out cut short is still given."""
        sample: _Sample | None = None
        for member in _members(tar, reading):
            damaged = isinstance(member, _Damage)
            key, extension = ("", "") if damaged else split_key(member.name)
            if sample is not None and (damaged or key != sample.key):
                reading.samples += 1
                yield sample
                sample = None
            if damaged:
                yield _Sample("", damage=member)
                continue
            sample = sample or _Sample(key)
            if extension in TAR_IMAGE_EXTENSIONS and sample.image is None:
                sample.image = member
            elif extension in ("cls", "json"):
                sample.labels.append((extension, member))
            else:
                sample.others.append(extension)
        if sample is not None:
            reading.samples += 1
            yield sample

    def _item(self, tar: tarfile.TarFile, sample: _Sample, wanted: Wanted) -> Item | None:
        if sample.damage is not None:
            return self._damaged(sample.damage, wanted)
        item_id = f"{self.name}#{sample.key}"
        label = self._label(tar, sample)
        if not wanted(item_id, label):
            return None
        if sample.image is None:
            found = ", ".join(f".{e}" for e in [*(e for e, _ in sample.labels), *sample.others]) or "nothing"
            return Item(item_id, None, label, f"tar sample {item_id!r} has no image member (found {found})")
        data = _member_bytes(tar, sample.image)
        if data is None:
            return Item(item_id, None, label, f"tar member {sample.image.name!r} of {self.name} is cut short")
        return Item(item_id, data, label)

    def _damaged(self, damage: _Damage, wanted: Wanted) -> Item | None:
        item_id = f"{self.name}#<damaged-at-{damage.start}>"
        if not wanted(item_id, None):
            return None
        return Item(
            item_id, None, None,
            f"tar shard {self.name}: bytes {damage.start} to {damage.end} hold no readable tar header (a damaged "
            "member, whose sample is missing or incomplete); reading went on with the next member",
        )  # fmt: skip

    @staticmethod
    def _label(tar: tarfile.TarFile, sample: _Sample) -> str | None:
        for extension, member in sample.labels:
            data = _member_bytes(tar, member)
            label = label_of_member(extension, data) if data is not None else None
            if label is not None:
                return label
        return None

    def _unfinished(self, end: int) -> str | None:
        """Why the shard does not end as a tar file does, or None when it is whole: what follows
        its last member must be the zero blocks of the end-of-archive marker."""
        size = os.path.getsize(self.name)
        if end >= size:
            return f"it ends at byte {size} without the end-of-archive marker"
        if not _all_zeros(self.name, end, size):
            return f"bytes {end} to {size} after its last member hold no readable tar header"
        return None

    def _truncated(self, reading: _TarReading, wanted: Wanted) -> Iterator[Item]:
        item_id = f"{self.name}#{TRUNCATED}"
        if wanted(item_id, None):
            yield Item(
                item_id, None, None,
                f"tar shard {self.name} is truncated or damaged ({reading.problem}); samples read before "
                f"that: {reading.samples}, the rest of the shard is lost; re-create or re-download the shard",
            )  # fmt: skip


@dataclass(frozen=True)
class _Damage:
    """Bytes of a shard that tarfile skipped, looking for its next readable header."""

    start: int
    end: int


@dataclass
class _TarReading:
    name: str  # the shard's path
    samples: int = 0  # samples found so far
    end: int = 0  # the byte after the last member read
    problem: str | None = None  # why the shard ended early


def _members(tar: tarfile.TarFile, reading: _TarReading) -> Iterator[tarfile.TarInfo | _Damage]:
    """The shard's file members, and a `_Damage` before a member found past skipped bytes that
    are not zeros; a read error ends them and is kept in `reading`."""
    members = iter(tar)
    while True:
        try:
            member = next(members)
        except StopIteration:
            return
        except (tarfile.TarError, OSError, EOFError) as error:
            reading.problem = f"{type(error).__name__}: {error}"
            return
        if member.offset > reading.end and not _all_zeros(reading.name, reading.end, member.offset):
            yield _Damage(reading.end, member.offset)
        reading.end = tar.offset
        if member.isfile():
            yield member


def _all_zeros(path: str, start: int, end: int) -> bool:
    with open(path, "rb") as handle:
        handle.seek(start)
        while start < end:
            block = handle.read(min(end - start, 1 << 20))
            if not block:
                return True
            if block.strip(b"\0"):
                return False
            start += len(block)
    return True


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | None:
    """A member's data; None when the shard ends inside it."""
    try:
        handle = tar.extractfile(member)
        data = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError):
        return None
    return data if len(data) == member.size else None
