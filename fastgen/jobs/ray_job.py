"""Classification on Ray Data: `fastgen classify ... --ray [local|auto|ADDRESS] --out DIR`.

The job is one streaming Ray Data pipeline, built of Ray Data's own parts; Ray does the
distribution, the backpressure and the retries:

    read units ──read tasks (Datasource)──> image rows ──actor pool (map_batches)──> record rows
    (planned on    read and decode on the      pixels as    each actor: one engine   ──Datasink──> part files
     the driver)   CPU, finished ids left out  uint8        fed across blocks

* **Planning** (`plan_units`) is linear in the inputs: a list of files is filtered against the
  finished ids and de-duplicated on the driver, then cut into units of `FILES_PER_UNIT`; a shard or
  table is one unit that carries only its own finished ids. `UnitsDatasource` hands each read task
  its own units and nothing else, so a task's cost does not grow with the job.
* **Reading and decoding** run in those read tasks, in parallel on the CPUs: items come from
  `fastgen.inputs.sources` (ids as in one process) and are decoded by
  `fastgen.inputs.images.decode_image`; an 8-bit image travels as uint8 at its own size (4x less
  than float32), anything else (or a large image) as the float32 pixels at the model's size, so
  that the actor's pixels are exactly those of one process (`transport` / `received`).
* **Classifying**: an actor of the pool builds the classifier once and keeps one engine running
  (`fastgen.api.fed_stream.FedStream`); blocks of `images_per_block` images come in concurrently
  (`max_concurrent_calls_per_actor`) and join the same stream, call by call, so denoiser
  batches stay full across blocks instead of draining at the end of each, and the first block
  given is the first done. The model's ink polarity is applied there, as
  `DiffusionClassifier.prepare_pixels` does.
* **Writing** goes through `ResultsDirSink`, a Ray Datasink, in tasks that ask for no CPU (they
  run as soon as a block is classified, not after the read tasks holding the CPUs): each write
  task writes its records as one part file of the results directory (`fastgen.jobs.results_dir`),
  named by the run and a hash of its ids and written atomically, so a task Ray retries rewrites
  the same part and each id is recorded once per run.

The driver holds the directory's lock (`DIR.lock`, beside it) for the whole job, checks the
directory's header against the job's settings before anything is computed, and leaves out the ids
the directory already holds (with `retry_failed`, not those whose latest record is an error). The
job's header is learnt from a classifier built in a Ray task with an actor's resources, so the
driver itself never loads the model. An id given twice is classified once, with a warning, as in
one process.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastgen.inputs.images import ImageError, decode_image, resize_center_crop
from fastgen.inputs.items import source_of_error
from fastgen.inputs.sources import FileListSource, Item, Source, class_label
from fastgen.jobs.dir_output import hold_results_dir, ids_to_skip, prepare_results_dir
from fastgen.jobs.local import JobSummary, count_failed, job_header
from fastgen.jobs.results_dir import check_format, next_run_number, part_name, write_part
from fastgen.jobs.results_file import (
    Outcome,
    error_record,
    outcome_of,
    path_key,
    result_record,
    retirement_record,
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
TALLY = ""  # the id of a read task's tally row: what it left out (finished, given twice)
FILES_PER_UNIT = 256  # files of a list read by one unit
ROWS_PER_BLOCK = 64  # image rows of one block out of a read task
# Images one actor call takes. Blocks join the actor's running engine, so their size costs no
# denoiser batches; it sets how soon a block's records are written (a block is written when its
# last image is done). On one CPU core the first 64 digits took 17.5 s (docs/scale-out.md), so
# CPU actors take smaller blocks than GPU actors, whose throughput is many times a core's.
IMAGES_PER_BLOCK = {"gpu": 256, "cpu": 64}
# Blocks one actor works on at once, all in its one engine: enough images in flight to fill its
# denoiser batches while the last images of each block take their final looks.
CALLS_PER_ACTOR = 8


@dataclass(frozen=True)
class DecodeSpec:
    """How the model takes its pixels: what decoding in CPU tasks needs of the classifier."""

    size: tuple[int, int]
    channels: int
    max_pixels: int

    @classmethod
    def of(cls, clf: DiffusionClassifier) -> DecodeSpec:
        return cls(tuple(clf.adapter.image_hw), clf.adapter.image_channels, clf.max_pixels)


def learn_job(build_classifier: Callable[[], DiffusionClassifier]) -> tuple[dict[str, Any], DecodeSpec]:
    """The job's header and decoding spec, from a classifier built where an actor would build it."""
    clf = build_classifier()
    return job_header(clf), DecodeSpec.of(clf)


