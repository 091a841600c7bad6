"""Scale-out on torch.distributed: `torchrun --nproc-per-node N -m fastgen classify ... --out F`.

Each rank reads the same input sources in the same order and classifies a deterministic shard of
their images (every world_size-th image still to compute, by position over all sources; a rank
skips the others' tar members unread, but reads every Parquet batch) and appends its records to its own part
file next to the output (`F.part-RRRRR-of-WWWWW`, started with the job's header) through the same
durable writer a one-process run uses. When every rank is done, rank 0 merges the parts into `F`
and deletes them. Rank 0 holds `F`'s lock (`fastgen.jobs.output_lock`) for the whole job, taken
before anything reads `F` and before the model is loaded.

Resuming works at any world size, with or without torchrun: before anything is computed, rank 0
checks `F` (a file that is not fastgen's, or whose header names other settings, is refused), cuts
an interrupted last line there, merges the part files of an interrupted run (whatever its world
size) and appends the job's header when `F` lacks it; only images absent from `F` (or, with
`--retry-failed`, whose latest record is an error) are sharded; part files of another job are
refused (`fastgen.jobs.parts`). With `--retry-failed`, rank 0 retires the error records about a
whole source that reading every source did not give again (`fastgen.jobs.local`). The output is
used by its real path (`real_output`), so its lock and its parts are the same whatever path names
it. The process group is used for barriers and sums of counts only:
no home-made protocol. Whatever rank 0 fails at on the output (the lock is taken, the file is
refused, the disk fails), every other rank learns it at the next sum and stops too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from fastgen.inputs.sources import FileListSource, Source
from fastgen.jobs.local import (
    ItemSelection,
    JobSummary,
    count_failed,
    job_header,
    labelled_accuracy,
    prepare_output,
    progress_total,
    read_outcomes,
    retire_source_errors,
    selected_items,
    write_results,
)  # fmt: skip
from fastgen.jobs.output_lock import OutputLock, claim_output, real_output
from fastgen.jobs.parts import merge_parts, open_part
from fastgen.jobs.results_file import path_key

if TYPE_CHECKING:
    from fastgen.api import DiffusionClassifier

log = logging.getLogger(__name__)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Ranks that finish their shard early wait for the slowest one at a barrier; a dead rank is
# caught by torchrun itself, so the wait may be long without hiding a hang.
BARRIER_TIMEOUT = timedelta(hours=48)


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_ranks(environ: dict[str, str] | None = None) -> Ranks | None:
    """This process's place in a torchrun launch, or None when not launched by torchrun."""
    env = os.environ if environ is None else environ
    if not all(name in env for name in TORCHRUN_VARS):
        return None
    ranks = Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))
    if not 0 <= ranks.rank < ranks.world_size:
        raise ValueError(f"RANK={ranks.rank} is outside WORLD_SIZE={ranks.world_size}; check the launcher")
    return ranks


def rank_device(requested: str | None, ranks: Ranks) -> torch.device:
    """`cuda` (or no device when a GPU is present) means this rank's own GPU, cuda:LOCAL_RANK."""
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        if ranks.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {ranks.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU (--nproc-per-node)"
            )
        device = torch.device("cuda", ranks.local_rank)
    return device


def shard(items: Sequence, ranks: Ranks) -> list:
    """Every world_size-th item from position `rank`: disjoint, complete, and balanced."""
    return list(items[ranks.rank :: ranks.world_size])


