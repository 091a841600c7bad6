"""WebDataset tar shards as input sources: members grouped by sample key, one item per key with
an image member, its label from ``KEY.cls`` or ``KEY.json``. A shard may be gzip-, bzip2- or
xz-compressed (``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``...). A damaged member header is
skipped to the next readable one and reported as one item; a cut shard yields what it holds, then
one item saying so (`fastgen.inputs.sources` describes ids and errors)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fastgen.inputs.images import IMAGE_SUFFIXES
from fastgen.inputs.items import TRUNCATED, Item, Wanted, everything

# Member extensions that hold a sample's image, and fields of KEY.json that hold its label.
TAR_IMAGE_EXTENSIONS = tuple(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
TAR_LABEL_FIELDS = ("label", "class", "cls")
# Names of shards, by compression; each compression is told by its magic bytes when read.
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
_COMPRESSIONS: dict[bytes, Callable[[str], BinaryIO]] = {
    b"\x1f\x8b": gzip.open,
    b"BZh": bz2.open,
    b"\xfd7zXZ\x00": lzma.open,
}
# What reading a damaged shard raises: tarfile's errors, a cut file, a damaged compressed stream.
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


def is_tar_name(path: str | Path) -> bool:
    """A name fastgen reads as a tar shard: ``.tar``, or ``.tar`` compressed as `TAR_SUFFIXES` name."""
    return str(path).lower().endswith(TAR_SUFFIXES)


def is_other_compressed_tar(path: str | Path) -> bool:
    """A ``NAME.tar.EXT`` that fastgen cannot decompress (``.tar.zst``, ``.tar.lz4``...)."""
    return ".tar." in Path(path).name.lower() and not is_tar_name(path)


def split_key(member_name: str) -> tuple[str, str]:
    """WebDataset's (key, extension): the name up to the first dot of its last part, the rest."""
    folder, _, base = member_name.rpartition("/")
    stem, dot, extension = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key.removeprefix("./"), extension.lower() if dot else ""


def is_image_extension(extension: str) -> bool:
    """Whether a member holds an image: its last extension is an image type, as WebDataset
    decoders read it (``left.png`` of ``two.left.png`` is a PNG image)."""
    return extension.rpartition(".")[2] in TAR_IMAGE_EXTENSIONS


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
    """The members of one tar key: its image member and its label members (read lazily, or as
    met in a compressed shard: `data`)."""

    key: str
    image: tarfile.TarInfo | None = None
    labels: list[tuple[str, tarfile.TarInfo]] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    damage: _Damage | None = None  # a stretch of unreadable bytes instead of a sample
    data: dict[int, bytes | None] = field(default_factory=dict)  # member offset -> its bytes, read as met


@dataclass
class TarSource:
    """A WebDataset shard: members grouped by key; each key with an image member is one item."""

    name: str  # the shard's absolute path

    def items(self, wanted: Wanted | None = None) -> Iterator[Item]:
        wanted = wanted or everything
        reading = _TarReading(self.name)
        try:
            stream, reading.in_order = _open_shard(self.name)
            with stream:
                reading.log = _ReadLog(stream)
                # ignore_zeros: past a header it cannot read, tarfile looks for the next one
                # instead of ending quietly; `_members` reports the blocks it skipped.
                with tarfile.open(fileobj=reading.log, mode="r:", ignore_zeros=True) as tar:
                    for sample in self._samples(tar, reading):
                        item = self._item(tar, sample, wanted)
                        if item is not None:
                            yield item
                    reading.problem = reading.problem or self._unfinished(reading)
        except _READ_ERRORS as error:
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
            if is_image_extension(extension) and sample.image is None:
                sample.image = member
            elif extension in ("cls", "json"):
                sample.labels.append((extension, member))
            else:
                sample.others.append(extension)
                continue
            if reading.in_order:
                sample.data[member.offset] = _member_bytes(tar, member)
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
        data = _sample_bytes(tar, sample, sample.image)
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
            data = _sample_bytes(tar, sample, member)
            label = label_of_member(extension, data) if data is not None else None
            if label is not None:
                return label
        return None

    @staticmethod
    def _unfinished(reading: _TarReading) -> str | None:
        """Why the shard does not end as a tar file does, or None when it is whole: what follows
        its last member must be the zero blocks of the end-of-archive marker. tarfile read every
        block up to the end of the stream, looking for a header, so the log knows them."""
        log, end = reading.log, reading.end
        if end >= log.furthest:
            return f"it ends at byte {log.furthest} without the end-of-archive marker"
        if not log.zeros(end, log.furthest):
            return f"bytes {end} to {log.furthest} after its last member hold no readable tar header"
        return None

    def _truncated(self, reading: _TarReading, wanted: Wanted) -> Iterator[Item]:
        item_id = f"{self.name}#{TRUNCATED}"
        if wanted(item_id, None):
            yield Item(
                item_id, None, None,
                f"tar shard {self.name} is truncated or damaged ({reading.problem}); samples read before "
                f"that: {reading.samples}, the rest of the shard is lost; re-create or re-download the shard",
            )  # fmt: skip


