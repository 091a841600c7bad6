"""Classification on Ray Data: `fastgen classify ... --ray [local|auto|ADDRESS] --out DIR`.

The job is one Ray Data pipeline, and Ray does the distribution, the backpressure and the retries:

    sources ──flat_map──> items ──map_batches──> pixels ──map_batches(actor pool)──> part files
    (one row per source)  (CPU tasks: read,      (CPU tasks:       (each actor builds the classifier
                           finished ids left out) decode, resize)   once; one part per input block)

Items come from `fastgen.inputs.sources`, so ids are those of the one-process job, and pixels from
`fastgen.inputs.images.load_pixels` with the model's size, channels and pixel limit; the actor
applies the model's ink polarity as `DiffusionClassifier.prepare_pixels` does, so an image gets the
same scores as in one process. Each block's records go to one part file of the output directory
(`fastgen.jobs.results_dir`), named by the run and a hash of the block's ids and written
atomically: a task Ray retries after its actor died writes the same name and replaces its own part.
Actors are restarted when they die (`max_restarts`), and their tasks retried (`max_task_retries`).

The driver holds the directory's lock (`DIR.lock`, beside it) for the whole job, checks the
directory's header against the job's settings before anything is computed, and leaves out the ids
the directory already holds (with `retry_failed`, not those whose latest record is an error). The
job's header is learnt from a classifier built in a Ray task with an actor's resources, so the
driver itself never loads the model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastgen.inputs.images import ImageError, load_pixels
from fastgen.inputs.sources import FileListSource, Item, Source, class_label
from fastgen.jobs.dir_output import hold_results_dir, ids_to_skip, prepare_results_dir
from fastgen.jobs.local import JobSummary, count_failed, job_header
from fastgen.jobs.results_dir import (
    check_format,
    next_run_number,
    part_name,
    write_part,
)
from fastgen.jobs.results_file import (
    Outcome,
    error_record,
    outcome_of,
    path_key,
    result_record,
    scan_results,
)
from fastgen.optional import require

if TYPE_CHECKING:
    from fastgen.api import DiffusionClassifier

log = logging.getLogger(__name__)

# A killed actor is always replaced (a lost node's actors come back elsewhere); a block whose task
# kills its actor this many times more is taken to be the cause, and the job stops with its error.
ACTOR_RESTARTS = -1
TASK_RETRIES = 3
TALLY = ""  # the id of a source's tally row: how many of its items were already done


@dataclass(frozen=True)
class DecodeSpec:
    """How the model takes its pixels: what decoding in CPU tasks needs of the classifier."""

    size: tuple[int, int]
    channels: int
    max_pixels: int

    @classmethod
    def of(cls, clf: DiffusionClassifier) -> DecodeSpec:
        return cls(tuple(clf.adapter.image_hw), clf.adapter.image_channels, clf.max_pixels)


# -- the pipeline's steps, run in Ray tasks and actors ---------------------------------------------
def learn_job(build_classifier: Callable[[], DiffusionClassifier]) -> tuple[dict[str, Any], DecodeSpec]:
    """The job's header and decoding spec, from a classifier built where an actor would build it."""
    clf = build_classifier()
    return job_header(clf), DecodeSpec.of(clf)


def item_row(item: Item, *, skipped: int = 0) -> dict[str, Any]:
    payload = item.payload
    return {
        "id": path_key(item.id) if item.id != TALLY else TALLY,  # as the one-process job keys records
        "payload": payload if isinstance(payload, bytes) else b"",
        "file": str(payload) if isinstance(payload, Path) else "",
        "label": item.label or "",
        "error": item.error or ("the item could not be read" if payload is None and item.id != TALLY else ""),
        "skipped": skipped,
    }


def read_source(row: dict[str, Any], sources_ref, skip_ref) -> Iterator[dict[str, Any]]:
    """The items of one source still to compute, then one tally row counting those left out.
    The sources and the ids to leave out come through Ray's object store, stored once."""
    import ray

    # Each reference travels in a list, so that Ray hands it over as a reference, not resolved.
    sources: Sequence[Source] = ray.get(sources_ref[0])
    skip: frozenset[str] = ray.get(skip_ref[0])
    left_out = 0

    def wanted(item_id: str, label: str | None) -> bool:
        nonlocal left_out
        keep = path_key(item_id) not in skip
        left_out += not keep
        return keep

    for item in sources[int(row["source"])].items(wanted):
        yield item_row(item)
    yield item_row(Item(TALLY, None), skipped=left_out)


