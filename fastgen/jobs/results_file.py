"""The JSON-lines results file: a header, then one object per image, written as images finish.

    {"fastgen": "results", "format": 1, "version": "0.1.0", "model": "builtin:digits", "settings": {...}}
    {"path": "/abs/a.png", "prediction": "seven", "scores": {"zero": 0.41, ...}, "unet_evals": 212}
    {"path": "/abs/b.png", "error": "image file '/abs/b.png' cannot be decoded (...); ..."}

Records hold absolute, normalised paths (`path_key`), so a resume matches them from any working
directory. Files written before that hold paths as typed; see `record_key` for how those resolve.

The file is only ever appended to. Each line is flushed and fsynced as it is written, so a crash
loses at most the line being written. Reading never drops or rewrites a valid record:

* a line in the middle that is not a record (hand edits, a disk error) is reported with its line
  number, left in the file, and ignored: the image it may have described is computed again;
* only an unterminated last line (no newline at the end of the file: a write cut short) is cut,
  and that is the only rewrite; a last line that is a whole record and only lacks its newline
  gets the newline appended instead;
* a file whose first line is not fastgen's (a header or a record) is refused and never touched;
* when a path has several records (`--retry-failed` appends a new one), the latest one counts;
* a retirement line (`{"path": ..., "retired": why}`) withdraws its path's earlier records: a
  source-level error (`SHARD#<truncated>`) that no longer stands once the source reads whole.

A header starts the file and records the settings of the job that wrote it, so a resume can
check that it continues the same job. A header may also appear further down: when a file from
before headers existed is resumed, or a resume is forced with other settings, the new settings are
appended as a header before the records they produce. Files without any header (written before
headers existed) stay readable and resumable.

Files are read line by line, and a job keeps of each record only its `Outcome` (failed or not,
and the prediction), so a job's memory does not grow with the scores of the images it finished.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fastgen.jobs.results_dir import DamagedPart, is_results_dir, list_parts, read_dir_header, read_part_objects
from fastgen.optional import installed_version

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
HEADER_TAG = "results"
# The first bytes of every line fastgen writes (json.dumps keeps key order): an unterminated
# first line that starts like this is an interrupted write of ours; anything else is not ours.
_OUR_LINE_STARTS = (b'{"fastgen": ', b'{"path": ')
_LISTED_BAD_LINES = 10


class ResultsFileError(ValueError):
    """The results file cannot be used: not fastgen's, another job's, or not writable."""


def path_key(path: str | Path) -> str:
    """Paths are written and matched across runs in their absolute, normalised form (`.` and `..`
    folded; symbolic links kept, as the user named the file), whatever form was typed."""
    return os.path.abspath(str(path))


def record_key(path: str, folder: Path) -> str:
    """The path key of a record's `path` in a results file in `folder`.

    Files written before records held absolute paths hold them as typed, relative to the working
    directory of the run that wrote them, which the file does not say. Such a path is taken
    relative to the results file's own folder when that names an existing file (the run wrote its
    output beside its inputs, or was resumed from another directory), else relative to the
    current directory: how such files always resumed."""
    if os.path.isabs(path):
        return path_key(path)
    beside = folder / path
    return path_key(beside) if beside.exists() else path_key(path)


def is_header(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("fastgen") == HEADER_TAG


def is_record(obj: Any) -> bool:
    """One image's outcome: a path and either a prediction or an error."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("path"), str)
        and ("prediction" in obj or "error" in obj)
        and "retired" not in obj
    )


def is_retirement(obj: Any) -> bool:
    """A line that withdraws the earlier records of its path (`retirement_record`)."""
    return isinstance(obj, dict) and isinstance(obj.get("path"), str) and isinstance(obj.get("retired"), str)


def retirement_record(path: str, why: str) -> dict[str, Any]:
    """The line that withdraws `path`'s earlier records: after it, the path has no record, as if
    never written (a source-level error record whose source now reads whole)."""
    return {"path": path, "retired": why}


def is_error(record: dict[str, Any]) -> bool:
    return "error" in record


