"""The results directory a Ray job writes: its header, then part files of records.

    results/
      header.json                          the job's header, as a results file starts with it
      part-00001-3f9a0c1d2e4b5a69.jsonl    a header line, then one record per line
      part-00001-77c2d0e1a9b4f310.parquet  or the same as Parquet (header in the schema metadata)
      part-00002-...                       parts of a later run (a resume, --retry-failed)

A part holds the records of one input block. Its name is the run's number and a hash of the
block's ids, so a task that Ray retries writes the same name and replaces its own part instead
of adding a second copy. A part is written under a temporary name (`.tmp-PID@HOST-...`, naming
the process that writes it) and renamed when complete: a reader sees whole parts or none. Parts
are read in name order, so when an image has records in several parts the one of the latest run
counts, as the latest line of a results file does. Every part starts with the header it was
written under, so a part of a forced resume with other settings stays self-describing. A part
that cannot be read (a Parquet part cut short, a disk error) raises `DamagedPart` when read;
readers skip it and say so, and nothing here ever deletes or rewrites it.

This module knows the layout and the two part formats; it reads and writes plain objects and
leaves what a header or a record is to `fastgen.jobs.results_file`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fastgen.optional import require

HEADER_NAME = "header.json"
PART_FORMATS = ("jsonl", "parquet")
_PART_NAME = re.compile(r"^part-(\d{5,})-([0-9a-f]{16})\.(jsonl|parquet)$")
_TEMP_PREFIX = ".tmp-"
# A temporary part's name: `.tmp-PID@HOST-UUID-NAME`, naming the process writing it.
_TEMP_NAME = re.compile(r"^\.tmp-(\d+)@(.*?)-[0-9a-f]{32}-")
# A temporary part whose writer cannot be checked (it ran on another machine) is left alone while
# it changed this recently: writing a part takes seconds.
_FOREIGN_TEMP_AGE_S = 3600
_PARQUET_HEADER_KEY = b"fastgen_header"
# Typed Parquet columns of a record; any other field of a record goes into `extra` as JSON.
_MAP_FIELDS = ("scores", "partial_scores", "probabilities")
_SCALAR_FIELDS = ("path", "prediction", "error", "unet_evals")


def header_path(folder: Path) -> Path:
    return folder / HEADER_NAME


def is_results_dir(folder: Path) -> bool:
    """A folder a Ray job wrote: it holds a header or at least one part."""
    return folder.is_dir() and (header_path(folder).is_file() or bool(list_parts(folder)))


def check_results_path(path: Path) -> None:
    """Refuse a path that is neither a results file nor a results directory."""
    if path.is_file() or is_results_dir(path):
        return
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder without {HEADER_NAME} or part files: no results folder of fastgen classify --ray"
        )
    raise ValueError(f"results file {path} does not exist")


def read_dir_header(folder: Path) -> dict[str, Any] | None:
    path = header_path(folder)
    if not path.is_file():
        return None
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); restore it, or choose another --out folder") from None
    return header if isinstance(header, dict) else None


def write_dir_header(folder: Path, header: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(header_path(folder), (json.dumps(header, allow_nan=False) + "\n").encode())


def list_parts(folder: Path) -> list[Path]:
    """The complete parts of `folder` in reading order (run number, then name)."""
    found = [p for p in folder.iterdir() if _PART_NAME.match(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: (int(_PART_NAME.match(p.name)[1]), p.name))


def foreign_entries(folder: Path) -> list[str]:
    """Names in `folder` that a results directory does not hold (a user's files)."""
    ours = (HEADER_NAME,)
    return sorted(
        p.name for p in folder.iterdir() if p.name not in ours and not _PART_NAME.match(p.name) and not _is_temp(p)
    )


class DamagedPart(Exception):
    """A part file that cannot be read to its end; the message names it and says what is wrong."""


def remove_temporary_parts(folder: Path) -> int:
    """Delete parts a killed task left half-written (they were never renamed, so never read),
    never one that a live process is still writing (`_abandoned`). The caller holds the folder's
    lock, so no other run that honours it writes here."""
    removed = 0
    for path in folder.iterdir() if folder.is_dir() else ():
        if _is_temp(path) and _abandoned(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _abandoned(temporary: Path) -> bool:
    """Whether nothing writes `temporary` any more: its writer ran on this machine and has ended;
    when that cannot be checked (its writer ran on another machine), it has not changed for an
    hour. A name without its writer is an older fastgen's, which no run of this one writes."""
    owner = _TEMP_NAME.match(temporary.name)
    if owner is None:
        return True
    if owner[2] == socket.gethostname():
        return not _process_alive(int(owner[1]))
    try:
        age = time.time() - temporary.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > _FOREIGN_TEMP_AGE_S


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def next_run_number(folder: Path) -> int:
    """One past the highest run number of the parts in `folder`: a new run's parts sort last."""
    numbers = [int(_PART_NAME.match(p.name)[1]) for p in list_parts(folder)]
    return max(numbers, default=0) + 1


def part_name(run: int, ids: Iterable[str], out_format: str) -> str:
    """The part of the block holding `ids` in run `run`: the same ids give the same name."""
    check_format(out_format)
    digest = hashlib.blake2b(digest_size=8)
    for identifier in ids:
        digest.update(identifier.encode("utf-8", errors="surrogatepass") + b"\0")
    return f"part-{run:05d}-{digest.hexdigest()}.{out_format}"


def check_format(out_format: str) -> None:
    if out_format not in PART_FORMATS:
        raise ValueError(f"out_format must be one of {', '.join(PART_FORMATS)}, got {out_format!r}")


# -- writing and reading one part --------------------------------------------------------------
def write_part(folder: Path, name: str, header: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    """Write one part, complete or not at all (temporary name, fsync, rename); a part of the
    same name is replaced."""
    path = folder / name
    if name.endswith(".parquet"):
        _write_parquet_atomically(path, header, records)
    else:
        lines = [json.dumps(obj, allow_nan=False) + "\n" for obj in (header, *records)]
        _write_atomically(path, "".join(lines).encode("utf-8"))
    return path


def read_part_objects(path: Path) -> Iterator[Any]:
    """A part's header, then its records, as parsed objects (None for a line that is not JSON).
    A part that cannot be read to its end raises `DamagedPart` after the objects read before the
    damage."""
    if path.suffix == ".parquet":
        yield from _parquet_objects(path)
        return
    try:
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    yield _parse(line)
    except OSError as error:
        raise DamagedPart(f"part file {path} cannot be read ({error})") from None


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def _is_temp(path: Path) -> bool:
    return path.name.startswith(_TEMP_PREFIX)


def _temporary_twin(path: Path) -> Path:
    """The name `path` is written under until complete; it names this process, so that a run
    starting meanwhile leaves it alone (`remove_temporary_parts`)."""
    return path.with_name(f"{_TEMP_PREFIX}{os.getpid()}@{socket.gethostname()}-{uuid.uuid4().hex}-{path.name}")


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = _temporary_twin(path)
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename durable: without it a crash may forget the new name."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- Parquet parts ---------------------------------------------------------------------------------
def _parquet_schema(pa, header: dict[str, Any]):
    scores = pa.map_(pa.string(), pa.float64())
    fields = [
        pa.field("path", pa.string(), nullable=False),
        pa.field("prediction", pa.string()),
        pa.field("error", pa.string()),
        pa.field("unet_evals", pa.int64()),
        *(pa.field(name, scores) for name in _MAP_FIELDS),
        pa.field("extra", pa.string()),  # any other field of a record, as JSON
    ]
    return pa.schema(fields, metadata={_PARQUET_HEADER_KEY: json.dumps(header, allow_nan=False).encode()})


def _parquet_row(record: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {name: record.get(name) for name in _SCALAR_FIELDS}
    for name in _MAP_FIELDS:
        row[name] = list(record[name].items()) if isinstance(record.get(name), dict) else None
    extra = {k: v for k, v in record.items() if k not in _SCALAR_FIELDS and k not in _MAP_FIELDS}
    row["extra"] = json.dumps(extra, allow_nan=False) if extra else None
    return row


def _record_of_row(row: dict[str, Any]) -> dict[str, Any]:
    """The record a row was made from: fields that were absent stay absent (an error record has
    only `path` and `error`, as in a JSON part)."""
    record: dict[str, Any] = {"path": row["path"]}
    if row["error"] is not None:
        record["error"] = row["error"]
    else:
        record["prediction"] = row["prediction"]
    for name in ("scores", "unet_evals", "partial_scores", "probabilities"):
        if row[name] is not None:
            record[name] = dict(row[name]) if name in _MAP_FIELDS else row[name]
    if row["extra"]:
        record.update(json.loads(row["extra"]))
    return record


def _write_parquet_atomically(path: Path, header: dict[str, Any], records: list[dict[str, Any]]) -> None:
    pa = require("pyarrow", extra="ray", purpose="Parquet parts")
    pq = require("pyarrow.parquet", extra="ray", purpose="Parquet parts")
    schema = _parquet_schema(pa, header)
    table = pa.Table.from_pylist([_parquet_row(r) for r in records], schema=schema)
    temporary = _temporary_twin(path)
    try:
        pq.write_table(table, temporary)
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _sync_folder(path.parent)


def _parquet_objects(path: Path) -> Iterator[Any]:
    pa = require("pyarrow", extra="ray", purpose="Parquet parts")
    pq = require("pyarrow.parquet", extra="ray", purpose="Parquet parts")
    try:
        with pq.ParquetFile(path) as parquet:
            metadata = parquet.schema_arrow.metadata or {}
            if _PARQUET_HEADER_KEY in metadata:
                yield _parse(metadata[_PARQUET_HEADER_KEY])
            for batch in parquet.iter_batches():
                for row in batch.to_pylist():
                    yield _record_of_row(row)
    except (pa.ArrowException, OSError, KeyError, ValueError) as error:  # KeyError: a column a part must have
        what = f"{type(error).__name__}: {error}"
        raise DamagedPart(f"part file {path} is not a readable Parquet part ({what})") from None