def decode_batch(batch: dict[str, np.ndarray], spec: DecodeSpec) -> dict[str, np.ndarray]:
    """Pixels [N, C, H, W] in [0, 1] of the batch's images (zeros where it holds an error);
    a decoding failure becomes the row's error, as in one process."""
    errors = [str(e) for e in batch["error"]]
    pixels = np.zeros((len(errors), spec.channels, *spec.size), dtype=np.float32)
    for i, (identifier, payload, file) in enumerate(zip(batch["id"], batch["payload"], batch["file"])):
        if errors[i] or identifier == TALLY:
            continue
        source = Path(file) if file else bytes(payload)
        try:
            pixels[i] = load_pixels(source, size=spec.size, channels=spec.channels, max_pixels=spec.max_pixels).numpy()
        except ImageError as error:
            errors[i] = str(error)
    return {
        "id": batch["id"],
        "label": batch["label"],
        "error": np.array(errors, dtype=object),
        "skipped": batch["skipped"],
        "pixels": pixels,
    }


def record_of(clf: DiffusionClassifier, key: str, outcome: Any) -> dict[str, Any]:
    """The record of one image, as the one-process job writes it."""
    if isinstance(outcome, Exception):
        return error_record(key, outcome)
    record = result_record(key, outcome)
    if clf.calibration is not None:
        record["probabilities"] = clf.probabilities(outcome)
    return record


class ClassifyBlocks:
    """An actor of the pool: builds the classifier once, then classifies block after block, each
    into its own part file; returns one row of counts per block."""

    def __init__(self, build_classifier, out: str, header: dict[str, Any], run: int, out_format: str):
        self.clf = build_classifier()
        self.out, self.header, self.run, self.out_format = Path(out), header, run, out_format

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [i for i, identifier in enumerate(batch["id"]) if identifier != TALLY]
        records = self.records(batch, rows)
        if records:
            ids = [r["path"] for r in records]
            write_part(self.out, part_name(self.run, ids, self.out_format), self.header, records)
        failed = sum("error" in r for r in records)
        return {
            "computed": np.array([len(records) - failed]),
            "failed": np.array([failed]),
            "skipped": np.array([int(np.sum(batch["skipped"]))]),
        }

    def records(self, batch: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, Any]]:
        """The records of the batch's `rows`, in row order; a row's read or decode error is its
        record, the others are classified (the model's polarity applied here, as in one process)."""
        import torch

        ids = [str(batch["id"][i]) for i in rows]
        outcomes: dict[str, Any] = {
            ids[n]: ImageError(batch["error"][i]) for n, i in enumerate(rows) if batch["error"][i]
        }
        todo = [(ids[n], torch.from_numpy(np.array(batch["pixels"][i]))) for n, i in enumerate(rows)]
        outcomes.update(self.clf.classify_stream(pair for pair in todo if pair[0] not in outcomes))
        records = []
        for n, i in enumerate(rows):
            record = record_of(self.clf, ids[n], outcomes[ids[n]])
            label = class_label(str(batch["label"][i]) or None, self.clf.classes.names)
            if label is not None:
                record["label"] = label  # the source's class: what report, calibrate and accuracy read
            records.append(record)
        return records


# -- the driver ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActorResources:
    """The pool's size and what each actor asks Ray for."""

    actors: int
    num_gpus: float
    num_cpus: float


def actor_resources(
    cluster: dict[str, float], actors: int | None = None, gpus_per_actor: float = 1.0
) -> ActorResources:
    """`gpus_per_actor` of a GPU per actor where the cluster has GPUs (default: one actor per
    GPU; 0.5 puts two on each). CPU actors (default: one) share the CPUs but one, which stays
    free for the reading and decoding tasks: actors that took every CPU would leave none to feed
    them."""
    if actors is not None and actors < 1:
        raise ValueError(f"actors must be at least 1, got {actors}")
    if not (gpus_per_actor > 0 and (gpus_per_actor <= 1 or float(gpus_per_actor).is_integer())):
        raise ValueError(f"gpus_per_actor must be a fraction of one GPU or a whole number, got {gpus_per_actor}")
    gpus = int(cluster.get("GPU", 0))
    if gpus:
        return ActorResources(actors or max(1, int(gpus / gpus_per_actor)), gpus_per_actor, 1)
    count = actors or 1
    cpus = float(cluster.get("CPU", 1))
    return ActorResources(count, 0, max(cpus - 1, 0.1 * count) / count)


@contextlib.contextmanager
def connected(ray, address: str | None) -> Iterator[None]:
    """Within the block, a connection to Ray: the one this process already has, else `address`
    ("local" starts a Ray on this machine, "auto" joins the cluster this machine is part of, or
    an address such as ray://head:10001). A connection made here is closed at the end."""
    if ray.is_initialized():
        yield
        return
    ray.init(address=address or "local")
    try:
        yield
    finally:
        ray.shutdown()


def read_units(sources: Sequence[Source], files_per_unit: int) -> list[Source]:
    """The sources as units of reading: a list of files is cut into pieces of `files_per_unit`,
    so its images spread over the actors as blocks; a shard or a table is read whole, and Ray
    cuts what it yields into blocks of at most its block size."""
    units: list[Source] = []
    for source in sources:
        if isinstance(source, FileListSource) and len(source.paths) > files_per_unit:
            for start in range(0, len(source.paths), files_per_unit):
                piece = source.paths[start : start + files_per_unit]
                units.append(FileListSource(f"{source.name}[{start}:{start + len(piece)}]", piece))
        else:
            units.append(source)
    return units


