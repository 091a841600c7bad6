"""`fastgen classify` on a folder of real image files: formats, a corrupt file, resuming."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastgen.commands.main import main


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


BACKEND_OPTIONS = ["batch_sizes=1,32,64", "fp16=true", "exporter=torchscript", "processes=null", "threads=2", "alpha=0.5"]


def test_bench_and_classify_parse_backend_options_identically(tmp_path):
    """One KEY=VALUE parser serves every command: bench accepts exactly what classify does."""
    from fastgen.commands.main import build_parser

    flags = [arg for option in BACKEND_OPTIONS for arg in ("--backend-option", option)]
    classify = build_parser("classify").parse_args(["classify", str(tmp_path), *flags])
    bench = build_parser("bench").parse_args(["bench", *flags])
    assert classify.backend_options == bench.backend_options
    assert dict(bench.backend_options) == {
        "batch_sizes": (1, 32, 64), "fp16": True, "exporter": "torchscript", "processes": None, "threads": 2, "alpha": 0.5,
    }  # fmt: skip


def test_cli_choices_come_from_the_registries():
    from fastgen.backends import BACKENDS
    from fastgen.commands.main import build_parser
    from fastgen.engine.policies import POLICIES
    from fastgen.losses import LOSSES

    parser = build_parser("classify")
    sub = next(a for a in parser._actions if a.dest == "command").choices["classify"]
    choices = {a.dest: tuple(a.choices) for a in sub._actions if a.choices is not None}
    assert choices["policy"] == tuple(POLICIES) and choices["loss"] == tuple(LOSSES)
    assert choices["backend"] == tuple(BACKENDS)
