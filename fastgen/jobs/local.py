"""Classify the images of input sources (image files, tar shards, Parquet files, saved datasets:
`fastgen.inputs.sources`) into a resumable JSON-lines file, one record per image under its id.

Used by `fastgen classify`; images already in the output file are skipped, so re-running a
finished or interrupted job computes only what is missing. The file starts with a header of the
job's settings, and a resume with other settings is refused unless forced. Images whose latest
record is an error are redone on request (`retry_failed`).

Sources are read as a stream: `ItemSelection` decides for each item, from its id and before its
payload is read, whether this run computes it, so a payload is read only to be classified.

Of every finished image, done before or in this run, the job keeps only its path key and its
`Outcome` (failed or not, its prediction): enough for the counts and the accuracy, and a few
hundred bytes however many classes are scored. The caller holds the output's lock
(`fastgen.jobs.output_lock`); the output is used under its real path (`real_output`), where the
lock is.

An error record about a whole source (a cut tar shard's ``SHARD#<truncated>``) is not an image
that a retry redoes: with `retry_failed`, once the source is read to its end without that error
(it was replaced), the record is retired (`retire_source_errors`) and counts no more.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fastgen.api import DiffusionClassifier
from fastgen.inputs.images import ImageError
from fastgen.inputs.items import source_of_error
from fastgen.inputs.sources import FileListSource, Item, Source, class_label
from fastgen.jobs.output_lock import real_output
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
    retirement_record,
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


class ItemSelection:
    """Decides, item by item as the sources are read and before any payload is, which items this
    run computes: each id once (the first time it is seen), only those `needs_computing`, and of
    those every `world_size`-th from position `rank` (a deterministic shard by item index over all
    sources). Counts every item and keeps the labels for the accuracy.

    An item's label is its source's (a class index named by the job's class), else, with
    `labels_from_folders`, an image file's parent folder name."""

    def __init__(
        self,
        done: dict[str, Outcome],
        class_names: Callable[[], Sequence[str]],
        *,
        retry_failed: bool = False,
        labels_from_folders: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.done, self.class_names = done, class_names
        self.retry_failed, self.labels_from_folders = retry_failed, labels_from_folders
        self.rank, self.world_size = rank, world_size
        self.seen: set[str] = set()
        self.repeated = 0  # items whose id was seen before: left out
        self.labels: dict[str, str] = {}  # item key -> label (class name), for the accuracy
        self.todo = 0
        self._names: tuple[str, ...] | None = None
        self._name_set: frozenset[str] = frozenset()

    @property
    def total(self) -> int:
        return len(self.seen)

    def for_source(self, source: Source) -> Callable[[str, str | None], bool]:
        """The `wanted` test for `source`'s items; folder labels apply to image files only."""
        folders = self.labels_from_folders and isinstance(source, FileListSource)
        return lambda item_id, label: self.wanted(item_id, label, folder_labels=folders)

    def wanted(self, item_id: str, label: str | None, *, folder_labels: bool = False) -> bool:
        key = path_key(item_id)
        if key in self.seen:
            self.repeated += 1
            return False
        self.seen.add(key)
        if label is not None:
            label = self.source_label(label)
        elif folder_labels:
            label = sys.intern(Path(key).parent.name)
        if label is not None:
            self.labels[key] = label
        if not needs_computing(self.done.get(key), retry_failed=self.retry_failed):
            return False
        self.todo += 1
        return (self.todo - 1) % self.world_size == self.rank

    def warn_repeated(self) -> None:
        if self.repeated:
            log.warning(
                "%d images repeat the id of an image before them (the same file named twice, or a "
                "repeated value of --id-column); each id is classified once, the first time", self.repeated
            )  # fmt: skip

    def source_label(self, label: str) -> str:
        """The label as a class name; labels are interned, so a million images share ten strings."""
        if self._names is None:  # asked once: with 1,000 classes, a tuple is too slow to search per image
            self._names = tuple(self.class_names())
            self._name_set = frozenset(self._names)
        if label in self._name_set:
            return sys.intern(label)
        return sys.intern(class_label(label, self._names))


def selected_items(sources: Sequence[Source], selection: ItemSelection) -> Iterator[Item]:
    """The items `selection` wants, source after source, with source labels as class names."""
    for source in sources:
        for item in source.items(selection.for_source(source)):
            if item.label is not None:
                item = replace(item, label=selection.source_label(item.label))
            yield item


def write_results(
    clf: DiffusionClassifier, items: Iterable[Item], writer: ResultsWriter, *, progress: bool = True,
    total: int | None = None,
) -> dict[str, Outcome]:  # fmt: skip
    """Classify `items`, one durable record per image as it finishes (under its id, as a path
    key; with the source's label when it has one); the outcomes by key. An item that could not be
    read is an error record, written as soon as it is met.

    The writer is closed however the loop ends, so an interrupted run (Ctrl-C) leaves a file
    that ends after its last complete line."""
    outcomes: dict[str, Outcome] = {}
    unreadable: deque[Item] = deque()
    in_flight_labels: dict[str, str] = {}
    bar = tqdm(total=total, disable=not progress, unit="img", file=sys.stderr)

    def readable() -> Iterator[tuple[str, bytes | Path]]:
        for item in items:
            if item.payload is None:
                unreadable.append(item)
                continue
            key = path_key(item.id)
            if item.label is not None:
                in_flight_labels[key] = item.label
            yield key, item.payload

    def write(key: str, outcome: Any, label: str | None) -> None:
        failed = isinstance(outcome, Exception)
        record = error_record(key, outcome) if failed else result_record(key, outcome)
        if not failed and clf.calibration is not None:
            record["probabilities"] = clf.probabilities(outcome)
        if label is not None:
            record["label"] = label
        writer.write(record)
        outcomes[key] = outcome_of(record)
        bar.update(1)

    def write_unreadable() -> None:
        while unreadable:
            item = unreadable.popleft()
            write(path_key(item.id), ImageError(item.error or "the item could not be read"), item.label)

    try:
        for key, outcome in clf.classify_stream(readable()):
            write_unreadable()
            write(key, outcome, in_flight_labels.pop(key, None))
        write_unreadable()
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


def labelled_accuracy(summary: JobSummary, labels: dict[str, str], done: dict[str, Outcome]) -> None:
    """Fill the summary's accuracy over the items with a label (`ItemSelection.labels`) and a
    prediction."""
    labelled = correct = 0
    for key, label in labels.items():
        outcome = done.get(key)
        if outcome is not None and outcome.prediction is not None:
            labelled += 1
            correct += outcome.prediction == label
    summary.labelled = labelled
    summary.accuracy = correct / labelled if labelled else None


def progress_total(sources: Sequence[Source], selection: ItemSelection) -> int | None:
    """How many items `selection` will pick, when the sources are image files (listing them reads
    nothing); None otherwise."""
    if not all(isinstance(s, FileListSource) for s in sources):
        return None
    dry_run = ItemSelection(
        selection.done, selection.class_names, retry_failed=selection.retry_failed,
        rank=selection.rank, world_size=selection.world_size,
    )  # fmt: skip
    return sum(1 for s in sources for _ in s.items(dry_run.for_source(s)))


def stale_source_errors(done: dict[str, Outcome], seen: Collection[str], sources: Sequence[Source]) -> list[str]:
    """The keys of error records about a whole source (`source_of_error`) that reading `sources`
    to their end did not give again (`seen`: every id read): the source reads whole now, so the
    error no longer stands. Errors of sources not read in this run are kept."""
    names = {path_key(source.name) for source in sources}
    return [
        key for key, outcome in done.items() if outcome.failed and key not in seen and source_of_error(key) in names
    ]


def retire_source_errors(out: Path, done: dict[str, Outcome], seen: Collection[str], sources: Sequence[Source]) -> int:
    """Append a retirement for each of `stale_source_errors` to `out` and drop them from `done`;
    how many. Called once every source has been read to its end."""
    stale = stale_source_errors(done, seen, sources)
    if not stale:
        return 0
    with ResultsWriter(out) as writer:
        for key in stale:
            writer.write(retirement_record(key, "its source was read to its end without this error"))
            del done[key]
    log.info("%s: %d error record(s) about a whole source retired: the source now reads whole", out, len(stale))
    return len(stale)


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


def classify_sources(
    clf: DiffusionClassifier,
    sources: Sequence[Source],
    *,
    out: Path | None,
    labels_from_folders: bool = False,
    progress: bool = True,
    retry_failed: bool = False,
    force: bool = False,
) -> JobSummary:
    """Classify the items of `sources` (`fastgen.inputs.sources`) into `out` (stdout when None),
    resuming what `out` holds; the accuracy is over the items with a label (from their source, or
    with `labels_from_folders` from an image file's folder).

    `retry_failed` redoes images whose latest record is an error (the new record is appended and
    wins, and error records about a whole source that no longer stand are retired); `force`
    resumes a file whose header has other settings."""
    header = job_header(clf)
    if out is None:
        done: dict[str, Outcome] = {}
        writer = ResultsWriter(None, stream=sys.stdout)
        writer.write(header)
    else:
        out = real_output(out)
        done = prepare_output(out, header, force=force).records
        writer = ResultsWriter(out)
    selection = ItemSelection(
        done, lambda: clf.classes.names, retry_failed=retry_failed, labels_from_folders=labels_from_folders
    )
    total = progress_total(sources, selection) if progress else None
    new = write_results(clf, selected_items(sources, selection), writer, progress=progress, total=total)
    failed = count_failed(new)
    selection.warn_repeated()
    summary = JobSummary(selection.total, selection.total - selection.todo, len(new) - failed, failed)
    done.update(new)  # the latest outcome of every image, without a second copy
    if retry_failed and out is not None:
        retire_source_errors(out, done, selection.seen, sources)
    summary.errors_in_output = count_failed(done)
    if selection.labels:
        labelled_accuracy(summary, selection.labels, done)
    return summary


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
    """Classify the image files `paths` (in this order) into `out`; see `classify_sources`."""
    return classify_sources(
        clf, [FileListSource("<files>", list(paths))], out=out, labels_from_folders=labels_from_folders,
        progress=progress, retry_failed=retry_failed, force=force,
    )  # fmt: skip