def build_pipeline(ray, build_classifier, sources, skip, spec, *, out, header, run, out_format, resources, batch_size):
    """The Ray Data pipeline of the job (lazy: nothing runs until it is read)."""
    units = read_units(sources, batch_size)
    rows = ray.data.from_items([{"source": i} for i in range(len(units))], override_num_blocks=max(1, len(units)))
    items = rows.flat_map(read_source, fn_args=([ray.put(units)], [ray.put(skip)]))
    pixels = items.map_batches(decode_batch, fn_args=(spec,), batch_size=None, batch_format="numpy")
    with warnings.catch_warnings():
        # Ray >= 2.51 asks for restarts and retries through named arguments it does not have yet.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        return pixels.map_batches(
            ClassifyBlocks,
            fn_constructor_args=(build_classifier, str(out), header, run, out_format),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=resources.actors),
            num_gpus=resources.num_gpus,
            num_cpus=resources.num_cpus,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=TASK_RETRIES,
        )


def drain(dataset, *, progress: bool) -> dict[str, int]:
    """Run the pipeline; the sums of its counts (computed, failed, skipped)."""
    from tqdm import tqdm

    totals = {"computed": 0, "failed": 0, "skipped": 0}
    with tqdm(disable=not progress, unit="img", desc="classified") as bar:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for name in totals:
                totals[name] += int(np.sum(batch[name]))
            bar.update(int(np.sum(batch["computed"]) + np.sum(batch["failed"])))
    return totals


def _outcome_and_label(record: dict[str, Any]) -> tuple[Outcome, str | None]:
    label = record.get("label")
    return outcome_of(record), label if isinstance(label, str) else None


def summarise(out: Path, totals: dict[str, int], *, labels_from_folders: bool) -> JobSummary:
    """The job's counts; errors and accuracy over what the directory holds after the run (a
    record's label, else with `labels_from_folders` its file's folder name)."""
    computed, failed, skipped = totals["computed"], totals["failed"], totals["skipped"]
    summary = JobSummary(computed + failed + skipped, skipped, computed, failed)
    latest = scan_results(out, keep=_outcome_and_label).records
    summary.errors_in_output = count_failed({key: outcome for key, (outcome, _) in latest.items()})
    labelled = correct = 0
    for key, (outcome, label) in latest.items():
        if label is None and labels_from_folders:
            label = Path(key).parent.name
        if label is not None and outcome.prediction is not None:
            labelled += 1
            correct += outcome.prediction == label
    if labelled:
        summary.labelled, summary.accuracy = labelled, correct / labelled
    return summary


def classify_ray(
    build_classifier: Callable[[], DiffusionClassifier],
    sources: Sequence[Source],
    *,
    out: Path,
    address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float = 1.0,
    batch_size: int = 16,
    out_format: str = "jsonl",
    labels_from_folders: bool = False,
    retry_failed: bool = False,
    force: bool = False,
    progress: bool = True,
) -> JobSummary:
    """Classify the images of `sources` on Ray into the results directory `out`, resuming what
    it holds. `build_classifier()` builds the classifier in each actor (Ray pickles it with
    cloudpickle); `address` is Ray's (None: this process's connection, else a local Ray);
    `actors` the pool's size (default: as many as the GPUs hold at `gpus_per_actor` each, else
    one); `batch_size` the images of one block, classified by one actor into one part file;
    `out_format` "jsonl" or "parquet"; `retry_failed`, `force` and `labels_from_folders` are
    those of `fastgen.jobs.local`."""
    check_format(out_format)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    ray = require("ray", extra="ray", purpose="--ray")
    require("ray.data", extra="ray", purpose="--ray")
    out = Path(os.path.abspath(out))
    with hold_results_dir(out), connected(ray, address):
        resources = actor_resources(ray.cluster_resources(), actors, gpus_per_actor)
        learn = ray.remote(num_cpus=1, num_gpus=resources.num_gpus)(learn_job)
        header, spec = ray.get(learn.remote(build_classifier))
        contents = prepare_results_dir(out, header, force=force)
        skip = ids_to_skip(contents, retry_failed=retry_failed)
        del contents
        context = ray.data.DataContext.get_current()
        bars, context.enable_progress_bars = context.enable_progress_bars, progress
        dataset = build_pipeline(
            ray, build_classifier, sources, skip, spec, out=out, header=header, run=next_run_number(out),
            out_format=out_format, resources=resources, batch_size=batch_size,
        )  # fmt: skip
        try:
            totals = drain(dataset, progress=progress)
        finally:
            context.enable_progress_bars = bars
        return summarise(out, totals, labels_from_folders=labels_from_folders)
