"""Worker processes (`processes=`) stay usable after a chunk fails, end when their parent dies
however it dies, and leave Ctrl-C to the parent: one message, not one per worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import default_ctrl_c
from torch import nn

from fastgen.backends.worker_processes import WorkerProcesses

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


class ChunkProbe(nn.Module):
    """x_t * scale + t + cond. A chunk holding t == -1 raises (after creating `marker`); one
    holding t == -2 waits for `marker` first, so it answers after the other chunk has failed."""

    shares_prefix = False

    def __init__(self, marker: str = ""):
        super().__init__()
        self.marker = marker
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if bool((t == -1).any()):
            Path(self.marker).touch()
            raise ValueError("chunk refused (stand-in)")
        if bool((t == -2).any()):
            deadline = time.monotonic() + 60
            while not os.path.exists(self.marker) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)  # lets the failure reach the parent first
        return x_t * self.scale + t[:, None].to(x_t.dtype) + cond


def _inputs(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(rows, 3, generator=g),
        torch.randint(0, 1000, (rows,), generator=g),
        torch.randn(rows, 3, generator=g),
    )


def test_a_failed_chunk_leaves_the_pool_usable(tmp_path):
    """The failing call's other chunk grew its worker's output buffer; the next calls must still
    find it (they failed with KeyError('out') when the late answer was dropped)."""
    probe = ChunkProbe(str(tmp_path / "failed"))
    pool = WorkerProcesses(2, probe)
    try:
        x_t, _, cond = _inputs(8, seed=1)
        t = torch.tensor([-1] * 4 + [-2] * 4)  # worker 0 fails, worker 1 answers late
        with pytest.raises(RuntimeError, match="worker process 0: ValueError: chunk refused"):
            pool.forward(x_t, t, cond)
        for rows, seed in ((6, 2), (8, 3), (3, 4)):  # smaller, equal, odd: no buffer grows on worker 1 at first
            x_t, t, cond = _inputs(rows, seed)
            with torch.no_grad():
                want = probe(x_t, t, cond)
            torch.testing.assert_close(pool.forward(x_t, t, cond), want, rtol=0, atol=0)
    finally:
        pool.close()


PARENT_SCRIPT = """
import sys, threading, time
import torch
sys.path.insert(0, {tests!r})
from test_worker_lifecycle import ChunkProbe
from fastgen.backends.worker_processes import WorkerProcesses

def start(pools):
    pools.append(WorkerProcesses(2, ChunkProbe()))
    pools[0].forward(torch.ones(4, 3), torch.arange(4), torch.ones(4, 3))  # both workers serving

if __name__ == "__main__":
    pools = []
    if sys.argv[1] == "thread":  # started from a thread that has ended by the time the parent dies
        starter = threading.Thread(target=start, args=(pools,))
        starter.start()
        starter.join()
    else:
        start(pools)
    assert pools[0].forward(torch.ones(2, 3), torch.arange(2), torch.ones(2, 3)).shape == (2, 3)
    print(*pools[0].pids, flush=True)
    time.sleep(600)
"""


def _start_parent(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, list[int]]:
    """A parent process with two workers, in its own session (a process group of its own);
    returns it and the workers' pids, once both workers have answered a call."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT.format(tests=str(TESTS)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen(
        [sys.executable, str(script), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True, preexec_fn=default_ctrl_c,
    )  # fmt: skip
    line = parent.stdout.readline()  # blocks until the workers served a call, or the parent failed
    if not line.strip():
        parent.kill()
        raise AssertionError(f"the parent process failed to start its workers: {parent.communicate()[1][-2000:]}")
    return parent, [int(pid) for pid in line.split()]


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever adopted it, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _survivors(pids: list[int], within_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process states from /proc")


@linux_only
@pytest.mark.parametrize("mode", ["main", "thread"])
def test_workers_end_when_their_parent_is_killed(tmp_path, mode):
    """kill -9 of the parent: from the main thread the kernel signals the workers; from a thread
    (whose end must not stop them) they notice their parent is gone."""
    parent, pids = _start_parent(tmp_path, mode)
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        assert _survivors(pids) == [], "worker processes outlived their killed parent"
    finally:
        for pid in pids:  # never leave one behind, whatever the outcome
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        parent.stdout.close()
        parent.stderr.close()


@linux_only
def test_ctrl_c_prints_one_message_and_stops_the_workers(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: only the parent
    reports it; the workers stop with it."""
    parent, pids = _start_parent(tmp_path, "main")
    try:
        os.killpg(parent.pid, signal.SIGINT)
        _, stderr = parent.communicate(timeout=60)  # EOF once the workers, which share the pipe, are gone too
        assert parent.returncode != 0
        assert stderr.count("KeyboardInterrupt") == 1 and stderr.count("Traceback") == 1, stderr[-3000:]
        assert _survivors(pids) == []
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
