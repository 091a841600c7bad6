"""Parquet files and Hugging Face datasets saved with `save_to_disk` as input sources: one item
per row, the image's encoded bytes from a binary column (or an Image feature's struct), optional id
and label columns. pyarrow and datasets are imported only when such an input is read."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastgen.inputs.items import TRUNCATED, UNREADABLE, Item, Wanted, broken_item, everything

# Rows of a Parquet file or a dataset read at a time: small enough that a batch of images is a
# few MB, large enough that the per-batch cost vanishes.
ROWS_PER_BATCH = 256
# A Parquet batch holds at most about this many bytes of its columns: rows of large images come
# fewer at a time, so what a batch holds does not grow with the images' size.
BATCH_BYTES = 8 << 20
# Parquet pages are read through a buffer of this size instead of whole column chunks at once.
READ_BUFFER_BYTES = 1 << 20


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
        """The rows, read as a stream: one bounded batch of the needed columns at a time, so memory
        does not grow with the file (`open_parquet`, `parquet_batches`)."""
        wanted = wanted or everything
        pa = _import_pyarrow()
        try:
            parquet = open_parquet(self.name)
        except (pa.ArrowException, OSError) as error:
            yield from self._unreadable(error, wanted)
            return
        with parquet:
            try:
                columns = self.columns(parquet.schema_arrow)
            except ValueError as error:
                yield from self._unreadable(error, wanted)
                return
            reader = _TableReader(self.name, columns)
            try:
                yield from reader.rows(parquet_batches(parquet, columns), wanted)
            except (pa.ArrowException, OSError) as error:
                rest = f"is damaged after {reader.rows_read} rows ({error}); the rest is lost"
                yield from broken_item(self.name, TRUNCATED, f"Parquet file {self.name} {rest}", wanted)

    def _unreadable(self, error: Exception, wanted: Wanted) -> Iterator[Item]:
        yield from broken_item(self.name, UNREADABLE, f"Parquet file {self.name} cannot be read ({error})", wanted)


def open_parquet(path: str):
    """A Parquet file opened for streaming: without pre-buffering (which reads a row group's whole
    column chunks into memory before the first row: a file written as one row group would be read
    whole) and with pages read through a small buffer."""
    pa = _import_pyarrow()
    return pa.parquet.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)


def parquet_batches(parquet, columns: Columns) -> Iterator[Any]:
    """The record batches of the columns `columns` names, row group after row group, each of at
    most `batch_rows` rows, read on the calling thread (the image column is all the work: a
    thread per column gains nothing)."""
    names = list(dict.fromkeys(c for c in (columns.image, columns.id, columns.label) if c))
    rows = batch_rows(parquet.metadata, names)
    return parquet.iter_batches(batch_size=rows, columns=names, use_threads=False)


def batch_rows(metadata, names: list[str]) -> int:
    """Rows per batch: `ROWS_PER_BATCH`, or fewer when the columns `names` hold more than
    `BATCH_BYTES` in that many rows of the file's widest row group (large images)."""
    bytes_per_row = 0.0
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        if group.num_rows == 0:
            continue
        size = sum(
            group.column(c).total_uncompressed_size
            for c in range(group.num_columns)
            if group.column(c).path_in_schema.split(".")[0] in names
        )
        bytes_per_row = max(bytes_per_row, size / group.num_rows)
    if bytes_per_row == 0:
        return ROWS_PER_BATCH
    return max(1, min(ROWS_PER_BATCH, int(BATCH_BYTES // bytes_per_row)))


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
        wanted = wanted or everything
        datasets = _import_datasets()
        try:
            dataset = datasets.load_from_disk(self.name)
            columns = self.columns(dataset.features, dataset.data.schema)
        except Exception as error:  # whatever a damaged folder makes datasets raise
            message = f"saved dataset {self.name} cannot be read ({type(error).__name__}: {error})"
            yield from broken_item(self.name, UNREADABLE, message, wanted)
            return
        reader = _TableReader(self.name, columns)
        try:
            yield from reader.rows(dataset.with_format("arrow").iter(batch_size=ROWS_PER_BATCH), wanted)
        except Exception as error:  # a damaged data file, whatever datasets and pyarrow raise for it
            message = f"saved dataset {self.name} is damaged after {reader.rows_read} rows ({error}); the rest is lost"
            yield from broken_item(self.name, TRUNCATED, message, wanted)

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
