"""Classify a list of image files into a resumable JSON-lines file.

Used by `fastgen classify`; images already in the output file are skipped, so re-running a
finished or interrupted job computes only what is missing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from fastgen.api import DiffusionClassifier
from fastgen.distributed import merge_parts
from fastgen.results_file import ResultsContents, ResultsWriter, error_record, path_key, repair_tail, result_record, scan_results

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    total: int
    skipped: int
    computed: int
    failed: int
    accuracy: float | None = None
    labelled: int = 0


def folder_label(path: Path) -> str:
    return path.parent.name


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
            writer.write(record)
            records[path_key(key)] = record
            bar.update(1)
    finally:
        bar.close()
        writer.close()
    return records


def count_failed(records: dict[str, dict]) -> int:
    return sum("error" in r for r in records.values())


def labelled_accuracy(summary: JobSummary, paths: Sequence[Path], done: dict[str, dict]) -> None:
    """Fill the summary's accuracy, the label of an image being its parent folder's name."""
    scored = [(p, done.get(path_key(p), {})) for p in paths]
    scored = [(p, r) for p, r in scored if "prediction" in r]
    summary.labelled = len(scored)
    summary.accuracy = sum(r["prediction"] == folder_label(p) for p, r in scored) / len(scored) if scored else None


def prepare_output(out: Path) -> ResultsContents:
    """Make `out` ready for appending and return what it already holds. A file that is not
    fastgen's is refused before anything is changed."""
    contents = scan_results(out)
    repair_tail(out, contents)
    merge_parts(out)  # part files left by an interrupted torchrun run count as done
    return scan_results(out)


def classify_files(
    clf: DiffusionClassifier,
    paths: Sequence[Path],
    *,
    out: Path | None,
    labels_from_folders: bool = False,
    progress: bool = True,
) -> JobSummary:
    done = prepare_output(out).records if out is not None else {}
    todo = [p for p in paths if path_key(p) not in done]
    new = write_results(clf, todo, ResultsWriter(out, stream=sys.stdout), progress=progress)
    failed = count_failed(new)
    summary = JobSummary(len(paths), len(paths) - len(todo), len(new) - failed, failed)
    if labels_from_folders:
        labelled_accuracy(summary, paths, {**done, **new})
    return summary
