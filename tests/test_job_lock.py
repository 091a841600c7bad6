"""One writer per results file: a second run on the same --out is refused at once, with the
holder's pid and host, and leaves the file untouched; a lock left by a dead run never blocks.

Runs that must be caught while running are frozen (SIGSTOP) once they have written a record, so
nothing here races the end of a run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_thread_env
from PIL import Image

from fastgen.commands.main import main as cli_main
from fastgen.jobs import distributed
from fastgen.jobs.distributed import Ranks, on_main
from fastgen.jobs.output_lock import OutputInUse, OutputLock, claim_output, lock_path
from fastgen.jobs.parts import find_parts
from fastgen.jobs.results_file import ResultsFileError, is_record

N_IMAGES = 12
OPTIONS = ["--policy", "exhaustive", "--n-samples", "20", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lock_digits") / "seven"
    root.mkdir()
    rng = np.random.default_rng(11)
    for i in range(N_IMAGES):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(root / f"{i:02d}.png")
    return root


def _command(images: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "fastgen", "classify", str(images), "--out", str(out), *OPTIONS]


def _records(out: Path) -> int:
    lines = out.read_bytes().split(b"\n")[:-1] if out.exists() else []
    return sum(is_record(json.loads(line)) for line in lines if line.strip())


def _start_and_freeze(command: list[str], out: Path) -> subprocess.Popen:
    """Start `command` and freeze it (SIGSTOP) once `out` holds a record, with images still to do."""
    proc = subprocess.Popen(command, env=one_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while _records(out) == 0:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first run wrote no record in time"
        time.sleep(0.01)
    proc.send_signal(signal.SIGSTOP)
    done = _records(out)  # frozen: this cannot change while we look
    if done >= N_IMAGES:
        proc.kill()
        pytest.fail(f"the first run had finished all {N_IMAGES} images before it could be frozen")
    return proc


# -- the lock itself ------------------------------------------------------------------------------
def test_a_second_lock_is_refused_with_the_holders_pid_and_host(tmp_path):
    out = tmp_path / "r.jsonl"
    first = OutputLock(out)
    first.acquire()
    assert lock_path(out).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    with pytest.raises(OutputInUse, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
        OutputLock(out).acquire()
    first.release()
    assert not lock_path(out).exists()  # removed when the holder ends
    second = OutputLock(out)
    second.acquire()
    second.release()


def test_a_lock_file_left_by_a_dead_run_does_not_block(tmp_path):
    out = tmp_path / "r.jsonl"
    lock_path(out).write_text("999999 elsewhere\n")  # no process holds it: flock died with its owner
    lock = OutputLock(out)
    lock.acquire()
    assert lock_path(out).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    lock.release()


def test_a_lock_file_removed_between_open_and_lock_is_not_trusted(tmp_path, monkeypatch):
    """A run that opened the lock file just before its holder removed it must not hold that
    removed file's lock (no one else would see it): it starts again on the new file."""
    out = tmp_path / "r.jsonl"
    stale = lock_path(out)
    stale.write_text("1 gone\n")
    orphan = os.open(stale, os.O_RDWR)
    stale.unlink()  # the previous holder's release, between our open and our flock
    real_open = OutputLock._open
    opened = iter([orphan])
    monkeypatch.setattr(OutputLock, "_open", lambda self: next(opened, None) or real_open(self))
    lock = OutputLock(out)
    lock.acquire()
    assert lock_path(out).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    with pytest.raises(OutputInUse):
        OutputLock(out).acquire()  # the lock that counts is on the file the path names
    lock.release()


def test_a_refused_file_releases_the_lock_and_stays_untouched(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"my notes\n")
    with pytest.raises(ResultsFileError, match="not a fastgen results file"):
        claim_output(notes)
    assert notes.read_bytes() == b"my notes\n" and not lock_path(notes).exists()
    claim_output(notes.with_name("new.jsonl")).release()


# -- rank 0's failures reach every rank ------------------------------------------------------------
def _sums_seen(monkeypatch, answer: int) -> list[list[int]]:
    seen: list[list[int]] = []

    def fake_sum(values, device):
        seen.append(list(values))
        return [answer]

    monkeypatch.setattr(distributed, "sum_over_ranks", fake_sum)
    return seen