def _open_shard(path: str) -> tuple[BinaryIO, bool]:
    """The shard's tar bytes (the file itself, or its decompressed stream, told by magic bytes)
    and whether they are decompressed: such a stream only reads forward cheaply (going back means
    decompressing again from the start), so its members are read as they are met."""
    with open(path, "rb") as handle:
        magic = handle.read(6)
    for prefix, opener in _COMPRESSIONS.items():
        if magic.startswith(prefix):
            return opener(path), True
    return open(path, "rb"), False


class _ReadLog:
    """The shard's stream as tarfile reads it, noting the blocks it read that are not zeros.

    tarfile reads every block it skips while looking for a header, and every block after the
    last member up to the end of the stream, one block at a time; the log tells whether such
    bytes were zeros without reading them again (which, in a compressed shard, would mean
    decompressing it again from its start)."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.furthest = 0  # the byte after the furthest one read: the stream's end once tarfile is done
        self._nonzero: list[tuple[int, int]] = []  # (start, end) of header-sized reads that held a non-zero byte

    def read(self, size: int = -1) -> bytes:
        start = self.stream.tell()
        data = self.stream.read(size)
        self.furthest = max(self.furthest, start + len(data))
        if size == tarfile.BLOCKSIZE and data.count(0) != len(data):
            self._nonzero.append((start, start + len(data)))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()

    def zeros(self, start: int, end: int) -> bool:
        """Whether the blocks read from `start` to `end` were all zeros."""
        return not any(s < end and start < e for s, e in self._nonzero)

    def forget_before(self, offset: int) -> None:
        """Drop what the log knows of bytes before `offset`: nothing asks about them again."""
        self._nonzero = [(s, e) for s, e in self._nonzero if e > offset]


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
    log: _ReadLog | None = None  # the stream as tarfile reads it
    in_order: bool = False  # a compressed stream: each member is read as it is met


def _members(tar: tarfile.TarFile, reading: _TarReading) -> Iterator[tarfile.TarInfo | _Damage]:
    """The shard's file members, and a `_Damage` before a member found past skipped bytes that
    are not zeros; a read error ends them and is kept in `reading`."""
    members = iter(tar)
    while True:
        try:
            member = next(members)
        except StopIteration:
            return
        except _READ_ERRORS as error:
            reading.problem = f"{type(error).__name__}: {error}"
            return
        if member.offset > reading.end and not reading.log.zeros(reading.end, member.offset):
            yield _Damage(reading.end, member.offset)
        reading.end = tar.offset
        reading.log.forget_before(reading.end)
        if member.isfile():
            yield member


def _sample_bytes(tar: tarfile.TarFile, sample: _Sample, member: tarfile.TarInfo) -> bytes | None:
    """A member's data, as read when met or read now; None when the shard ends inside it."""
    if member.offset in sample.data:
        return sample.data[member.offset]
    return _member_bytes(tar, member)


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | None:
    """A member's data; None when the shard ends inside it."""
    try:
        handle = tar.extractfile(member)
        data = handle.read() if handle is not None else b""
    except _READ_ERRORS:
        return None
    return data if len(data) == member.size else None