def results_header(model: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The first line of a results file: what produced the records below it."""
    return {
        "fastgen": HEADER_TAG,
        "format": FORMAT_VERSION,
        "version": installed_version("fastgen"),
        "model": model,
        "settings": settings,
    }


@dataclass(frozen=True)
class Outcome:
    """What a job keeps of an image's latest record: whether it failed, and its prediction."""

    failed: bool
    prediction: str | None = None


@functools.cache
def _shared_outcome(failed: bool, prediction: str | None) -> Outcome:
    return Outcome(failed, prediction)


def outcome_of(record: dict[str, Any]) -> Outcome:
    """The record's `Outcome`, one shared object per (failed, prediction): a set of finished
    images costs its path keys, not a copy of every image's scores."""
    prediction = record.get("prediction")
    return _shared_outcome(is_error(record), prediction if isinstance(prediction, str) else None)


def record_digest(record: dict[str, Any]) -> bytes:
    """A short fingerprint that tells a record from another one of the same path."""
    return hashlib.blake2b(json.dumps(record).encode(), digest_size=16).digest()


def _whole(record: dict[str, Any]) -> dict[str, Any]:
    return record


@dataclass
class ResultsContents:
    """What a results file holds, as read without changing it."""

    header: dict[str, Any] | None = None  # the last header: the settings of the records after it
    records: dict[str, Any] = field(default_factory=dict)  # path key -> what `scan_results` kept of its latest record
    record_lines: int = 0
    bad_lines: list[int] = field(default_factory=list)  # 1-based; kept in the file, ignored
    damaged_parts: list[str] = field(default_factory=list)  # a results directory's unreadable parts: why, each
    cut_from: int | None = None  # byte offset of an unterminated last line that is no record
    missing_newline: bool = False  # the last line is a whole record or header without its "\n"


def _parse_line(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def _refuse_foreign(path: Path, first_line: bytes) -> None:
    preview = first_line[:60].decode("utf-8", errors="replace")
    raise ResultsFileError(
        f"{path} exists and is not a fastgen results file (its first line, {preview!r}, is not a "
        "fastgen header or record); fastgen leaves it untouched. Choose another --out path, or "
        "move that file away"
    )


def _starts_like_ours(complete: list[bytes], tail: bytes) -> bool:
    """A complete first line must be a header or a record; a file that is one unterminated line
    must at least begin the way fastgen's lines begin (a write cut short)."""
    if complete:
        first = _parse_line(complete[0])
        return is_header(first) or is_record(first)
    return tail.startswith(_OUR_LINE_STARTS)


def _check_first_line(path: Path, head: bytes) -> None:
    """Refuse `path` unless its first line (`head`, with its newline if it has one) is fastgen's."""
    if head.endswith(b"\n"):
        complete, tail = [head[:-1]], b""
    else:
        complete, tail = [], head
    if head and not _starts_like_ours(complete, tail):
        _refuse_foreign(path, head.rstrip(b"\n"))


def check_not_foreign(path: Path) -> None:
    """Refuse a file that is not fastgen's from its first line alone: cheap enough to run before
    a model is loaded."""
    if not path.is_file():
        return
    with path.open("rb") as handle:
        _check_first_line(path, handle.readline())


def _warn_bad_lines(path: Path, bad_lines: list[int], what: str = "results file") -> None:
    listed = ", ".join(str(n) for n in bad_lines[:_LISTED_BAD_LINES])
    more = f" (and {len(bad_lines) - _LISTED_BAD_LINES} more)" if len(bad_lines) > _LISTED_BAD_LINES else ""
    noun = "line" if len(bad_lines) == 1 else "lines"
    log.warning(
        "%s %s: %s %s%s not a fastgen record; kept in the file and ignored, so an image "
        "they described is computed again",
        what, path, noun, listed, more,
    )  # fmt: skip


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(1-based number, byte offset, bytes with their newline) of each line, one at a time."""
    with path.open("rb") as handle:
        offset = 0
        for number, line in enumerate(handle, start=1):
            yield number, offset, line
            offset += len(line)


def read_objects(path: Path) -> Iterator[dict[str, Any]]:
    """The headers, records and retirements of `path` in file order, unusable lines left out; one
    at a time."""
    for _, _, line in _lines(path):
        obj = _parse_line(line) if line.strip() else None
        if is_header(obj) or is_record(obj) or is_retirement(obj):
            yield obj


def scan_results(path: Path, *, strict: bool = True, keep: Callable[[dict[str, Any]], Any] = _whole) -> ResultsContents:
    """Read `path`, line by line, without changing it; `records` maps each path key to
    `keep(latest record)` (the whole record unless told). With `strict`, a file whose first line
    is not fastgen's raises `ResultsFileError` (part files are read with `strict=False`)."""
    contents = ResultsContents()
    if not path.exists():
        return contents
    if is_results_dir(path):
        return scan_results_dir(path, keep=keep)
    if path.is_dir():
        raise ResultsFileError(f"{path} is a folder; pass a file path such as {path / 'results.jsonl'}")
    for number, offset, line in _lines(path):
        if number == 1 and strict:
            _check_first_line(path, line)
        if line.endswith(b"\n"):
            if line.strip():  # a blank line describes nothing
                _take_line(contents, _parse_line(line), number, path.parent, keep)
            continue
        parsed = _parse_line(line)  # an unterminated last line
        if is_record(parsed) or is_header(parsed) or is_retirement(parsed):
            _take_line(contents, parsed, number, path.parent, keep)
            contents.missing_newline = True
        else:
            contents.cut_from = offset
    if contents.bad_lines:
        _warn_bad_lines(path, contents.bad_lines)
    return contents


def scan_results_dir(folder: Path, *, keep: Callable[[dict[str, Any]], Any] = _whole) -> ResultsContents:
    """Read a results directory (`fastgen.jobs.results_dir`) as `scan_results` reads a file: its
    parts in order, the latest record of each image kept once however many parts hold it.
    `header` is the directory's header; `bad_lines` counts objects across parts, and a warning
    names each part that holds such lines.

    A part that cannot be read (a Parquet part cut short: no footer) is skipped with a warning
    that names it and says why, and is left as it is: the images only it held count as not
    done, so a re-run computes them again; records read before the damage still count."""
    contents = ResultsContents(header=read_dir_header(folder))
    number = 0
    for part in list_parts(folder):
        bad_in_part = []  # numbered within the part, for the warning that names it
        try:
            for index, obj in enumerate(read_part_objects(part), start=1):
                number += 1
                if is_header(obj):
                    continue
                _take_line(contents, obj, number, folder, keep)
                if contents.bad_lines and contents.bad_lines[-1] == number:
                    bad_in_part.append(index)
        except DamagedPart as damage:
            contents.damaged_parts.append(str(damage))
            log.warning(
                "results folder %s: %s; the part is left as it is and skipped, so the images only it "
                "held are computed again by a re-run", folder, damage,
            )  # fmt: skip
        if bad_in_part:
            _warn_bad_lines(part, bad_in_part, "results part")
    return contents


def _take_line(contents: ResultsContents, obj: Any, number: int, folder: Path, keep: Callable) -> None:
    if is_header(obj):
        contents.header = obj
    elif is_retirement(obj):
        contents.records.pop(record_key(obj["path"], folder), None)
    elif is_record(obj):
        contents.records[record_key(obj["path"], folder)] = keep(obj)
        contents.record_lines += 1
    else:
        contents.bad_lines.append(number)


def repair_tail(path: Path, contents: ResultsContents) -> None:
    """Make `path` end after a complete line before anything is appended: cut an interrupted last
    line (the only rewrite), or give a whole last record its missing newline."""
    if contents.cut_from is not None:
        log.warning(
            "results file %s: cutting an incomplete last line (%d bytes, left by an interrupted "
            "write); its image is computed again",
            path, path.stat().st_size - contents.cut_from,
        )  # fmt: skip
        with path.open("r+b") as handle:
            handle.truncate(contents.cut_from)
            handle.flush()
            os.fsync(handle.fileno())
        contents.cut_from = None
    elif contents.missing_newline:
        with path.open("ab") as handle:
            handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        contents.missing_newline = False


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The latest record of each image by path key, headers and unusable lines left out, from a
    results file or a results directory (a Ray job's). Read only: nothing is changed (see
    `repair_tail`)."""
    return scan_results(path).records


def check_same_job(path: Path, contents: ResultsContents, header: dict[str, Any], *, force: bool = False) -> bool:
    """Whether the file's last header describes the job `header` describes. A different job
    raises `ResultsFileError` unless `force`; a file without a header (from before headers
    existed) cannot be checked and is accepted with a warning."""
    old = contents.header
    if old is None:
        if contents.records:
            log.warning(
                "results file %s has no header (written by an older fastgen): its settings cannot be "
                "checked; the current settings are appended as a header", path
            )  # fmt: skip
        return False
    if int(old.get("format", 0)) > FORMAT_VERSION:
        raise ResultsFileError(
            f"results file {path} has format {old.get('format')}, newer than this fastgen reads "
            f"({FORMAT_VERSION}); upgrade fastgen, or choose another --out path"
        )
    differences = header_differences(old, header)
    if not differences:
        return True
    if not force:
        raise ResultsFileError(
            f"results file {path} holds another job's results: {'; '.join(differences)}. Resuming "
            "would mix results of different settings in one file. Run with the file's settings, "
            "choose another --out path, or pass --force to keep its records and append the new "
            "settings' results after a new header"
        )
    log.warning("results file %s: settings differ (%s); continuing because of --force", path, "; ".join(differences))
    return False


def header_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'name: X in the file, Y now' for the model and each setting that differs."""
    before = {"model": old.get("model"), **_normalised(old.get("settings") or {})}
    after = {"model": new.get("model"), **_normalised(new.get("settings") or {})}
    return [
        f"{name}: {_show(before.get(name))} in the file, {_show(after.get(name))} now"
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]


def _normalised(settings: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(settings))  # tuples and lists compare equal, as they are written


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def unwritable_message(path: Path, error: OSError | str) -> str:
    reason = error if isinstance(error, str) else error.strerror or str(error)
    return f"cannot write the results file {path} ({reason}); choose a writable location for --out"


def check_writable(path: Path) -> None:
    """Refuse, before any work is done, a results path that cannot be written."""
    if path.is_dir():
        raise ResultsFileError(f"{path} is a folder; pass a file path such as {path / 'results.jsonl'}")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ResultsFileError(unwritable_message(path, "permission denied"))
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ResultsFileError(unwritable_message(path, f"{parent} is a file, not a folder"))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ResultsFileError(unwritable_message(path, f"permission denied in {parent}"))


class ResultsWriter:
    """Appends one JSON object per line, durably."""

    def __init__(self, path: Path | None, stream: IO[str] | None = None):
        self.path = path
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._handle: IO[str] = path.open("a", encoding="utf-8")
            except OSError as error:
                raise ResultsFileError(unwritable_message(path, error)) from None
        else:
            self._handle = stream  # type: ignore[assignment]

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, allow_nan=False) + "\n")
        self._handle.flush()
        if self.path is not None:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self.path is not None:
            self._handle.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def result_record(path: str, result) -> dict[str, Any]:
    """One image's line. An undecided result (an adaptive policy's budget ran out with several
    classes tied) adds `"decided": false` and its `"survivors"`; a line without them decided, so
    older files and readers need no change. A policy that records something of each image (a
    noise profile's check) adds its keys."""
    record = {
        "path": path,
        "prediction": result.prediction,
        "scores": result.scores,
        "unet_evals": int(result.unet_evals),
        # Pruned classes' mean error over the samples they had when dropped (null for survivors):
        # what calibration gives a class that has no full score.
        "partial_scores": {
            name: (None if math.isnan(s) or not math.isnan(e) else float(s))
            for name, s, e in zip(result.classes, result.partial_errors, result.errors)
        },
    }
    if not getattr(result, "decided", True):
        record.update(decided=False, survivors=list(result.survivors))
    if getattr(result, "policy_record", None):
        record.update(result.policy_record)  # e.g. "noise_check": which boundary held this image
    return record


def error_record(path: str, error: Exception) -> dict[str, Any]:
    return {"path": path, "error": str(error)}