@pytest.mark.parametrize(("error", "status"), [(ValueError("refused"), 1), (OSError(28, "No space left"), 2)])
def test_rank_0_tells_the_other_ranks_before_raising(monkeypatch, error, status):
    seen = _sums_seen(monkeypatch, answer=status)

    def step():
        raise error

    with pytest.raises(type(error)) as raised:
        on_main(Ranks(0, 2, 0), torch.device("cpu"), step)
    assert raised.value is error and seen == [[status]]  # the others learned it before rank 0 left


@pytest.mark.parametrize(("status", "expected"), [(1, ValueError), (2, OSError)])
def test_the_other_ranks_stop_when_rank_0_failed(monkeypatch, status, expected):
    seen = _sums_seen(monkeypatch, answer=status)
    with pytest.raises(expected, match="rank 0"):
        on_main(Ranks(1, 2, 1), torch.device("cpu"), lambda: pytest.fail("only rank 0 runs the step"))
    assert seen == [[0]]


# -- one output, whatever path names it -------------------------------------------------------------
def _paths_to(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A results file, and other paths that name it: a link to it, a path through a link to its
    folder, and `up/../results.jsonl` with `up` a link into a sibling folder (the kernel follows
    `up` before `..`; `os.path.abspath` would fold it to another folder)."""
    real = tmp_path / "real" / "results.jsonl"
    (tmp_path / "real").mkdir()
    (tmp_path / "real-sibling").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link.jsonl").symlink_to(real)
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "elsewhere" / "up").symlink_to(tmp_path / "real-sibling", target_is_directory=True)
    others = [tmp_path / "link.jsonl", tmp_path / "alias" / "results.jsonl"]
    return real, [*others, tmp_path / "elsewhere" / "up" / ".." / "real" / "results.jsonl"]


def test_every_path_to_a_held_file_is_refused(tmp_path):
    real, others = _paths_to(tmp_path)
    real.write_text("")
    held = OutputLock(real)
    held.acquire()
    try:
        for other in others:
            with pytest.raises(OutputInUse, match=f"pid {os.getpid()} on host"):
                claim_output(other)
    finally:
        held.release()
    claim_output(others[0]).release()  # free once released, through any path


def test_a_run_through_a_link_to_a_file_another_run_writes_is_refused(digit_folder, tmp_path, capsys):
    real, others = _paths_to(tmp_path)
    real.write_text("")
    held = OutputLock(real)
    held.acquire()
    try:
        for other in others:
            assert cli_main(["classify", str(digit_folder), "--out", str(other), *OPTIONS]) == 2
            assert "being written by another fastgen run" in capsys.readouterr().err
    finally:
        held.release()
    assert real.read_bytes() == b"" and sorted(p.name for p in real.parent.iterdir()) == ["results.jsonl"]


# -- two real runs -----------------------------------------------------------------------------------
def test_a_second_run_is_refused_and_a_killed_runs_lock_does_not_block(digit_folder, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    first = _start_and_freeze(_command(digit_folder, out), out)
    try:
        before = out.read_bytes()
        second = subprocess.run(
            _command(digit_folder, out), env=one_thread_env(), capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 2, second.stderr[-3000:]
        refusal = [line for line in second.stderr.splitlines() if "error" in line]
        assert len(refusal) == 1 and f"pid {first.pid} on host {socket.gethostname()}" in refusal[0]
        assert out.read_bytes() == before  # the refused run neither read-repaired nor wrote anything
    finally:
        first.kill()  # SIGKILL, even while frozen: the kernel drops its lock
        first.communicate(timeout=120)
    assert lock_path(out).exists()  # left behind by the killed run
    finished = _records(out)
    capsys.readouterr()
    assert cli_main(["classify", str(digit_folder), "--out", str(out), *OPTIONS]) == 0
    assert f"computed: {N_IMAGES - finished}, skipped (already in output): {finished}" in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert sorted(r["path"] for r in records) == sorted(str(p) for p in digit_folder.glob("*.png"))
    assert not lock_path(out).exists()


def test_under_torchrun_a_refused_rank_0_stops_every_rank(digit_folder, tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text("")
    held = OutputLock(out)
    held.acquire()
    try:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        args = ["classify", str(digit_folder), "--out", str(out), *OPTIONS]
        run = subprocess.run(
            [*launcher, "-m", "fastgen", *args], env=one_thread_env(), capture_output=True, text=True, timeout=300
        )
    finally:
        held.release()
    # The launch ended (rank 1 learned of the refusal instead of waiting at a barrier), refused.
    assert run.returncode != 0
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in run.stderr
    assert out.read_bytes() == b"" and find_parts(out) == []
