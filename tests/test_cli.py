"""`fastgen classify` on a folder of real image files: formats, a corrupt file, resuming."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastgen.cli import main


@pytest.fixture
def image_folder(tmp_path):
    """cat/ and dog/ subfolders with PNG and JPEG files in RGB, L, RGBA and P modes, plus a
    corrupt file."""
    rng = np.random.default_rng(7)
    root = tmp_path / "images"
    files = []
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i, (mode, suffix) in enumerate([("RGB", "png"), ("L", "png"), ("RGBA", "png"), ("P", "png"), ("RGB", "jpg")]):
            array = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
            path = root / label / f"{i}_{mode}.{suffix}"
            Image.fromarray(array).convert(mode).save(path)
            files.append(path)
    (root / "dog" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    return root


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def test_classify_folder_writes_a_line_per_image_and_resumes(model_dirs, image_folder, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    argv = [
        "classify", str(image_folder), "--model", str(model_dirs["pixel-text"]), "--classes", "cat,dog",
        "--out", str(out), "--policy", "exhaustive", "--n-samples", "4", "--batch-size", "16",
        "--labels-from-folders", "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    code, err = _run(argv, capsys)
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 11
    failed = [r for r in lines if "error" in r]
    assert len(failed) == 1 and failed[0]["path"].endswith("corrupt.png")
    assert "cannot be decoded" in failed[0]["error"]
    for record in (r for r in lines if "error" not in r):
        assert set(record) == {"path", "prediction", "scores", "unet_evals"}
        assert record["prediction"] in ("cat", "dog") and record["unet_evals"] == 8
        assert set(record["scores"]) == {"cat", "dog"}
        assert record["prediction"] == min(record["scores"], key=record["scores"].get)
    assert "computed: 10" in err and "failed: 1" in err and "accuracy:" in err

    before = out.read_bytes()
    code, err = _run(argv, capsys)
    assert code == 0 and "computed: 0" in err and "skipped (already in output): 11" in err
    assert out.read_bytes() == before


def test_a_truncated_last_line_is_redone(model_dirs, image_folder, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    argv = [
        "classify", str(image_folder / "cat"), "--model", str(model_dirs["pixel-text"]), "--classes", "cat,dog",
        "--out", str(out), "--policy", "exhaustive", "--n-samples", "3", "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert _run(argv, capsys)[0] == 0
    complete = out.read_text().splitlines()
    out.write_text("\n".join(complete[:-1]) + "\n" + complete[-1][:20])  # a crash mid-line
    code, err = _run(argv, capsys)
    assert code == 0 and "computed: 1" in err
    redone = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(redone) == len(complete)
    for record in map(json.loads, complete):
        # the redone image sits in another batch: equal up to float rounding
        assert redone[record["path"]]["scores"] == pytest.approx(record["scores"], abs=1e-5)
        assert redone[record["path"]]["prediction"] == record["prediction"]


def test_cli_reports_bad_arguments_clearly(model_dirs, image_folder, capsys):
    code, err = _run(["classify", str(image_folder), "--model", str(model_dirs["pixel-text"]), "--classes", "cat,cat"], capsys)
    assert code == 2 and "duplicate class names" in err
    with pytest.raises(SystemExit):
        main(["classify", str(image_folder), "--loss", "l7"])
    assert "invalid choice: 'l7'" in capsys.readouterr().err


def test_module_entry_point_runs_env():
    result = subprocess.run([sys.executable, "-m", "fastgen", "env", "--json"], capture_output=True, text=True, check=True)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["torch"] and info["devices"]
