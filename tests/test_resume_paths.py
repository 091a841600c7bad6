"""Resuming does not depend on the working directory: records hold absolute, normalised paths,
and a file written when records held paths as typed still resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastgen.commands.main import main as cli_main

N_IMAGES = 4
OPTIONS = ["--policy", "exhaustive", "--n-samples", "4", "--device", "cpu", "--no-progress"]


@pytest.fixture
def tree(tmp_path) -> Path:
    """tmp/A/many/zero/*.png, seeded noise digits."""
    folder = tmp_path / "A" / "many" / "zero"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(N_IMAGES):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return tmp_path


def _classify(images: str, out: Path, capsys) -> str:
    capsys.readouterr()
    assert cli_main(["classify", images, "--out", str(out), *OPTIONS]) == 0
    return capsys.readouterr().err


def _record_paths(out: Path) -> list[str]:
    return [json.loads(line)["path"] for line in out.read_text().splitlines()[1:]]


def _expected(tree: Path) -> list[str]:
    return sorted(str(tree / "A" / "many" / "zero" / f"{i}.png") for i in range(N_IMAGES))


def test_a_resume_from_another_directory_computes_nothing(tree, tmp_path, monkeypatch, capsys):
    out = tmp_path / "x" / "r.jsonl"
    monkeypatch.chdir(tree / "A")
    _classify("many/zero", out, capsys)
    assert sorted(_record_paths(out)) == _expected(tree)  # absolute, whatever was typed
    before = out.read_bytes()
    monkeypatch.chdir(tree)
    err = _classify("A/many/zero/../zero", out, capsys)
    assert f"computed: 0, skipped (already in output): {N_IMAGES}" in err
    assert out.read_bytes() == before  # each image once


@pytest.mark.parametrize(
    ("results_in", "resume_from"),
    [
        ("A", "."),  # the file beside the inputs' folder, resumed from elsewhere
        ("x", "A"),  # the file elsewhere, resumed from the directory the old run was started in
    ],
)
def test_a_file_with_paths_as_typed_still_resumes(tree, monkeypatch, capsys, results_in, resume_from):
    """Files from before records held absolute paths recorded `many/zero/0.png`, relative to the
    directory the run was started in (here A)."""
    out = tree / results_in / "r.jsonl"
    monkeypatch.chdir(tree / "A")
    _classify("many/zero", out, capsys)
    header, *records = out.read_text().splitlines()
    typed = [{**json.loads(r), "path": os.path.relpath(json.loads(r)["path"])} for r in records]
    assert all(r["path"].startswith("many") for r in typed)
    old_file = "\n".join([header, *map(json.dumps, typed)]) + "\n"
    out.write_text(old_file)
    monkeypatch.chdir(tree / resume_from)
    err = _classify(str(tree / "A" / "many" / "zero"), out, capsys)
    assert f"computed: 0, skipped (already in output): {N_IMAGES}" in err
    assert out.read_text() == old_file
