"""What a results directory's readers and a run's start-up never do to a user's data: a damaged
part is named and skipped (its images count as not done), never deleted or rewritten; a part
another live process is still writing is never removed; two paths to one directory are one
output, under one lock."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fastgen.commands.main import main
from fastgen.jobs.dir_output import claim_results_dir, ids_to_skip, prepare_results_dir
from fastgen.jobs.output_lock import OutputInUse
from fastgen.jobs.results_dir import part_name, remove_temporary_parts, write_dir_header, write_part
from fastgen.jobs.results_file import read_results, results_header

CLASSES = ["cat", "dog"]
HEADER = results_header("tiny", {"classes": CLASSES})


def records(start: int, n: int) -> list[dict]:
    return [
        {"path": f"/data/{CLASSES[i % 2]}/{i:03d}.png", "prediction": CLASSES[i % 2],
         "scores": {"cat": 0.4 + 0.1 * (i % 2), "dog": 0.5 - 0.1 * (i % 2)}, "unet_evals": 4}
        for i in range(start, start + n)
    ]  # fmt: skip


def write_block(folder: Path, run: int, block: list[dict], out_format: str) -> Path:
    return write_part(folder, part_name(run, [r["path"] for r in block], out_format), HEADER, block)


@pytest.fixture
def folder_with_damage(tmp_path) -> tuple[Path, Path, list[dict]]:
    """A results directory of three parts, one of them a Parquet part cut short (no footer)."""
    pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "results"
    write_dir_header(folder, HEADER)
    write_block(folder, 1, records(0, 10), "jsonl")
    damaged = write_block(folder, 1, records(10, 10), "parquet")
    write_block(folder, 1, records(20, 10), "parquet")
    damaged.write_bytes(damaged.read_bytes()[:-50])
    return folder, damaged, records(10, 10)


def test_a_damaged_parquet_part_is_named_skipped_and_left_as_it_is(folder_with_damage, caplog, tmp_path):
    folder, damaged, lost = folder_with_damage
    before = damaged.read_bytes()
    with caplog.at_level(logging.WARNING):
        held = read_results(folder)
    assert len(held) == 20 and not {r["path"] for r in lost} & set(held)
    warning = next(r.getMessage() for r in caplog.records if str(damaged) in r.getMessage())
    assert "magic bytes not found in footer" in warning.lower() and "computed again" in warning
    contents = prepare_results_dir(folder, HEADER)  # a re-run's start-up
    skipped = ids_to_skip(contents, retry_failed=True)
    assert len(skipped) == 20 and not {r["path"] for r in lost} & skipped  # a re-run computes them
    assert damaged.read_bytes() == before
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["report", str(folder), "--out", str(tmp_path / "report.html")]) == 0
    assert any(str(damaged) in r.getMessage() for r in caplog.records) and damaged.read_bytes() == before


def test_a_jsonl_part_with_a_bad_line_is_named_in_the_warning(tmp_path, caplog):
    folder = tmp_path / "results"
    write_dir_header(folder, HEADER)
    part = write_block(folder, 1, records(0, 3), "jsonl")
    part.write_bytes(part.read_bytes() + b'{"path": "/data/cat/cut')  # a write cut short
    with caplog.at_level(logging.WARNING):
        assert len(read_results(folder)) == 3
    assert any(str(part) in r.getMessage() and "line 5" in r.getMessage() for r in caplog.records)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_start_up_removes_only_the_temporary_parts_no_live_process_writes(tmp_path):
    folder = tmp_path / "results"
    write_dir_header(folder, HEADER)
    host, hour_ago = socket.gethostname(), time.time() - 7200
    name = part_name(1, ["x"], "jsonl")
    live = folder / f".tmp-{os.getpid()}@{host}-{uuid.uuid4().hex}-{name}"  # this process is writing it
    dead = folder / f".tmp-{_dead_pid()}@{host}-{uuid.uuid4().hex}-{name}"
    other_host_recent = folder / f".tmp-1@another-host-{uuid.uuid4().hex}-{name}"
    other_host_old = folder / f".tmp-2@another-host-{uuid.uuid4().hex}-{name}"
    unnamed = folder / f".tmp-{uuid.uuid4().hex}-{name}"  # an older fastgen's: its name has no writer
    for path in (live, dead, other_host_recent, other_host_old, unnamed):
        path.write_text("half a part")
    os.utime(other_host_old, (hour_ago, hour_ago))
    assert remove_temporary_parts(folder) == 3
    assert sorted(p.name for p in folder.iterdir()) == sorted(["header.json", live.name, other_host_recent.name])


def test_a_part_is_written_under_a_name_that_says_who_writes_it(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(Path(src).name), real_replace(src, dst)))
    write_block(tmp_path, 1, records(0, 2), "jsonl")
    assert len(seen) == 1 and seen[0].startswith(f".tmp-{os.getpid()}@{socket.gethostname()}-")


def test_a_link_to_a_held_results_directory_is_the_same_output(tmp_path):
    real = tmp_path / "results"
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "up").symlink_to(tmp_path / "other", target_is_directory=True)
    lock = claim_results_dir(real)
    try:
        # up/.. is the folder above `other`: the one `results` is in (abspath would fold it to `elsewhere`)
        for alias in (tmp_path / "link", tmp_path / "elsewhere" / "up" / ".." / "results"):
            with pytest.raises(OutputInUse, match="being written by another fastgen run"):
                claim_results_dir(alias)
    finally:
        lock.release()
    claim_results_dir(tmp_path / "link").release()