# -- planning (on the driver) ----------------------------------------------------------------------
@dataclass(frozen=True)
class ReadUnit:
    """What one read task reads of one source: the source (a piece of a file list, a shard, a
    table) and the finished ids of that source to leave out."""

    source: Source
    skip: frozenset[str] = frozenset()
    skipped_here: int = 0  # finished files already left out of a list on the driver


@dataclass(frozen=True)
class Plan:
    units: list[ReadUnit]
    duplicates: int  # files named more than once (a list's repeats), left out on the driver


def _finished_of(source_name: str, finished: list[str]) -> frozenset[str]:
    """The ids in sorted `finished` that belong to the source named `source_name` (NAME#...)."""
    prefix = path_key(source_name) + "#"
    start = bisect.bisect_left(finished, prefix)
    end = bisect.bisect_left(finished, prefix + "\U0010ffff")
    return frozenset(finished[start:end])


def plan_units(
    sources: Sequence[Source], skip: frozenset[str] | set[str], files_per_unit: int = FILES_PER_UNIT
) -> Plan:
    """The read units of the job, in one pass over the inputs and one over the finished ids."""
    finished = sorted(skip)
    units: list[ReadUnit] = []
    seen: set[str] = set()
    duplicates = 0
    for source in sources:
        if not isinstance(source, FileListSource):
            units.append(ReadUnit(source, _finished_of(source.name, finished)))
            continue
        todo, skipped = [], 0
        for path in source.paths:
            key = path_key(os.path.abspath(path))
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            if key in skip:
                skipped += 1
            else:
                todo.append(path)
        pieces = range(0, len(todo), files_per_unit)
        for n, start in enumerate(pieces):
            piece = todo[start : start + files_per_unit]
            name = f"{source.name}[{start}:{start + len(piece)}]"
            units.append(ReadUnit(FileListSource(name, piece), skipped_here=skipped if n == 0 else 0))
        if not todo and skipped:
            units.append(ReadUnit(FileListSource(source.name, []), skipped_here=skipped))
    return Plan(units, duplicates)


# -- reading and decoding (Ray read tasks) -------------------------------------------------------------
def transport(pixels: Any, spec: DecodeSpec) -> tuple[bytes, tuple[int, ...], str]:
    """(bytes, shape, kind) of a decoded image [C, h, w] for the trip to the actor: "u8" (its own
    size, uint8) when every value is a k / 255 that uint8 gives back exactly and it is not larger
    than float32 at the model's size; else "f32" at the model's size (resized here)."""
    import torch

    as_u8 = torch.round(pixels * 255.0).clamp(0, 255).to(torch.uint8)
    model_bytes = 4 * spec.channels * spec.size[0] * spec.size[1]
    if pixels.numel() <= model_bytes and torch.equal(as_u8.float() / 255.0, pixels):
        return as_u8.numpy().tobytes(), tuple(pixels.shape), "u8"
    resized = resize_center_crop(pixels, spec.size).float()
    return resized.numpy().tobytes(), tuple(resized.shape), "f32"


def received(data: bytes, shape: Sequence[int], kind: str, spec: DecodeSpec) -> Any:
    """The pixels at the model's size, [C, H, W] float32 in [0, 1], as `load_pixels` gives them."""
    import torch

    if kind == "u8":
        decoded = torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(*shape).float() / 255.0
        return resize_center_crop(decoded, spec.size)
    return torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(*shape).clone()


def _row(item_id: str, label: str | None = None, error: str = "", image: tuple | None = None) -> dict[str, Any]:
    data, shape, kind = image if image is not None else (b"", (), "")
    return {
        "id": item_id, "label": label or "", "error": error, "pixels": data, "shape": list(shape), "kind": kind,
        "skipped": 0, "duplicates": 0,
    }  # fmt: skip


def _decoded_row(item: Item, spec: DecodeSpec) -> dict[str, Any]:
    key = path_key(item.id)
    if item.error or item.payload is None:
        return _row(key, item.label, item.error or "the item could not be read")
    try:
        pixels = decode_image(item.payload, channels=spec.channels, max_pixels=spec.max_pixels)
        return _row(key, item.label, image=transport(pixels, spec))
    except ImageError as error:
        return _row(key, item.label, str(error))


