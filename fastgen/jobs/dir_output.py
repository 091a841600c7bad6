"""A results directory as a job's output: its lock, the checks before a job writes into it, and
what a resume leaves out. The layout and the part formats are `fastgen.jobs.results_dir`'s.

The lock is the results file's (`fastgen.jobs.output_lock`) on `DIR.lock`, beside the directory's
real path (symbolic links resolved), so two paths to one directory are one output. A resume
checks `header.json` against the job's settings as a results file's header is checked.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastgen.jobs.local import needs_computing
from fastgen.jobs.output_lock import OutputLock, lock_then_check, real_output
from fastgen.jobs.results_dir import foreign_entries, is_results_dir, remove_temporary_parts, write_dir_header
from fastgen.jobs.results_file import (
    ResultsContents,
    ResultsFileError,
    check_same_job,
    header_differences,
    outcome_of,
    scan_results,
    unwritable_message,
)

log = logging.getLogger(__name__)


def claim_results_dir(out: Path) -> OutputLock:
    """Lock the output directory (`DIR.lock`, beside it), refusing a path that is a file or a
    folder of a user's files: before a model is loaded. The caller releases the lock."""
    if out.exists() and not out.is_dir():
        raise ResultsFileError(f"{out} is a file; with --ray, --out names a folder of part files (it may not exist)")
    parent = next((p for p in out.parents if p.exists()), Path("."))
    if not out.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ResultsFileError(unwritable_message(out, f"permission denied in {parent}"))
    return lock_then_check(out, check_not_foreign_dir)


def check_not_foreign_dir(out: Path) -> None:
    if not out.is_dir():
        return
    foreign = foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ResultsFileError(
            f"{out} holds files that are not a fastgen results directory's ({shown}); fastgen leaves "
            "it untouched. Choose another --out folder, or an empty one"
        )


@contextlib.contextmanager
def hold_results_dir(out: Path) -> Iterator[None]:
    lock = claim_results_dir(out)
    try:
        yield
    finally:
        lock.release()


def prepare_results_dir(out: Path, header: dict[str, Any], *, force: bool = False) -> ResultsContents:
    """What `out` already holds (each image's latest `Outcome`), after refusing a directory of
    another job (unless `force`), deleting parts a killed task left half-written (none that a
    live process is writing) and writing the job's header when the directory lacks it or
    (forced) holds another. The caller holds the directory's lock; `out` is used by its real path."""
    out = real_output(out)
    check_not_foreign_dir(out)
    contents = scan_results(out, keep=outcome_of) if is_results_dir(out) else ResultsContents()
    check_same_job(out, contents, header, force=force)
    removed = remove_temporary_parts(out)
    if removed:
        log.info("%s: removed %d unfinished part file(s) of an interrupted run", out, removed)
    if contents.header is None or header_differences(contents.header, header):
        write_dir_header(out, header)
        contents.header = header
    return contents


def ids_to_skip(contents: ResultsContents, *, retry_failed: bool) -> frozenset[str]:
    """The ids the directory holds that this run leaves out: all, or with `retry_failed` those
    whose latest record is not an error."""
    return frozenset(k for k, o in contents.records.items() if not needs_computing(o, retry_failed=retry_failed))
