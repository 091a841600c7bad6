"""Where a job's images come from: files, lists of files, WebDataset tar shards, Parquet tables and
Hugging Face datasets saved with `save_to_disk`, all read as one stream of `Item`s.

An item is one image, not yet decoded: a stable id, its encoded bytes (or its file path), and the
class name its source gives it, if any. Ids are what results files record and resume by, so they
never depend on the order, the working directory or the machine a job runs in:

* an image file: its absolute, normalised path (as `fastgen.jobs.results_file.path_key` writes it);
* a tar member: ``SHARD_ABSPATH#KEY`` (KEY: the member's path up to the first dot of its name,
  WebDataset's sample key);
* a Parquet row: ``FILE_ABSPATH#ID`` with an id column, else ``FILE_ABSPATH#ROW`` (0-based);
* a saved Hugging Face dataset row: ``DIR_ABSPATH#ID`` or ``DIR_ABSPATH#ROW``.

Results files key records by `path_key(id)` (``os.path.abspath``: an id holding ``//`` or ``..``
is written folded, the same way in every run).

Reading never raises for one bad image: a member or cell that cannot be read becomes an `Item`
whose `error` says why (and whose payload is None); a tar member header that cannot be read is
skipped to the next readable one, with one item ``SHARD#<damaged-at-BYTE>`` saying so; a shard or
file that ends early yields what it could read, then one item with id ``SOURCE#<truncated>`` (or
``#<unreadable>`` when nothing of it could be read) saying so. Decoding the payload is `fastgen.inputs.images`' job, by the same
rules as for files.

Parquet and dataset folders need `pyarrow` (`pip install "fastgen[parquet]"`), saved datasets
`datasets` (`fastgen[datasets]`); both are imported only when such an input is read.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from fastgen.inputs.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, find_images, open_image

log = logging.getLogger(__name__)

# Member extensions that hold a sample's image, and those that hold its label.
TAR_IMAGE_EXTENSIONS = tuple(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
TAR_LABEL_FIELDS = ("label", "class", "cls")
TRUNCATED = "<truncated>"
UNREADABLE = "<unreadable>"
# Rows of a Parquet file or a dataset read at a time: small enough that a batch of images is a
# few MB, large enough that the per-batch cost vanishes.
ROWS_PER_BATCH = 256

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


def _everything(item_id: str, label: str | None) -> bool:
    return True


def absolute(path: str | Path) -> str:
    """The absolute, normalised form of a path, as results files record paths."""
    return os.path.abspath(str(path))


def decode_payload(payload: bytes | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An item's image, upright, decoded by the rules files follow; any failure is an ImageError."""
    return open_image(payload, max_pixels=max_pixels)


def class_label(label: str | None, class_names: Sequence[str]) -> str | None:
    """A source's label as a class name: a name is kept; a class index (``"3"``) names the job's
    class at that position when there is one; anything else is kept as it is."""
    if label is None or label in class_names:
        return label
    text = label.strip()
    if text.isdigit() and int(text) < len(class_names):
        return class_names[int(text)]
    return text


# -- image files ------------------------------------------------------------------------------------
@dataclass
class FileListSource:
    """Image files, in the order given; the payload is the path as named."""

    name: str
    paths: list[Path]

    def items(self, wanted: Wanted | None = None) -> Iterator[Item]:
        wanted = wanted or _everything
        for path in self.paths:
            item_id = absolute(path)
            if wanted(item_id, None):
                yield Item(item_id, Path(path))


def read_path_list(list_file: Path) -> list[Path]:
    """The paths a text file lists, one per line; blank lines and ``#`` comments are ignored, and
    relative paths are taken from the list file's own folder."""
    folder = list_file.parent
    paths = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            paths.append(Path(text) if os.path.isabs(text) else folder / text)
    return paths


# -- WebDataset tar shards --------------------------------------------------------------------------
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
        wanted = wanted or _everything
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


# -- Parquet tables and saved Hugging Face datasets -------------------------------------------------
@dataclass(frozen=True)
class Columns:
    """Which columns of a table hold the image, the id and the label."""

    image: str
    id: str | None = None
    label: str | None = None
    label_names: tuple[str, ...] | None = None  # a ClassLabel's names: integer labels index them


def _import_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ModuleNotFoundError('reading Parquet needs pyarrow: pip install "fastgen[parquet]"') from None
    return pyarrow


def choose_image_column(schema, requested: str | None, where: str) -> str:
    """The requested column, else the first binary column or struct with a "bytes" field (the form
    of Hugging Face's Image feature)."""
    pa = _import_pyarrow()
    names = list(schema.names)
    if requested is not None:
        if requested not in names:
            raise ValueError(f"--image-column {requested!r} is not a column of {where} (columns: {', '.join(names)})")
        return requested
    for column in schema:
        kind = column.type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return column.name
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            return column.name
    raise ValueError(
        f"{where} has no binary column or image struct to read images from (columns: {', '.join(names)}); "
        "name the image-bytes column with --image-column"
    )


