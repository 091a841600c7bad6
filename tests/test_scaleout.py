"""Scale-out and interruption of `fastgen classify`, through the real command line.

Multi-process runs launch the real torchrun (`python -m torch.distributed.run`, gloo on CPU) as a
subprocess; their output must equal a one-process run line for line after sorting, and a run
stopped midway must finish on re-run without recomputing any image it had finished. A run is
stopped midway without racing its end: its processes are frozen (SIGSTOP) once a record appears,
checked to be unfinished, sent the signal and only then let go on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import default_ctrl_c, file_lines, one_thread_env
from PIL import Image

from fastgen.commands.main import main as cli_main
from fastgen.jobs.distributed import Ranks, launched_ranks, shard
from fastgen.jobs.parts import find_parts, merge_parts, part_path
from fastgen.jobs.results_file import is_header, results_header

N_IMAGES = 48
# One image's rows (3 classes x 16 samples) fill exactly one batch, so every batch holds the same
# rows whatever the sharding, and the floating-point results are bit-identical across runs.
OPTIONS = [
    "--classes", "cat,dog,bird", "--policy", "exhaustive", "--n-samples", "16", "--batch-size", "48",
    "--device", "cpu", "--local-files-only", "--no-progress", "--labels-from-folders",
]  # fmt: skip


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scaleout_images")
    g = torch.Generator().manual_seed(7)
    for i in range(N_IMAGES):
        folder = root / ("cat", "dog")[i % 2]
        folder.mkdir(exist_ok=True)
        base = torch.rand(1, 1, 3, generator=g)
        pixels = (0.7 * base + 0.3 * torch.rand(12, 12, 3, generator=g)) * 255
        Image.fromarray(pixels.to(torch.uint8).numpy()).save(folder / f"img{i:03d}.png")
    return root


def _args(model: Path, images: Path, out: Path) -> list[str]:
    return ["classify", str(images), "--model", str(model), "--out", str(out), *OPTIONS]


@pytest.fixture(scope="module")
def one_process_lines(model_dirs, image_folder, tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("one") / "results.jsonl"
    assert cli_main(_args(model_dirs["pixel-text"], image_folder, out)) == 0
    lines = out.read_text().splitlines()
    header, records = file_lines(out)
    assert len(records) == N_IMAGES and all("scores" in r for r in records)
    assert header["settings"]["policy"] == {"name": "exhaustive", "n_samples": 16}
    return sorted(lines)  # the header line too: every run of the same job writes the same one


def _torchrun(nproc: int, args: list[str]) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*launcher, "-m", "fastgen", *args]


def _complete_lines(path: Path) -> list[str]:
    """The record lines a resume will keep: newline-terminated, valid JSON, not the header."""
    data = path.read_bytes() if path.exists() else b""
    good = []
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        if not is_header(json.loads(line)):
            good.append(line.decode().rstrip("\n"))
    return good


def _child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (torchrun's workers)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, ...
        except (OSError, IndexError):
            continue  # a process that ended meanwhile
        if int(after_name[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _start_and_stop(
    command: list[str], watch: Callable[[], list[Path]] | Path, sig: int, *, workers: bool = False
) -> subprocess.CompletedProcess:
    """Start `command`; once a first complete line appears in a watched file, freeze the process
    (or, with `workers`, its child processes), check that at least two images are still to do, send
    `sig` and let it go on: the signal is then handled midway through the run, never after it."""
    proc = subprocess.Popen(
        command,
        env=one_thread_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_ctrl_c,
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            files = watch() if callable(watch) else [watch]
            if any(_complete_lines(f) for f in files):
                targets = _child_pids(proc.pid) if workers else [proc.pid]
                for pid in targets:
                    os.kill(pid, signal.SIGSTOP)
                files = watch() if callable(watch) else [watch]
                finished = sum(len(_complete_lines(f)) for f in files)
                if finished >= N_IMAGES - 1:  # frozen: this cannot change while we look
                    for pid in targets:
                        os.kill(pid, signal.SIGCONT)
                    pytest.fail(f"the run had finished {finished} of {N_IMAGES} images before it could be stopped")
                for pid in targets:
                    os.kill(pid, sig)  # pending until the process runs again
                    os.kill(pid, signal.SIGCONT)
                break
            time.sleep(0.005)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _summary_counts(stderr: str) -> tuple[int, int]:
    line = next(line for line in stderr.splitlines() if line.startswith("images:"))
    parts = dict(item.split(": ") for item in line.split(", "))
    return int(parts["computed"]), int(parts["skipped (already in output)"])


# -- unit checks of the pieces ------------------------------------------------------------------
def test_launched_ranks_reads_torchrun_environment():
    assert launched_ranks({}) is None
    assert launched_ranks({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Ranks(1, 4, 1)
    with pytest.raises(ValueError, match="outside WORLD_SIZE"):
        launched_ranks({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})


def test_shards_are_disjoint_complete_and_balanced():
    items = [f"img{i}" for i in range(11)]
    shards = [shard(items, Ranks(r, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == sorted(items)
    assert [len(s) for s in shards] == [4, 4, 3]


def _jsonl(*objects: dict) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


def test_merge_parts_keeps_each_record_once_and_repairs_truncation(tmp_path):
    header = results_header("builtin:digits", {"classes": ["cat", "dog"], "seed": 0})
    out = tmp_path / "r.jsonl"
    out.write_text(_jsonl(header, {"path": "/a.png", "prediction": "cat"}))
    part0 = part_path(out, 0, 2)
    part0.write_text(
        _jsonl(header, {"path": "/a.png", "prediction": "cat"}, {"path": "/b.png", "prediction": "dog"})
        + '{"path": "/c.png", "predic'  # a crash mid-line
    )  # fmt: skip
    # a part of an earlier run at another world size counts too, even one from before parts had
    # headers: the header of `out` covers it
    part_path(out, 2, 3).write_text(_jsonl({"path": "/d.png", "prediction": "cat"}))
    assert merge_parts(out, header) == 2
    assert find_parts(out) == []
    header_back, records = file_lines(out)
    assert header_back == header and [r["path"] for r in records] == ["/a.png", "/b.png", "/d.png"]


# -- the real launcher -----------------------------------------------------------------------------
def test_two_ranks_write_the_same_lines_as_one_process(model_dirs, image_folder, one_process_lines, tmp_path):
    out = tmp_path / "results.jsonl"
    run = subprocess.run(
        _torchrun(2, _args(model_dirs["pixel-text"], image_folder, out)),
        env=one_thread_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(out.read_text().splitlines()) == one_process_lines
    assert find_parts(out) == []
    assert _summary_counts(run.stderr) == (N_IMAGES, 0)
    assert "accuracy:" in run.stderr


def test_stopped_two_rank_run_resumes_without_recomputing(model_dirs, image_folder, one_process_lines, tmp_path):
    out = tmp_path / "results.jsonl"
    args = _args(model_dirs["pixel-text"], image_folder, out)
    # SIGTERM to both workers, as a scheduler sends it to every process of a job: they stop midway.
    stopped = _start_and_stop(_torchrun(2, args), lambda: [out, *find_parts(out)], signal.SIGTERM, workers=True)
    assert stopped.returncode != 0
    parts = find_parts(out)
    assert parts and file_lines(out)[1] == [], "the run finished before it could be stopped"
    finished = [line for part in parts for line in _complete_lines(part)]
    assert 0 < len(finished) < N_IMAGES
    # Re-running the same command merges the stopped run's parts and computes only the rest.
    resumed = subprocess.run(_torchrun(2, args), env=one_thread_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _summary_counts(resumed.stderr) == (N_IMAGES - len(finished), len(finished))
    lines = out.read_text().splitlines()
    assert set(finished) <= set(lines)
    assert sorted(lines) == one_process_lines and find_parts(out) == []


@pytest.mark.parametrize(("sig", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_leaves_a_valid_resumable_file(
    model_dirs, image_folder, one_process_lines, tmp_path, capsys, sig, exit_code
):
    out = tmp_path / "results.jsonl"
    args = _args(model_dirs["pixel-text"], image_folder, out)
    stopped = _start_and_stop([sys.executable, "-m", "fastgen", *args], out, sig)
    assert stopped.returncode == exit_code, stopped.stderr[-3000:]
    assert "run the same command again to resume" in stopped.stderr
    data = out.read_bytes()
    assert data.endswith(b"\n")
    finished = _complete_lines(out)
    assert 0 < len(finished) < N_IMAGES and len(finished) + 1 == len(data.splitlines())  # + the header
    # Resume in this process: only the rest is computed, the file ends up complete.
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    assert _summary_counts(captured.err) == (N_IMAGES - len(finished), len(finished))
    assert out.read_text().splitlines()[1 : len(finished) + 1] == finished
    assert sorted(out.read_text().splitlines()) == one_process_lines


def test_truncated_last_line_is_cut_and_its_image_redone(model_dirs, image_folder, tmp_path, capsys):
    images = tmp_path / "few"
    images.mkdir()
    for path in sorted(image_folder.rglob("*.png"))[:4]:
        (images / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "results.jsonl"
    args = _args(model_dirs["pixel-text"], images, out)
    assert cli_main(args) == 0
    complete = out.read_text().splitlines()  # the header and 4 records
    # a crash in the middle of writing the last line
    out.write_text("\n".join(complete[:4]) + "\n" + complete[4][: len(complete[4]) // 2])
    capsys.readouterr()
    assert cli_main(args) == 0
    assert _summary_counts(capsys.readouterr().err) == (1, 3)
    assert out.read_text().splitlines() == complete
