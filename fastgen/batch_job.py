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
from fastgen.results_file import ResultsWriter, error_record, path_key, read_results, result_record

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


def classify_files(
    clf: DiffusionClassifier,
    paths: Sequence[Path],
    *,
    out: Path | None,
    labels_from_folders: bool = False,
    progress: bool = True,
) -> JobSummary:
    done = read_results(out) if out is not None else {}
    todo = [p for p in paths if path_key(p) not in done]
    writer = ResultsWriter(out, stream=sys.stdout)
    computed = failed = 0
    bar = tqdm(total=len(todo), disable=not progress, unit="img", file=sys.stderr)
    try:
        for key, outcome in clf.classify_stream((str(p), p) for p in todo):
            if isinstance(outcome, Exception):
                record = error_record(key, outcome)
                failed += 1
            else:
                record = result_record(key, outcome)
                computed += 1
            writer.write(record)
            done[path_key(key)] = record
            bar.update(1)
    finally:
        bar.close()
        writer.close()
    summary = JobSummary(len(paths), len(paths) - len(todo), computed, failed)
    if labels_from_folders:
        scored = [(p, done.get(path_key(p), {})) for p in paths]
        scored = [(p, r) for p, r in scored if "prediction" in r]
        correct = sum(r["prediction"] == folder_label(p) for p, r in scored)
        summary.labelled = len(scored)
        summary.accuracy = correct / len(scored) if scored else None
    return summary