def _check_column(option: str, name: str | None, schema, where: str) -> None:
    if name is not None and name not in schema.names:
        raise ValueError(f"{option} {name!r} is not a column of {where} (columns: {', '.join(schema.names)})")


def _cell_payload(cell: Any, column: str, row: int) -> tuple[bytes | Path | None, str | None]:
    """(payload, None), or (None, why) for a cell holding no image bytes."""
    if isinstance(cell, dict):  # an Image feature: {"bytes": ..., "path": ...}
        if cell.get("bytes") is not None:
            cell = cell["bytes"]
        elif cell.get("path") and os.path.isabs(cell["path"]):
            return Path(cell["path"]), None
        else:
            return None, f"row {row}: column {column!r} holds no image bytes"
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell), None
    if cell is None:
        return None, f"row {row}: column {column!r} is null"
    return None, f"row {row}: column {column!r} holds {type(cell).__name__}, not image bytes"


def _label_text(value: Any, names: tuple[str, ...] | None) -> str | None:
    if value is None:
        return None
    if names is not None and isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    return str(value)


@dataclass
class _TableReader:
    """Rows of record batches as items; shared by Parquet files and saved datasets."""

    name: str
    columns: Columns
    rows_read: int = 0

    def rows(self, batches: Iterator[Any], wanted: Wanted) -> Iterator[Item]:
        for batch in batches:
            ids = batch.column(self.columns.id).to_pylist() if self.columns.id else None
            labels = batch.column(self.columns.label).to_pylist() if self.columns.label else None
            images = batch.column(self.columns.image)
            for index in range(batch.num_rows):
                row = self.rows_read
                item_id = f"{self.name}#{ids[index] if ids is not None else row}"
                label = _label_text(labels[index], self.columns.label_names) if labels is not None else None
                if wanted(item_id, label):
                    payload, error = _cell_payload(images[index].as_py(), self.columns.image, row)
                    yield Item(item_id, payload, label, f"{self.name} {error}" if error else None)
                self.rows_read += 1


@dataclass
class ParquetSource:
    """A Parquet file: one item per row."""

    name: str  # the file's absolute path
    image_column: str | None = None
    id_column: str | None = None
    label_column: str | None = None

    def columns(self, schema) -> Columns:
        for option, column in (("--id-column", self.id_column), ("--label-column", self.label_column)):
            _check_column(option, column, schema, self.name)
        image = choose_image_column(schema, self.image_column, self.name)
        return Columns(image, self.id_column, self.label_column)

    def check(self) -> None:
        """Refuse, before any work, options that name no column of the file (or no image column);
        a file that cannot be read is left to `items`, as its own error record."""
        pa = _import_pyarrow()
        try:
            schema = pa.parquet.read_schema(self.name)
        except (pa.ArrowException, OSError):
            return
        self.columns(schema)

    def items(self, wanted: Wanted | None = None) -> Iterator[Item]:
        wanted = wanted or _everything
        pa = _import_pyarrow()
        try:
            table = pa.parquet.ParquetFile(self.name)
            columns = self.columns(table.schema_arrow)
        except (pa.ArrowException, OSError, ValueError) as error:
            yield from _broken(self.name, UNREADABLE, f"Parquet file {self.name} cannot be read ({error})", wanted)
            return
        names = [c for c in (columns.image, columns.id, columns.label) if c]
        reader = _TableReader(self.name, columns)
        try:
            yield from reader.rows(table.iter_batches(batch_size=ROWS_PER_BATCH, columns=names), wanted)
        except (pa.ArrowException, OSError) as error:
            message = f"Parquet file {self.name} is damaged after {reader.rows_read} rows ({error}); the rest is lost"
            yield from _broken(self.name, TRUNCATED, message, wanted)


def _broken(name: str, what: str, message: str, wanted: Wanted) -> Iterator[Item]:
    item_id = f"{name}#{what}"
    if wanted(item_id, None):
        yield Item(item_id, None, None, message)


def is_saved_dataset(folder: Path) -> bool:
    """A folder `datasets.Dataset.save_to_disk` wrote."""
    return (folder / "dataset_info.json").is_file() and (folder / "state.json").is_file()