# -- the process group ----------------------------------------------------------------------------
def init_process_group(ranks: Ranks, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=BARRIER_TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    log.info("rank %d of %d on %s", ranks.rank, ranks.world_size, device)


def sum_over_ranks(values: Sequence[int], device: torch.device) -> list[int]:
    """Element-wise sum over all ranks; also a barrier (it returns once every rank is here)."""
    tensor = torch.tensor(list(values), dtype=torch.int64, device=device)
    dist.all_reduce(tensor)
    return [int(v) for v in tensor.cpu()]


class Terminated(KeyboardInterrupt):
    """SIGTERM ended the run; `signum` gives the exit code a shell expects, 128 + 15."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (what torchrun and schedulers send) ends a run like Ctrl-C,
    raising `Terminated`: the results writer closes after its last complete line instead of
    dying mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_DONE, _REFUSED, _FAILED = 0, 1, 2  # what rank 0 tells the other ranks about its step


def on_main(ranks: Ranks, device: torch.device, step: Callable[[], object]) -> None:
    """Run `step` on rank 0 only. Whatever it raises is raised on rank 0 and reported on every
    other rank after the sum that ends the step, instead of leaving them waiting at the next
    barrier: a ValueError (a refused output file) as a ValueError, anything else (a failing
    disk, an interrupt) as an OSError."""
    failure: BaseException | None = None
    status = _DONE
    if ranks.is_main:
        try:
            step()
        except ValueError as error:
            failure, status = error, _REFUSED
        except BaseException as error:  # re-raised below, once the others know
            failure, status = error, _FAILED
    (status,) = sum_over_ranks([status], device)  # also the barrier after `step`
    if failure is not None:
        raise failure
    if status == _REFUSED:
        raise ValueError("rank 0 refused the output file; its error message says why")
    if status == _FAILED:
        raise OSError("rank 0 failed to prepare the output file; its error message says why")


# -- the distributed `classify` ----------------------------------------------------------------------
def classify_sources_distributed(
    build_classifier: Callable[[torch.device], DiffusionClassifier],
    sources: Sequence[Source],
    *,
    out: Path | None,
    ranks: Ranks,
    device: str | None = None,
    labels_from_folders: bool = False,
    progress: bool = True,
    retry_failed: bool = False,
    force: bool = False,
) -> JobSummary | None:
    """Run this rank's shard of the items of `sources` into its part file; rank 0 merges and
    returns the summary of the whole job, other ranks return None. Every rank reads the same
    sources in the same order and keeps every world_size-th item still to compute, by position
    over all sources (`ItemSelection`), reading the payloads of its own items only.
    `build_classifier(device)` loads the model on this rank's device (`device` as asked, with
    `cuda` meaning this rank's own GPU); `retry_failed` and `force` are those of
    `fastgen.jobs.local.classify_sources`."""
    if out is None:
        raise ValueError("--out is required under torchrun: each rank writes a part file next to it")
    out = real_output(out)
    rank_dev = rank_device(device, ranks)
    init_process_group(ranks, rank_dev)
    lock: list[OutputLock] = []  # rank 0's, once taken
    try:
        # Rank 0 takes the output's lock before anything reads it or a model is loaded.
        on_main(ranks, rank_dev, lambda: lock.append(claim_output(out)))
        clf = build_classifier(rank_dev)
        header = job_header(clf)
        # Rank 0 alone checks the output against this job's settings, repairs it and merges an
        # interrupted run's parts (of any world size); every rank learns whether it refused the
        # file before computing anything.
        on_main(ranks, rank_dev, lambda: prepare_output(out, header, force=force))
        selection = ItemSelection(
            read_outcomes(out), lambda: clf.classes.names, retry_failed=retry_failed,
            labels_from_folders=labels_from_folders, rank=ranks.rank, world_size=ranks.world_size,
        )  # fmt: skip
        total = progress_total(sources, selection) if progress and ranks.is_main else None
        writer = open_part(out, ranks.rank, ranks.world_size, header)
        items = selected_items(sources, selection)
        new = write_results(clf, items, writer, progress=progress and ranks.is_main, total=total)
        selection.done = {}  # rank 0 reads the file again at the end; the others need nothing of it
        computed, failed = sum_over_ranks([len(new) - count_failed(new), count_failed(new)], rank_dev)
        if not ranks.is_main:
            return None
        merge_parts(out, header)
        selection.warn_repeated()
        summary = JobSummary(selection.total, selection.total - selection.todo, computed, failed)
        latest = read_outcomes(out)
        if retry_failed:  # every rank read every id, so rank 0's selection saw them all
            retire_source_errors(out, latest, selection.seen, sources)
        summary.errors_in_output = count_failed(latest)
        if selection.labels:
            labelled_accuracy(summary, selection.labels, latest)
        return summary
    finally:
        for held in lock:
            held.release()
        dist.destroy_process_group()


def classify_files_distributed(
    build_classifier: Callable[[torch.device], DiffusionClassifier],
    paths: Sequence[Path],
    **options,
) -> JobSummary | None:
    """`classify_sources_distributed` over image files, sharded in the order of their path keys."""
    files = FileListSource("<files>", sorted(paths, key=path_key))
    return classify_sources_distributed(build_classifier, [files], **options)