def _table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=row_schema())


def row_schema():
    """The columns of an image row (built where pyarrow is imported: the read tasks)."""
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("label", pa.string()), ("error", pa.string()), ("pixels", pa.binary()),
        ("shape", pa.list_(pa.int32())), ("kind", pa.string()), ("skipped", pa.int64()), ("duplicates", pa.int64()),
    ])  # fmt: skip


def read_units(units: Sequence[ReadUnit], spec: DecodeSpec, rows_per_block: int = ROWS_PER_BLOCK) -> Iterator[Any]:
    """Blocks (Arrow tables) of decoded image rows of `units`, then one tally row: the finished ids
    it left out and the ids it met twice (each image is read once)."""
    skipped = sum(unit.skipped_here for unit in units)
    duplicates = 0
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for unit in units:
        left_out = 0

        def wanted(item_id: str, label: str | None, skip=unit.skip) -> bool:
            nonlocal left_out
            keep = path_key(item_id) not in skip
            left_out += not keep
            return keep

        for item in unit.source.items(wanted):
            key = path_key(item.id)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            rows.append(_decoded_row(item, spec))
            if len(rows) >= rows_per_block:
                yield _table(rows)
                rows = []
        skipped += left_out
    tally = _row(TALLY)
    tally.update(skipped=skipped, duplicates=duplicates)
    yield _table([*rows, tally])


def units_datasource(units: list[ReadUnit], spec: DecodeSpec, rows_per_block: int = ROWS_PER_BLOCK):
    """A Ray Data Datasource over the units: `get_read_tasks(n)` cuts them into at most n
    contiguous groups, and each read task carries its own group only."""
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class UnitsDatasource(Datasource):
        def __init__(self):
            super().__init__()
            self._units = units

        def __getstate__(self):  # the read tasks carry their own units; the datasource needs none there
            return {**self.__dict__, "_units": []}

        def get_name(self) -> str:
            return "FastgenInputs"

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
            count = max(1, min(parallelism, len(self._units)))
            bounds = np.linspace(0, len(self._units), count + 1).round().astype(int)
            tasks = []
            for start, end in zip(bounds[:-1], bounds[1:]):
                group = self._units[start:end]
                if not group:
                    continue
                read = _bind_read(group, spec, rows_per_block)
                tasks.append(ReadTask(read, BlockMetadata(None, None, None, input_files=None)))
            return tasks

    return UnitsDatasource()


def _bind_read(group: list[ReadUnit], spec: DecodeSpec, rows_per_block: int) -> Callable[[], Iterator[Any]]:
    return lambda: read_units(group, spec, rows_per_block)


# -- classifying (the actor pool) ----------------------------------------------------------------------
def record_of(clf: DiffusionClassifier, key: str, outcome: Any) -> dict[str, Any]:
    """The record of one image, as the one-process job writes it."""
    if isinstance(outcome, Exception):
        return error_record(key, outcome)
    record = result_record(key, outcome)
    if clf.calibration is not None:
        record["probabilities"] = clf.probabilities(outcome)
    return record


class ClassifyRows:
    """An actor of the pool: builds the classifier once and one engine fed by every block it is
    given (several at once); returns each block's records as JSON, tally rows passed on."""

    def __init__(self, build_classifier, spec: DecodeSpec):
        from fastgen.api.fed_stream import FedStream

        self.clf = build_classifier()
        self.spec = spec
        self.stream = FedStream(self.clf)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in batch["id"]]
        outcomes: dict[str, Any] = {}
        todo = []
        for i, key in enumerate(ids):
            if key == TALLY:
                continue
            if batch["error"][i]:
                outcomes[key] = ImageError(str(batch["error"][i]))
            else:
                pixels = received(batch["pixels"][i], batch["shape"][i], str(batch["kind"][i]), self.spec)
                todo.append((key, pixels))
        outcomes.update(self.stream.classify(todo))
        records = []
        for i, key in enumerate(ids):
            if key == TALLY:
                records.append("")
                continue
            record = record_of(self.clf, key, outcomes[key])
            label = class_label(str(batch["label"][i]) or None, self.clf.classes.names)
            if label is not None:
                record["label"] = label  # the source's class: what report, calibrate and accuracy read
            records.append(json.dumps(record))
        return {
            "id": np.array(ids, dtype=object),
            "record": np.array(records, dtype=object),
            "skipped": np.asarray(batch["skipped"]),
            "duplicates": np.asarray(batch["duplicates"]),
        }


