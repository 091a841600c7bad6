"""Scale-out on torch.distributed: `torchrun --nproc-per-node N -m fastgen classify ... --out F`.

Each rank classifies a deterministic shard of the images and appends its records to its own part
file next to the output (`F.part-RRRRR-of-WWWWW`) through the same durable writer a one-process
run uses. When every rank is done, rank 0 merges the parts into `F` and deletes them.

Resuming works at any world size, with or without torchrun: before anything is computed, rank 0
checks `F` (a file that is not fastgen's, or whose header names other settings, is refused), cuts
an interrupted last line there, merges the part files of an interrupted run (whatever its world
size) and appends the job's header when `F` lacks it; only images absent from `F` (or, with
`--retry-failed`, whose latest record is an error) are sharded. Part files hold records only: the
header of `F` covers them. The process group is used for barriers and sums of counts only: no
home-made protocol.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
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

from fastgen.results_file import path_key, read_results, repair_tail, scan_results

if TYPE_CHECKING:
    from fastgen.api import DiffusionClassifier
    from fastgen.batch_job import JobSummary

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


# -- part files ---------------------------------------------------------------------------------
def part_path(out: Path, ranks: Ranks) -> Path:
    return out.with_name(f"{out.name}.part-{ranks.rank:05d}-of-{ranks.world_size:05d}")


def find_parts(out: Path) -> list[Path]:
    """Part files of any world size next to `out`."""
    pattern = glob.escape(out.name) + ".part-*-of-*"
    return sorted(p for p in out.parent.glob(pattern) if p.is_file())


def merge_parts(out: Path) -> int:
    """Append to `out` every record of the part files that `out` lacks, then delete the parts.

    Safe to interrupt at any point: the parts go only after the appended lines are synced, and a
    re-run skips records `out` already holds. Returns the number of records appended.
    """
    parts = find_parts(out)
    if not parts:
        return 0
    contents = scan_results(out)  # refuses an `out` that is not fastgen's, before any change
    repair_tail(out, contents)
    done = contents.records
    added = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as handle:
        for part in parts:
            for key, record in scan_results(part, strict=False).records.items():
                # A record `out` already holds is skipped; a newer one (a retried image) is not.
                if done.get(key) != record:
                    handle.write(json.dumps(record, allow_nan=False) + "\n")
                    done[key] = record
                    added += 1
        handle.flush()
        os.fsync(handle.fileno())  # once for the whole merge: a per-line sync is for live writes
    for part in parts:
        part.unlink()
    log.info("merged %d records from %d part files into %s", added, len(parts), out)
    return added


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


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (what torchrun and schedulers send) ends a run like Ctrl-C:
    the results writer closes after its last complete line instead of dying mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def on_main(ranks: Ranks, device: torch.device, step: Callable[[], object]) -> None:
    """Run `step` on rank 0 only; a ValueError it raises (a refused output file) is raised on
    rank 0 and reported on every other rank, instead of leaving them waiting at a barrier."""
    refusal: ValueError | None = None
    if ranks.is_main:
        try:
            step()
        except ValueError as error:
            refusal = error
    (refused,) = sum_over_ranks([refusal is not None], device)  # also the barrier after `step`
    if refusal is not None:
        raise refusal
    if refused:
        raise ValueError("rank 0 refused the output file; its error message says why")


# -- the distributed `classify` ----------------------------------------------------------------------
def classify_files_distributed(
    args: argparse.Namespace,
    paths: Sequence[Path],
    build_classifier: Callable[[argparse.Namespace], DiffusionClassifier],
    ranks: Ranks,
) -> JobSummary | None:
    """Run this rank's shard into its part file; rank 0 merges and returns the summary of the
    whole job, other ranks return None."""
    from fastgen.batch_job import (
        JobSummary, count_failed, job_header, labelled_accuracy, needs_computing, prepare_output, write_results,
    )  # fmt: skip
    from fastgen.results_file import ResultsWriter

    if args.out is None:
        raise ValueError("--out is required under torchrun: each rank writes a part file next to it")
    retry_failed, force = getattr(args, "retry_failed", False), getattr(args, "force", False)
    device = rank_device(args.device, ranks)
    args.device = str(device)
    init_process_group(ranks, device)
    try:
        clf = build_classifier(args)
        # Rank 0 alone checks the output against this job's settings, repairs it and merges an
        # interrupted run's parts (of any world size); every rank learns whether it refused the
        # file before computing anything.
        on_main(ranks, device, lambda: prepare_output(args.out, job_header(clf), force=force))
        done = read_results(args.out)
        todo = [p for p in sorted(paths, key=path_key) if needs_computing(done.get(path_key(p)), retry_failed=retry_failed)]
        writer = ResultsWriter(part_path(args.out, ranks))
        progress = not args.no_progress and ranks.is_main
        new = write_results(clf, shard(todo, ranks), writer, progress=progress)
        computed, failed = sum_over_ranks([len(new) - count_failed(new), count_failed(new)], device)
        if not ranks.is_main:
            return None
        merge_parts(args.out)
        summary = JobSummary(len(paths), len(paths) - len(todo), computed, failed)
        latest = read_results(args.out)
        summary.errors_in_output = count_failed(latest)
        if args.labels_from_folders:
            labelled_accuracy(summary, paths, latest)
        return summary
    finally:
        dist.destroy_process_group()
