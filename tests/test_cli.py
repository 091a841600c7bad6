"""`fastgen classify` on a folder of real image files: formats, a corrupt file, resuming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import file_lines, small_classifier, zero_png
from PIL import Image

from fastgen import ImageError
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
        for i, (mode, suffix) in enumerate(
            [("RGB", "png"), ("L", "png"), ("RGBA", "png"), ("P", "png"), ("RGB", "jpg")]
        ):
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
    header, lines = file_lines(out)
    assert header["model"] == str(model_dirs["pixel-text"]) and header["settings"]["classes"] == ["cat", "dog"]
    assert len(lines) == 11
    failed = [r for r in lines if "error" in r]
    assert len(failed) == 1 and failed[0]["path"].endswith("corrupt.png")
    assert "cannot be decoded" in failed[0]["error"]
    for record in (r for r in lines if "error" not in r):
        assert set(record) == {"path", "prediction", "scores", "unet_evals", "partial_scores"}
        assert set(record["partial_scores"]) == {"cat", "dog"}
        assert record["prediction"] in ("cat", "dog") and record["unet_evals"] == 8
        assert set(record["scores"]) == {"cat", "dog"}
        assert record["prediction"] == min(record["scores"], key=record["scores"].get)
    assert "computed: 10" in err and "failed: 1" in err and "errors in output: 1" in err and "accuracy:" in err

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
    header, records = file_lines(out)
    redone = {r["path"]: r for r in records}
    assert len(redone) == len(complete) - 1 == len(records)
    for record in map(json.loads, complete[1:]):
        # the redone image sits in another batch: equal up to float rounding
        assert redone[record["path"]]["scores"] == pytest.approx(record["scores"], abs=1e-5)
        assert redone[record["path"]]["prediction"] == record["prediction"]


def test_cli_reports_bad_arguments_clearly(model_dirs, image_folder, capsys):
    code, err = _run(
        ["classify", str(image_folder), "--model", str(model_dirs["pixel-text"]), "--classes", "cat,cat"], capsys
    )
    assert code == 2 and "duplicate class names" in err
    with pytest.raises(SystemExit):
        main(["classify", str(image_folder), "--loss", "l7"])
    assert "invalid choice: 'l7'" in capsys.readouterr().err


def test_module_entry_point_runs_env():
    result = subprocess.run(
        [sys.executable, "-m", "fastgen", "env", "--json", "--torch"], capture_output=True, text=True, check=True
    )
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["torch"] and info["devices"] and info["torch_devices"] and info["cpu_threads"] >= 1
    assert isinstance(info["cuda_available"], bool)


BACKEND_OPTIONS = [
    "batch_sizes=1,32,64",
    "fp16=true",
    "exporter=torchscript",
    "processes=null",
    "threads=2",
    "alpha=0.5",
]


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


def _classify_argv(images, model, out, *extra):
    return [
        "classify", str(images), "--model", str(model), "--classes", "cat,dog", "--out", str(out),
        "--policy", "exhaustive", "--n-samples", "3", "--no-progress", "--device", "cpu", *extra,
    ]  # fmt: skip


def test_an_out_file_that_is_not_fastgens_is_refused_untouched(model_dirs, image_folder, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    code, err = _run(_classify_argv(image_folder, model_dirs["pixel-text"], notes), capsys)
    assert code == 2 and notes.read_text() == "my notes\n"
    assert err.startswith("fastgen classify: error: ") and "not a fastgen results file" in err
    assert len(err.strip().splitlines()) == 1


def test_a_resume_with_other_settings_is_refused_unless_forced(model_dirs, image_folder, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    model = model_dirs["pixel-text"]
    assert _run(_classify_argv(image_folder / "cat", model, out), capsys)[0] == 0
    before = out.read_bytes()
    code, err = _run(_classify_argv(image_folder / "cat", model, out, "--seed", "1"), capsys)
    assert code == 2 and "seed: 0 in the file, 1 now" in err and "--force" in err
    assert out.read_bytes() == before
    code, err = _run(_classify_argv(image_folder / "cat", model, out, "--seed", "1", "--force"), capsys)
    assert code == 0 and "computed: 0" in err and "skipped (already in output): 5" in err
    objects = [json.loads(line) for line in out.read_text().splitlines()]
    assert out.read_bytes().startswith(before) and len(objects) == 5 + 2
    assert objects[-1]["fastgen"] == "results" and objects[-1]["settings"]["seed"] == 1
    # the last header now describes the job: the same settings resume without --force
    after = out.read_bytes()
    assert _run(_classify_argv(image_folder / "cat", model, out, "--seed", "1"), capsys)[0] == 0
    assert out.read_bytes() == after


def test_a_file_from_before_headers_resumes_and_gains_a_header(model_dirs, image_folder, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    model = model_dirs["pixel-text"]
    assert _run(_classify_argv(image_folder / "cat", model, out), capsys)[0] == 0
    header_line, *record_lines = out.read_text().splitlines(keepends=True)
    legacy = "".join(record_lines[:3])  # an older fastgen's file: records only, two images missing
    out.write_text(legacy)
    code, err = _run(_classify_argv(image_folder / "cat", model, out), capsys)
    assert code == 0 and "computed: 2" in err and "skipped (already in output): 3" in err
    text = out.read_text()
    assert text.startswith(legacy) and text[len(legacy) :].splitlines(keepends=True)[0] == header_line
    redone = {r["path"]: r for r in map(json.loads, text.splitlines()[4:])}
    for record in map(json.loads, record_lines[3:]):  # in other batches now: equal up to rounding
        assert redone[record["path"]]["scores"] == pytest.approx(record["scores"], abs=1e-5)
    assert len(redone) == 2


def test_retry_failed_redoes_a_fixed_image_and_the_summary_counts_errors(model_dirs, image_folder, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    argv = _classify_argv(image_folder / "dog", model_dirs["pixel-text"], out)
    code, err = _run(argv, capsys)
    assert code == 0 and "failed: 1, errors in output: 1" in err and "--retry-failed" in err
    code, err = _run(argv, capsys)  # nothing fixed, nothing retried: the error is still reported
    assert code == 0 and "computed: 0" in err and "failed: 0, errors in output: 1" in err
    corrupt = image_folder / "dog" / "corrupt.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(corrupt)
    before = out.read_bytes()
    code, err = _run([*argv, "--retry-failed"], capsys)
    assert code == 0 and "computed: 1" in err and "skipped (already in output): 5" in err
    assert "failed: 0, errors in output: 0" in err
    assert out.read_bytes().startswith(before)  # the error record stays; the new record follows it
    records = [r for r in file_lines(out)[1] if r["path"].endswith("corrupt.png")]
    assert "error" in records[0] and records[-1]["prediction"] in ("cat", "dog") and len(records) == 2
    from fastgen.jobs.results_file import path_key, read_results

    assert read_results(out)[path_key(corrupt)] == records[-1]


def test_an_oversized_image_is_its_own_error_record_and_never_stops_a_run(model_dirs, image_folder, tmp_path, capsys):
    bomb = image_folder / "cat" / "bomb.png"
    bomb.write_bytes(zero_png(14000, 14000))  # 190 KB on disk, 196 million pixels decoded
    out = tmp_path / "results.jsonl"
    argv = _classify_argv(image_folder / "cat", model_dirs["pixel-text"], out)
    code, err = _run(argv, capsys)
    assert code == 0 and "computed: 5" in err and "failed: 1" in err
    records = {Path(r["path"]).name: r for r in file_lines(out)[1]}
    assert len(records) == 6 and all("prediction" in r for name, r in records.items() if name != "bomb.png")
    assert "14000x14000" in records["bomb.png"]["error"] and "--max-pixels" in records["bomb.png"]["error"]
    code, err = _run(argv, capsys)  # the resume gets past it too
    assert code == 0 and "computed: 0" in err and "skipped (already in output): 6" in err

    clf = small_classifier(model_dirs["pixel-text"], "pixel-text")
    good = sorted((image_folder / "cat").glob("*_RGB.png"))[0]
    results = clf.classify([good, bomb, good], on_error="return")
    assert isinstance(results[1], ImageError) and "over the limit" in str(results[1])
    assert results[0].prediction == results[2].prediction and np.allclose(results[0].errors, results[2].errors)


def test_max_pixels_option_sets_the_limit(model_dirs, image_folder, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    code, err = _run(_classify_argv(image_folder / "cat", model_dirs["pixel-text"], out, "--max-pixels", "143"), capsys)
    assert code == 0 and "computed: 0" in err and "failed: 5" in err  # every image is 12 x 12 = 144 pixels
    assert all("over the limit of 143" in r["error"] for r in file_lines(out)[1])


# -- option values, output paths, start-up ------------------------------------------------------------
@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--batch-size", "0", "argument --batch-size: expected an integer >= 1, got '0'"),
        ("--seed", "-1", "argument --seed: expected an integer in 0..4294967295, got '-1'"),
        ("--seed", "1.5", "argument --seed: expected an integer"),
        ("--max-pixels", "0", "argument --max-pixels: expected an integer >= 1"),
        ("--alpha", "1.5", "argument --alpha: expected a number between 0 and 1"),
        ("--weighting", "nan", "argument --weighting: expected a finite number, got 'nan'"),
        ("--n-samples", "10,0", "argument --n-samples: expected integers >= 1"),
        ("--min-samples", "1", "argument --min-samples: expected an integer >= 2"),
        ("--check-every", "-3", "argument --check-every: expected an integer >= 1"),
        ("--dtype", "fp8", "argument --dtype: invalid choice: 'fp8'"),
    ],
)
def test_bad_option_values_are_one_line_errors_naming_the_option(image_folder, capsys, option, value, message):
    with pytest.raises(SystemExit) as stop:
        main(["classify", str(image_folder), option, value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("fastgen classify: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "encode_batch_size" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--policy", "exhaustive", "--alpha", "0.01"], "--alpha does not apply to --policy exhaustive"),
        (["--policy", "exhaustive", "--n-samples", "5,10"], "--n-samples takes one number with --policy exhaustive"),
        (
            ["--policy", "paired", "--min-samples", "30", "--max-samples", "10"],
            "--min-samples 30 is more than --max-samples 10",
        ),
        (["--policy", "stages", "--n-samples", "5,10,20", "--to-keep", "2,1"], "one value per stage"),
        (["--n-samples", "4"], "--n-samples does not apply to the model's default policy (paired)"),
        (["--device", "gpu"], "device 'gpu' is not a device name torch knows"),
    ],
)
def test_options_that_would_be_ignored_or_cannot_combine_are_refused(
    model_dirs, image_folder, tmp_path, capsys, extra, message
):
    out = tmp_path / "results.jsonl"
    argv = ["classify", str(image_folder), "--model", str(model_dirs["pixel-text"]), "--classes", "cat,dog",
            "--out", str(out), "--no-progress", "--device", "cpu", *extra]  # fmt: skip
    code, err = _run(argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_unwritable_output_path_is_a_one_line_error(model_dirs, image_folder, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a folder\n")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    for out, reason in ((notes / "results.jsonl", "is a file, not a folder"), (folder, "is a folder")):
        code, err = _run(_classify_argv(image_folder, model_dirs["pixel-text"], out), capsys)
        assert code == 2 and err.startswith("fastgen classify: error: ") and reason in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert notes.read_text() == "not a folder\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_a_one_line_error(model_dirs, image_folder, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, err = _run(_classify_argv(image_folder, model_dirs["pixel-text"], locked / "results.jsonl"), capsys)
    finally:
        locked.chmod(0o755)
    assert code == 2 and "cannot write the results file" in err and "permission denied" in err
    assert len(err.strip().splitlines()) == 1


def test_help_and_env_import_neither_torch_nor_diffusers():
    """`fastgen --help` and `fastgen env` answer without importing the heavy libraries (importing
    torch alone takes seconds); a subcommand's own help loads only that subcommand."""
    script = (
        "import contextlib, io, sys\n"
        "from fastgen.commands.main import main\n"
        "for argv in (['--help'], ['env', '--help']):\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(io.StringIO()):\n"
        "            main(argv)\n"
        "    except SystemExit as stop:\n"
        "        assert stop.code == 0, stop.code\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    assert main(['env', '--json']) == 0\n"
        "assert 'cpu_cores' in out.getvalue()\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'PIL', 'scipy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_without_out_the_header_and_records_go_to_stdout(model_dirs, image_folder, capsys):
    argv = [
        "classify", str(image_folder / "cat"), "--model", str(model_dirs["pixel-text"]), "--classes", "cat,dog",
        "--policy", "exhaustive", "--n-samples", "3", "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    header, *records = [json.loads(line) for line in captured.out.splitlines()]
    assert header["fastgen"] == "results" and header["settings"]["classes"] == ["cat", "dog"]
    assert len(records) == 5 and all(r["prediction"] in ("cat", "dog") for r in records)
    assert "errors in output" not in captured.err and "computed: 5" in captured.err