# -- writing (a Ray Datasink) --------------------------------------------------------------------------
def results_dir_sink(out: Path, header: dict[str, Any], run: int, out_format: str, images_per_part: int | None = None):
    """A Datasink writing each write task's records as one part file of the results directory:
    each block's records as soon as the block is classified, or with `images_per_part` at least
    that many records gathered into one part (fewer files, first records later)."""
    from ray.data.datasource import Datasink

    class ResultsDirSink(Datasink):
        def __init__(self):
            self.totals = {"computed": 0, "failed": 0, "skipped": 0, "duplicates": 0, "parts": 0}
            self.source_errors: set[str] = set()  # errors about a whole source written this run

        @property
        def min_rows_per_write(self) -> int | None:
            return images_per_part

        def get_name(self) -> str:
            return "FastgenResultsDir"

        def write(self, blocks, ctx) -> dict[str, int]:
            import pyarrow as pa

            counts: dict[str, Any] = {"computed": 0, "failed": 0, "skipped": 0, "duplicates": 0, "parts": 0}
            records, source_errors = [], []
            for block in blocks:
                table = block if isinstance(block, pa.Table) else pa.Table.from_pandas(block)
                columns = table.to_pydict()
                for key, text, skipped, duplicates in zip(
                    columns["id"], columns["record"], columns["skipped"], columns["duplicates"]
                ):
                    if key == TALLY:
                        counts["skipped"] += int(skipped)
                        counts["duplicates"] += int(duplicates)
                        continue
                    record = json.loads(text)
                    counts["failed" if "error" in record else "computed"] += 1
                    records.append(record)
                    if "error" in record and source_of_error(key) is not None:
                        source_errors.append(key)
            if records:
                ids = [r["path"] for r in records]
                write_part(out, part_name(run, ids, out_format), header, records)
                counts["parts"] = 1
            counts["source_errors"] = source_errors
            return counts

        def on_write_complete(self, write_result) -> None:
            for counts in write_result.write_returns:
                self.source_errors.update(counts.pop("source_errors", []))
                for name, value in counts.items():
                    self.totals[name] += value

    return ResultsDirSink()


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


def build_pipeline(ray, build_classifier, plan: Plan, spec: DecodeSpec, *, resources, images_per_block: int):
    """The Ray Data pipeline up to the records (lazy: nothing runs until it is written)."""
    read_tasks = max(1, min(len(plan.units), 4 * int(ray.cluster_resources().get("CPU", 1))))
    rows = ray.data.read_datasource(units_datasource(plan.units, spec), override_num_blocks=read_tasks)
    # Blocks of `images_per_block` rows: each is one actor call, and several calls run in an actor
    # at once, all feeding its one engine (a read task's rows in one block would be one call).
    rows = rows.repartition(target_num_rows_per_block=images_per_block)
    with warnings.catch_warnings():
        # Ray >= 2.51 asks for restarts and retries through named arguments it does not have yet.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        return rows.map_batches(
            ClassifyRows,
            fn_constructor_args=(build_classifier, spec),
            batch_size=images_per_block,
            batch_format="numpy",
            zero_copy_batch=True,
            compute=ray.data.ActorPoolStrategy(
                size=resources.actors,
                max_tasks_in_flight_per_actor=CALLS_PER_ACTOR,
                max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
                enable_true_multi_threading=True,
            ),  # fmt: skip
            num_gpus=resources.num_gpus,
            num_cpus=resources.num_cpus,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=TASK_RETRIES,
        )


def _outcome_and_label(record: dict[str, Any]) -> tuple[Outcome, str | None]:
    label = record.get("label")
    return outcome_of(record), label if isinstance(label, str) else None