def is_saved_dataset_dict(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file()


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise ModuleNotFoundError(
            'reading a saved Hugging Face dataset needs datasets: pip install "fastgen[datasets]"'
        ) from None
    return datasets


@dataclass
class SavedDatasetSource:
    """A Hugging Face dataset folder written by `save_to_disk`: one item per row, the image from
    its Image feature (or --image-column), labels from its ClassLabel feature (or --label-column)."""

    name: str  # the folder's absolute path
    image_column: str | None = None
    id_column: str | None = None
    label_column: str | None = None

    def columns(self, features, schema) -> Columns:
        datasets = _import_datasets()
        image = self.image_column
        if image is None:
            image = next((n for n, f in features.items() if isinstance(f, datasets.Image)), None)
        image = choose_image_column(schema, image, self.name)
        label = self.label_column
        if label is None:
            label = next((n for n, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
        _check_column("--id-column", self.id_column, schema, self.name)
        _check_column("--label-column", label, schema, self.name)
        feature = features.get(label) if label else None
        names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        return Columns(image, self.id_column, label, names)

    def items(self, wanted: Wanted | None = None) -> Iterator[Item]:
        wanted = wanted or _everything
        datasets = _import_datasets()
        try:
            dataset = datasets.load_from_disk(self.name)
            columns = self.columns(dataset.features, dataset.data.schema)
        except Exception as error:  # whatever a damaged folder makes datasets raise
            message = f"saved dataset {self.name} cannot be read ({type(error).__name__}: {error})"
            yield from _broken(self.name, UNREADABLE, message, wanted)
            return
        reader = _TableReader(self.name, columns)
        try:
            yield from reader.rows(dataset.with_format("arrow").iter(batch_size=ROWS_PER_BATCH), wanted)
        except Exception as error:  # a damaged data file, whatever datasets and pyarrow raise for it
            message = f"saved dataset {self.name} is damaged after {reader.rows_read} rows ({error}); the rest is lost"
            yield from _broken(self.name, TRUNCATED, message, wanted)

    def check(self) -> None:
        """Refuse, before any work, options that name no column of the dataset (or no image
        column); a folder that cannot be read is left to `items`, as its own error record."""
        datasets = _import_datasets()
        try:
            info = datasets.DatasetInfo.from_directory(self.name)
        except Exception:  # a damaged folder: `items` reports it
            return
        if info.features is not None:
            self.columns(info.features, info.features.arrow_schema)


# -- opening inputs -------------------------------------------------------------------------------------
def _source_kind(path: Path) -> str:
    if path.is_dir():
        if is_saved_dataset(path):
            return "dataset"
        if is_saved_dataset_dict(path):
            return "dataset-dict"
        return "files"
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".tar", ".parquet", ".txt"):
        return suffix.lstrip(".")
    return "files"


def open_sources(
    inputs: Sequence[str | Path],
    *,
    image_column: str | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
) -> list[Source]:
    """Sources for folders, globs and image files (one file-list source, as `find_images` lists
    them), ``.txt`` files of paths, WebDataset ``.tar`` shards, ``.parquet`` files and folders
    written by `save_to_disk` (a DatasetDict's folder gives each split). A glob is expanded first,
    so ``shards/*.tar`` names shards. Sorted by name and de-duplicated: the same inputs give the
    same sources in the same order whatever order they are named in."""
    table_options = {"image_column": image_column, "id_column": id_column, "label_column": label_column}
    files: list[str] = []
    sources: dict[str, Source] = {}
    for entry in _expand_globs(inputs):
        path = Path(entry)
        kind = _source_kind(path)
        name = absolute(path)
        if kind == "files":
            files.append(str(entry))
        elif kind == "txt":
            sources.setdefault(name, FileListSource(name, read_path_list(path)))
        elif kind == "tar":
            sources.setdefault(name, TarSource(name))
        elif kind == "parquet":
            sources.setdefault(name, ParquetSource(name, **table_options))
        elif kind == "dataset":
            sources.setdefault(name, SavedDatasetSource(name, **table_options))
        else:
            for split in _dataset_splits(path):
                sources.setdefault(absolute(split), SavedDatasetSource(absolute(split), **table_options))
    ordered = [sources[name] for name in sorted(sources)]
    check_options(ordered)
    if files:
        ordered.insert(0, FileListSource("<files>", find_images(files)))
    return ordered


def check_options(sources: Sequence[Source]) -> None:
    """Column options are checked on the first Parquet file and the first saved dataset, before
    any work: a misspelt column fails at once (later files with other columns are each an error
    record). A missing pyarrow or datasets is reported here too."""
    for kind in (ParquetSource, SavedDatasetSource):
        first = next((s for s in sources if isinstance(s, kind)), None)
        if first is not None:
            first.check()


def _dataset_splits(folder: Path) -> list[Path]:
    splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
    return [folder / split for split in splits]


def _expand_globs(inputs: Sequence[str | Path]) -> list[str]:
    """Inputs as named, a glob that matches tar, Parquet or list files replaced by its matches
    (other globs are left to `find_images`, which keeps only image files)."""
    import glob

    expanded: list[str] = []
    for entry in inputs:
        text = str(entry)
        if Path(text).exists() or not glob.has_magic(text):
            expanded.append(text)
            continue
        matches = sorted(glob.glob(text, recursive=True))
        special = [m for m in matches if _source_kind(Path(m)) != "files"]
        if not special:
            expanded.append(text)
            continue
        # the other matches as a glob keeps them: folders, and files with an image extension
        expanded += special + [m for m in matches if m not in special and _globbed_image_input(Path(m))]
    return expanded


def _globbed_image_input(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES
