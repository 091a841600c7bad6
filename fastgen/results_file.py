"""The JSON-lines results file: one object per image, written as images finish, resumable.

Each line is flushed and fsynced as it is written, so a crash loses at most the line being
written; a truncated last line is detected on the next run, cut off, and its image redone.
"""

from __future__ import annotations

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
