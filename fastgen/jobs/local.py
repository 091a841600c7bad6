"""Classify a list of image files into a resumable JSON-lines file.

Used by `fastgen classify`; images already in the output file are skipped, so re-running a
finished or interrupted job computes only what is missing. The file starts with a header of the
job's settings, and a resume with other settings is refused unless forced. Images whose latest
record is an error are redone on request (`retry_failed`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fastgen.api import DiffusionClassifier
from fastgen.jobs.results_file import (
    ResultsContents,
    ResultsWriter,
    check_same_job,
    check_writable,
    error_record,
    is_error,
    merge_parts,
    path_key,
    repair_tail,
    result_record,
    results_header,
    scan_results,
)

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    total: int
    skipped: int
    computed: int
    failed: int
    accuracy: float | None = None
    labelled: int = 0
    errors_in_output: int = 0  # images whose latest record in the output is an error, after the run


def folder_label(path: Path) -> str:
    return path.parent.name


def job_header(clf: DiffusionClassifier) -> dict[str, Any]:
    """The header a results file of `clf`'s job starts with."""
    return results_header(clf.model_id, clf.settings())


def write_results(
    clf: DiffusionClassifier, paths: Sequence[Path], writer: ResultsWriter, *, progress: bool = True
) -> dict[str, dict]:
    """Classify `paths`, one durable record per image as it finishes; the records by path key.

    The writer is closed however the loop ends, so an interrupted run (Ctrl-C) leaves a file
    that ends after its last complete line."""
    records: dict[str, dict] = {}
    bar = tqdm(total=len(paths), disable=not progress, unit="img", file=sys.stderr)
    try:
        for key, outcome in clf.classify_stream((str(p), p) for p in paths):
            failed = isinstance(outcome, Exception)
            record = error_record(key, outcome) if failed else result_record(key, outcome)
            if not failed and clf.calibration is not None:
                record["probabilities"] = clf.probabilities(outcome)
            writer.write(record)
            records[path_key(key)] = record
            bar.update(1)
    finally:
        bar.close()
        writer.close()
    return records


def count_failed(records: dict[str, dict]) -> int:
    return sum(is_error(r) for r in records.values())


def needs_computing(record: dict | None, *, retry_failed: bool) -> bool:
    """An image is computed when it has no record, or when its latest record is an error and
    failed images are retried."""
    return record is None or (retry_failed and is_error(record))


def labelled_accuracy(summary: JobSummary, paths: Sequence[Path], done: dict[str, dict]) -> None:
    """Fill the summary's accuracy, the label of an image being its parent folder's name."""
    scored = [(p, done.get(path_key(p), {})) for p in paths]
    scored = [(p, r) for p, r in scored if "prediction" in r]
    summary.labelled = len(scored)
    summary.accuracy = sum(r["prediction"] == folder_label(p) for p, r in scored) / len(scored) if scored else None


def prepare_output(out: Path, header: dict[str, Any] | None = None, *, force: bool = False) -> ResultsContents:
    """Make `out` ready for appending and return what it already holds.

    Everything that can refuse the file runs before anything is changed: an unwritable path, a
    file that is not fastgen's, and (with a `header`) a file of a job with other settings unless
    `force`. Then an interrupted last line is cut, the parts of an interrupted torchrun run are
    merged, and `header` is appended unless the file's last header already matches it."""
    check_writable(out)
    contents = scan_results(out)
    same_job = header is None or check_same_job(out, contents, header, force=force)
    repair_tail(out, contents)
    merge_parts(out)  # part files of an interrupted torchrun run belong to the file's job
    if not same_job:
        writer = ResultsWriter(out)
        writer.write(header)
        writer.close()
    return scan_results(out)


def classify_files(
    clf: DiffusionClassifier,
    paths: Sequence[Path],
    *,
    out: Path | None,
    labels_from_folders: bool = False,
    progress: bool = True,
    retry_failed: bool = False,
    force: bool = False,
) -> JobSummary:
    """Classify the image files `paths` into `out` (stdout when None), resuming what `out` holds.

    `retry_failed` redoes images whose latest record is an error (the new record is appended and
    wins); `force` resumes a file whose header has other settings."""
    header = job_header(clf)
    if out is None:
        done: dict[str, dict] = {}
        writer = ResultsWriter(None, stream=sys.stdout)
        writer.write(header)
    else:
        done = prepare_output(out, header, force=force).records
        writer = ResultsWriter(out)
    todo = [p for p in paths if needs_computing(done.get(path_key(p)), retry_failed=retry_failed)]
    new = write_results(clf, todo, writer, progress=progress)
    failed = count_failed(new)
    latest = {**done, **new}
    summary = JobSummary(len(paths), len(paths) - len(todo), len(new) - failed, failed)
    summary.errors_in_output = count_failed(latest)
    if labels_from_folders:
        labelled_accuracy(summary, paths, latest)
    return summary
