"""Classify a list of image files into a resumable JSON-lines file.

Used by `fastgen classify`; images already in the output file are skipped, so re-running a
finished or interrupted job computes only what is missing. The file starts with a header of the
job's settings, and a resume with other settings is refused unless forced. Images whose latest
record is an error are redone on request (`retry_failed`).

Of every finished image, done before or in this run, the job keeps only its path key and its
`Outcome` (failed or not, its prediction): enough for the counts and the accuracy, and a few
hundred bytes however many classes are scored. The caller holds the output's lock
(`fastgen.jobs.output_lock`).
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
from fastgen.jobs.parts import check_parts, find_parts, merge_parts
from fastgen.jobs.results_file import (
    Outcome,
    ResultsContents,
    ResultsWriter,
    check_same_job,
    check_writable,
    error_record,
    header_differences,
    outcome_of,
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
) -> dict[str, Outcome]:
    """Classify `paths`, one durable record per image as it finishes (its path absolute); the
    outcomes by path key.

    The writer is closed however the loop ends, so an interrupted run (Ctrl-C) leaves a file
    that ends after its last complete line."""
    outcomes: dict[str, Outcome] = {}
    bar = tqdm(total=len(paths), disable=not progress, unit="img", file=sys.stderr)
    try:
        for key, outcome in clf.classify_stream((path_key(p), p) for p in paths):
            failed = isinstance(outcome, Exception)
            record = error_record(key, outcome) if failed else result_record(key, outcome)
            if not failed and clf.calibration is not None:
                record["probabilities"] = clf.probabilities(outcome)
            writer.write(record)
            outcomes[key] = outcome_of(record)
            bar.update(1)
    finally:
        bar.close()
        writer.close()
    return outcomes


def count_failed(outcomes: dict[str, Outcome]) -> int:
    return sum(o.failed for o in outcomes.values())


def needs_computing(outcome: Outcome | None, *, retry_failed: bool) -> bool:
    """An image is computed when it has no record, or when its latest record is an error and
    failed images are retried."""
    return outcome is None or (retry_failed and outcome.failed)


def labelled_accuracy(summary: JobSummary, paths: Sequence[Path], done: dict[str, Outcome]) -> None:
    """Fill the summary's accuracy, the label of an image being its parent folder's name."""
    labelled = correct = 0
    for path in paths:
        outcome = done.get(path_key(path))
        if outcome is not None and outcome.prediction is not None:
            labelled += 1
            correct += outcome.prediction == folder_label(path)
    summary.labelled = labelled
    summary.accuracy = correct / labelled if labelled else None


def read_outcomes(out: Path) -> dict[str, Outcome]:
    """The `Outcome` of each image's latest record in `out`, by path key."""
    return scan_results(out, keep=outcome_of).records


def prepare_output(out: Path, header: dict[str, Any] | None = None, *, force: bool = False) -> ResultsContents:
    """Make `out` ready for appending and return what it already holds (its records as
    `Outcome`s).

    Everything that can refuse the file runs before anything is changed: an unwritable path, a
    file that is not fastgen's, and (with a `header`) a file or a part file of a job with other
    settings unless `force`. Then an interrupted last line is cut, the parts of an interrupted
    torchrun run are merged, and `header` is appended unless the file's last header matches it."""
    check_writable(out)
    contents = scan_results(out, keep=outcome_of)
    if header is not None:
        check_same_job(out, contents, header, force=force)
    parts = find_parts(out)
    check_parts(out, parts, contents.header, header, force=force)
    repair_tail(out, contents)
    if parts:
        merge_parts(out, header, force=force)
        contents = scan_results(out, keep=outcome_of)
    if header is not None and (contents.header is None or header_differences(contents.header, header)):
        with ResultsWriter(out) as writer:
            writer.write(header)
        contents.header = header
    return contents


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
        done: dict[str, Outcome] = {}
        writer = ResultsWriter(None, stream=sys.stdout)
        writer.write(header)
    else:
        done = prepare_output(out, header, force=force).records
        writer = ResultsWriter(out)
    todo = [p for p in paths if needs_computing(done.get(path_key(p)), retry_failed=retry_failed)]
    new = write_results(clf, todo, writer, progress=progress)
    failed = count_failed(new)
    summary = JobSummary(len(paths), len(paths) - len(todo), len(new) - failed, failed)
    done.update(new)  # the latest outcome of every image, without a second copy
    summary.errors_in_output = count_failed(done)
    if labels_from_folders:
        labelled_accuracy(summary, paths, done)
    return summary
