"""The JSON-lines results file: one object per image, written as images finish, resumable.

Each line is flushed and fsynced as it is written, so a crash loses at most the line being
written; a truncated last line is detected on the next run, cut off, and its image redone.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


def path_key(path: str | Path) -> str:
    """Paths are matched across runs by their absolute form, whatever form was typed."""
    return os.path.abspath(str(path))


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Finished records by path key; repairs a truncated final line in place."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    records: dict[str, dict[str, Any]] = {}
    good_end = 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("unterminated line")
            record = json.loads(line)
            records[path_key(record["path"])] = record
        except (ValueError, KeyError, TypeError):
            log.warning("results file %s: dropping an incomplete last line; its image is redone", path)
            break
        good_end += len(line)
    if good_end < len(data):
        with path.open("r+b") as handle:
            handle.truncate(good_end)
    return records


class ResultsWriter:
    """Appends one JSON object per line, durably."""

    def __init__(self, path: Path | None, stream: IO[str] | None = None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle: IO[str] = path.open("a", encoding="utf-8")
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


def result_record(path: str, result) -> dict[str, Any]:
    return {
        "path": path,
        "prediction": result.prediction,
        "scores": result.scores,
        "unet_evals": int(result.unet_evals),
    }


def error_record(path: str, error: Exception) -> dict[str, Any]:
    return {"path": path, "error": str(error)}


# -- part files ---------------------------------------------------------------------------------
def part_path(out: Path, rank: int, world_size: int) -> Path:
    return out.with_name(f"{out.name}.part-{rank:05d}-of-{world_size:05d}")


def find_parts(out: Path) -> list[Path]:
    """Part files of any world size next to `out`."""
    pattern = glob.escape(out.name) + ".part-*-of-*"
    return sorted(p for p in out.parent.glob(pattern) if p.is_file())


def merge_parts(out: Path) -> int:
    """Append to `out` every record of the part files that `out` lacks, then delete the parts.

    Safe to interrupt at any point: the parts go only after the appended lines are synced, and a
    re-run skips records `out` already holds. Returns the number of records appended.
    """
    parts = find_parts(out)
    if not parts:
        return 0
    done = read_results(out)  # also cuts a truncated last line
    added = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as handle:
        for part in parts:
            for key, record in read_results(part).items():
                if key not in done:
                    handle.write(json.dumps(record, allow_nan=False) + "\n")
                    done[key] = record
                    added += 1
        handle.flush()
        os.fsync(handle.fileno())  # once for the whole merge: a per-line sync is for live writes
    for part in parts:
        part.unlink()
    log.info("merged %d records from %d part files into %s", added, len(parts), out)
    return added
