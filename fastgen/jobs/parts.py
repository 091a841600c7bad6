"""Part files of a torchrun job: one per rank next to the results file `F`
(`F.part-RRRRR-of-WWWWW`), merged into `F` when the job ends, or by the next run on `F` (at any
world size) when the job was interrupted.

A part starts with the header of the job that writes it. Before any record of a part is adopted,
its header is checked against the job that adopts it: a part of another job (other model, loss,
classes...) is refused unless forced, and then its header is carried into `F` ahead of its
records, so every record in `F` stays under the header it was written under. Parts written before
parts had headers are adopted only under `F`'s last header, which the run that wrote them had
appended before computing; with no such header to vouch for them they are refused.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path
from typing import Any

from fastgen.jobs.results_file import (
    ResultsFileError,
    ResultsWriter,
    header_differences,
    is_header,
    is_record,
    read_objects,
    record_digest,
    record_key,
    repair_tail,
    scan_results,
)

log = logging.getLogger(__name__)


def part_path(out: Path, rank: int, world_size: int) -> Path:
    return out.with_name(f"{out.name}.part-{rank:05d}-of-{world_size:05d}")


def find_parts(out: Path) -> list[Path]:
    """Part files of any world size next to `out`."""
    pattern = glob.escape(out.name) + ".part-*-of-*"
    return sorted(p for p in out.parent.glob(pattern) if p.is_file())


def open_part(out: Path, rank: int, world_size: int, header: dict[str, Any]) -> ResultsWriter:
    """This rank's part file, started with the job's header."""
    writer = ResultsWriter(part_path(out, rank, world_size))
    try:
        writer.write(header)
    except BaseException:
        writer.close()
        raise
    return writer


def _first_object(part: Path) -> dict[str, Any] | None:
    """The part's first header or record: its header, or its first record when it has none."""
    return next(read_objects(part), None)


def check_parts(
    out: Path,
    parts: list[Path],
    out_header: dict[str, Any] | None,
    job_header: dict[str, Any] | None,
    *,
    force: bool = False,
) -> None:
    """Refuse, before anything is changed, a part whose records cannot be adopted by the job of
    `job_header` (None: any job) into `out`, whose last header is `out_header`."""
    for part in parts:
        first = _first_object(part)
        if is_header(first):
            differences = header_differences(first, job_header) if job_header is not None else []
            if differences and not force:
                raise ResultsFileError(
                    f"part file {part} was written by another job ({'; '.join(differences)}); adopting its "
                    f"records would mix results of different settings in {out}. Finish that job with its "
                    "settings, move or delete its part files, or pass --force to keep its records under "
                    "their own header"
                )
        elif is_record(first) and out_header is None:
            raise ResultsFileError(
                f"part file {part} has no header (an older fastgen wrote it) and {out} has none that "
                "covers it, so its settings cannot be checked. If it belongs to this job, append it to "
                f"{out} by hand (cat {part} >> {out}); otherwise move or delete it"
            )


def merge_parts(out: Path, job_header: dict[str, Any] | None = None, *, force: bool = False) -> int:
    """Append to `out` every record of the part files that `out` lacks, then delete the parts.

    The parts are checked first (`check_parts`); a part's header goes into `out` before its
    records when `out`'s last header is another. Parts are read one line at a time. Safe to
    interrupt at any point: the parts go only after the appended lines are synced, and a re-run
    skips records `out` already holds. Returns the number of records appended."""
    parts = find_parts(out)
    if not parts:
        return 0
    contents = scan_results(out, keep=record_digest)  # refuses an `out` that is not fastgen's
    check_parts(out, parts, contents.header, job_header, force=force)
    repair_tail(out, contents)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as handle:
        added = _append_parts(handle, parts, contents.header, contents.records)
        handle.flush()
        os.fsync(handle.fileno())  # once for the whole merge: a per-line sync is for live writes
    for part in parts:
        part.unlink()
    log.info("merged %d records from %d part files into %s", added, len(parts), out)
    return added


def _append_parts(handle, parts: list[Path], header: dict[str, Any] | None, done: dict[str, bytes]) -> int:
    """Write the parts' records that `done` (path key -> digest of `out`'s latest record) lacks,
    each part's header first when it is not the header in force; the number of records written."""
    added = 0
    for part in parts:
        for obj in read_objects(part):
            if is_header(obj):
                if header is None or header_differences(header, obj):
                    handle.write(json.dumps(obj, allow_nan=False) + "\n")
                    header = obj
                continue
            key, digest = record_key(obj["path"], part.parent), record_digest(obj)
            # A record `out` already holds is skipped; a newer one (a retried image) is not.
            if done.get(key) != digest:
                handle.write(json.dumps(obj, allow_nan=False) + "\n")
                done[key] = digest
                added += 1
    return added