def summarise(out: Path, totals: dict[str, int], *, labels_from_folders: bool, files: set[str]) -> JobSummary:
    """The job's counts; errors and accuracy over what the directory holds after the run (a
    record's label, else with `labels_from_folders` its file's folder name: image files only,
    `files`, never a shard's or table's folder)."""
    computed, failed, skipped = totals["computed"], totals["failed"], totals["skipped"]
    summary = JobSummary(computed + failed + skipped, skipped, computed, failed)
    latest = scan_results(out, keep=_outcome_and_label).records
    summary.errors_in_output = count_failed({key: outcome for key, (outcome, _) in latest.items()})
    labelled = correct = 0
    for key, (outcome, label) in latest.items():
        if label is None and labels_from_folders and key in files:
            label = Path(key).parent.name
        if label is not None and outcome.prediction is not None:
            labelled += 1
            correct += outcome.prediction == label
    if labelled:
        summary.labelled, summary.accuracy = labelled, correct / labelled
    return summary


def retire_stale_source_errors(
    out: Path,
    header: dict[str, Any],
    run: int,
    out_format: str,
    before: Sequence[str],
    again: set[str],
    sources: Sequence[Source],
) -> int:
    """With `retry_failed`: the errors about a whole source that the directory held, of a source
    read in this run, that this run did not write again (the source now reads whole: it was
    replaced) are withdrawn by retirement lines in a part of their own; how many."""
    names = {path_key(source.name) for source in sources}
    stale = sorted(key for key in before if source_of_error(key) in names and key not in again)
    if stale:
        retirements = [retirement_record(key, "its source was read to its end without this error") for key in stale]
        write_part(out, part_name(run, [f"retired:{key}" for key in stale], out_format), header, retirements)
        log.info("%s: %d error record(s) about a whole source retired: the source now reads whole", out, len(stale))
    return len(stale)


def classify_ray(
    build_classifier: Callable[[], DiffusionClassifier],
    sources: Sequence[Source],
    *,
    out: Path,
    address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float = 1.0,
    images_per_block: int | None = None,
    images_per_part: int | None = None,
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
    one); `images_per_block` the images of one actor call (they join the actor's running engine,
    so a smaller block costs no denoiser batches; default `IMAGES_PER_BLOCK` of the actors'
    kind); `images_per_part` None to write each actor task's records as soon as they are done,
    or the least records of one part file (fewer files, the first records later); `out_format`
    "jsonl" or "parquet"; `retry_failed`, `force` and `labels_from_folders` are those of
    `fastgen.jobs.local`."""
    check_format(out_format)
    for name, value in (("images_per_block", images_per_block), ("images_per_part", images_per_part)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    ray = require("ray", extra="ray", purpose="--ray")
    require("ray.data", extra="ray", purpose="--ray")
    require("pyarrow", extra="ray", purpose="--ray")
    out = Path(os.path.realpath(out))
    with hold_results_dir(out), connected(ray, address):
        resources = actor_resources(ray.cluster_resources(), actors, gpus_per_actor)
        if images_per_block is None:
            images_per_block = IMAGES_PER_BLOCK["gpu" if resources.num_gpus else "cpu"]
        learn = ray.remote(num_cpus=1, num_gpus=resources.num_gpus)(learn_job)
        header, spec = ray.get(learn.remote(build_classifier))
        contents = prepare_results_dir(out, header, force=force)
        skip = ids_to_skip(contents, retry_failed=retry_failed)
        source_errors_before = [k for k, o in contents.records.items() if o.failed and source_of_error(k)]
        del contents
        plan = plan_units(sources, skip)
        files = {
            path_key(os.path.abspath(p)) for source in sources if isinstance(source, FileListSource)
            for p in source.paths
        } if labels_from_folders else set()  # fmt: skip
        del skip
        context = ray.data.DataContext.get_current()
        bars, context.enable_progress_bars = context.enable_progress_bars, progress
        run = next_run_number(out)
        sink = results_dir_sink(out, header, run, out_format, images_per_part)
        try:
            records = build_pipeline(
                ray, build_classifier, plan, spec, resources=resources, images_per_block=images_per_block
            )
            # A write task only writes a file: it asks for no CPU, so that it runs as soon as its
            # block is classified instead of queueing behind read tasks for the CPU they hold.
            records.write_datasink(sink, ray_remote_args={"num_cpus": 0})
        finally:
            context.enable_progress_bars = bars
        if retry_failed:
            retire_stale_source_errors(out, header, run, out_format, source_errors_before, sink.source_errors, sources)
        duplicates = plan.duplicates + sink.totals["duplicates"]
        if duplicates:
            log.warning("%d images were given more than once; each was classified once", duplicates)
        return summarise(out, sink.totals, labels_from_folders=labels_from_folders, files=files)
