"""Every option a subcommand accepts has its effect or is refused with one line that names it as
typed; list options parse the same however they are given; no command writes over a user's file.
Most refusals come before any model loads: a model path that does not exist shows that (its
error would come first otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastgen.commands.main import build_parser, main

MISSING_MODEL = "/nonexistent/fastgen-model"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def _refused(argv: list[str], capsys) -> str:
    """The one error line of a command that must fail with exit code 2."""
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's refusals
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"fastgen {argv[0]}: error: "), err
    return err


# -- list options: one parse however given --------------------------------------------------------
def _backend_options(command: str, *flags: str) -> dict:
    from fastgen.commands.options import backend_options_from_pairs

    argv = [command, "images"] if command == "classify" else [command]
    args = build_parser(command).parse_args([*argv, *flags])
    return backend_options_from_pairs(args.backend_options)


@pytest.mark.parametrize("command", ["classify", "bench"])
def test_a_list_option_given_once_is_a_list_of_one_not_its_characters(command):
    assert _backend_options(command, "--backend-option", f"providers={CPU}") == {"providers": (CPU,)}
    twice = _backend_options(command, "--backend-option", f"providers={CUDA}", "--backend-option", f"providers={CPU}")
    assert (
        twice == _backend_options(command, "--backend-option", f"providers={CUDA},{CPU}") == {"providers": (CUDA, CPU)}
    )
    sizes = ("--backend-option", "batch_sizes=1", "--backend-option", "batch_sizes=32,64")
    assert _backend_options(command, *sizes) == {"batch_sizes": (1, 32, 64)}


def test_a_scalar_backend_option_given_twice_is_refused():
    with pytest.raises(ValueError, match=r"--backend-option threads= is given twice \(2 and 4\)"):
        _backend_options("classify", "--backend-option", "threads=2", "--backend-option", "threads=4")


def test_classify_hands_the_backend_a_list_of_providers(monkeypatch, tmp_path):
    from fastgen.api import DiffusionClassifier
    from fastgen.commands.options import classifier_from_args

    received = {}

    def capture(model, **kwargs):
        received.update(kwargs)
        raise RuntimeError("stop before loading")

    monkeypatch.setattr(DiffusionClassifier, "from_pretrained", capture)
    for flags in (["--backend-option", f"providers={CPU}"], ["--backend-option", f"providers={CPU}"] * 2):
        args = build_parser("classify").parse_args(["classify", str(tmp_path), "--backend", "onnxruntime", *flags])
        with pytest.raises(RuntimeError, match="stop before loading"):
            classifier_from_args(args)
        assert list(received["backend_options"]["providers"]) == [CPU] * (len(flags) // 2)


def test_bench_hands_its_engine_a_list_of_providers():
    import torch

    from fastgen.commands.bench import engine_settings

    for flags in (["--backend-option", f"providers={CPU}"], ["--backend-option", f"providers={CPU},{CUDA}"]):
        args = build_parser("bench").parse_args(["bench", "--backend", "onnxruntime", *flags])
        options = engine_settings(args, torch.device("cpu"), (1, 8, 8))["backend_options"]
        assert list(options["providers"]) == flags[1].removeprefix("providers=").split(",")


# -- numeric ranges and choices, named as typed ---------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--repeats", "0"], "argument --repeats: expected an integer >= 1, got '0'"),
        (["bench", "--latency-images", "0"], "argument --latency-images: expected an integer >= 1, got '0'"),
        (["bench", "--seed", "-1"], "argument --seed: expected an integer in 0..4294967295, got '-1'"),
        (["bench", "--engine-dtype", "half"], "argument --engine-dtype: invalid choice: 'half'"),
        (["calibrate", "r.jsonl", "--labels-from-folders", "--out", "c.json", "--seed", "-1"], "argument --seed:"),
        (
            ["calibrate", "r.jsonl", "--labels-from-folders", "--out", "c.json", "--fit-fraction", "1"],
            "argument --fit-fraction: expected a number between 0 and 1",
        ),
        (["export", "--dtype", "half"], "argument --dtype: invalid choice: 'half'"),
        (["classify", ".", "--error-weights", "1,-2"], "argument --error-weights: expected none or weights >= 0"),
        (["classify", ".", "--error-weights", "0,0"], "argument --error-weights: expected none or weights >= 0"),
    ],
)
def test_out_of_range_values_are_one_line_errors_naming_the_option(argv, message, capsys):
    assert message in _refused(argv, capsys)


# -- options that would be ignored ----------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["classify", ".", "--export-dir", "cache"], "--export-dir is the export cache of --backend onnxruntime"),
        (["classify", ".", "--backend", "torch", "--export-dir", "cache"], "--backend torch, which exports nothing"),
        (["classify", ".", "--backend-option", "threads=2"], "--backend-option needs a backend"),
        (["bench", "--backend", "eager", "--export-dir", "cache"], "--backend eager, which exports nothing"),
        (["bench", "--backend", "torch", "--export-dir", "cache"], "--backend torch, which exports nothing"),
        (["bench", "--n-images", "3", "--latency-images", "5"], "--latency-images 5 is more than --n-images 3"),
        (["bench", "--skip-latency", "--latency-images", "2"], "--latency-images does not apply with --skip-latency"),
        (["bench", "--sd2-random", "sd2"], "--sd2-random builds the model it benchmarks: leave --model out"),
        (["export", "--batch-sizes", "1,8,8"], "--batch-sizes is a TensorRT shape profile"),
    ],
)
def test_options_that_would_be_ignored_are_refused_before_the_model_loads(argv, message, tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")  # classify needs an input to get as far as its options
    argv = [str(images) if a == "." else a for a in argv]
    assert message in _refused([*argv, "--model", MISSING_MODEL], capsys)


def test_bench_export_dir_holds_the_engine_export(tmp_path):
    """The engine's settings carry --export-dir to from_pretrained (it was dropped)."""
    import torch

    from fastgen.commands.bench import engine_settings

    args = build_parser("bench").parse_args(["bench", "--backend", "onnxruntime", "--export-dir", str(tmp_path)])
    assert engine_settings(args, torch.device("cpu"), (1, 8, 8))["export_dir"] == tmp_path


def test_bench_fastest_on_cpu_refuses_an_export_dir(tmp_path):
    import torch

    from fastgen.commands.bench import engine_settings

    args = build_parser("bench").parse_args(["bench", "--export-dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"\(--backend fastest\), which exports nothing"):
        engine_settings(args, torch.device("cpu"), (1, 8, 8))


# -- bench --sd2-random benchmarks random images of the model's size -------------------------------
def test_sd2_random_benchmarks_random_images_of_the_built_model(model_dirs, monkeypatch, tmp_path, capsys):
    import fastgen.testing.sd_sized as sd_sized
    from fastgen.commands import bench

    # The SD-2-sized build is replaced by a tiny pixel model: the images must be made for it.
    monkeypatch.setattr(sd_sized, "make_sd2_base_sized", lambda folder: model_dirs["pixel-text"])
    seen = []
    side_by_side = bench.benchmark.side_by_side

    def spy(clf, engine_clf, pixels, **kwargs):
        seen.extend(pixels)
        return side_by_side(clf, engine_clf, pixels, **kwargs)

    monkeypatch.setattr(bench.benchmark, "side_by_side", spy)
    argv = ["bench", "--sd2-random", str(tmp_path / "sd2"), "--classes", "cat,dog", "--n-images", "2",
            "--n-samples", "2", "--repeats", "1", "--skip-latency", "--skip-policies", "--backend", "eager",
            "--device", "cpu", "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from fastgen import DiffusionClassifier

    clf = DiffusionClassifier.from_pretrained(model_dirs["pixel-text"], classes=["cat", "dog"], device="cpu")
    shape = (clf.adapter.image_channels, *clf.adapter.image_hw)
    assert len(seen) == 2 and all(tuple(image.shape) == shape for image in seen)
    assert shape != (1, 8, 8) and report["settings"]["image_source"] == "seeded random"


def test_sd2_random_refuses_a_folder_with_other_files(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    err = _refused(["bench", "--sd2-random", str(folder)], capsys)
    assert "--sd2-random" in err and "not empty" in err and (folder / "notes.txt").read_text() == "mine"


# -- demo ------------------------------------------------------------------------------------------
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DEMO = ["demo", "--n-images", "3", "--policy", "exhaustive", "--n-samples", "3", "--device", "cpu", "--json"]


def test_demo_shifts_with_report_is_refused_and_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "report"
    err = _refused(["demo", "--shifts", "--report", str(folder), "--model", MISSING_MODEL], capsys)
    assert "--report does not apply to --shifts" in err and not folder.exists()


def test_demo_accuracy_and_report_do_not_depend_on_the_class_order(tmp_path, capsys, monkeypatch):
    import fastgen.eval.demo as demo
    from fastgen.eval.demo import load_demo_data

    monkeypatch.setattr(demo, "baseline_accuracy", lambda data, test_x: 0.5)  # seconds of fitting, not under test

    assert main(DEMO) == 0
    default = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    folder = tmp_path / "report"
    assert main([*DEMO, "--classes", ",".join(reversed(DIGITS)), "--report", str(folder)]) == 0
    reordered = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reordered["predictions"] == default["predictions"] and reordered["accuracy"] == default["accuracy"]
    truth = load_demo_data(3).test_y
    assert default["accuracy"] == pytest.approx(np.mean(np.array(default["predictions"]) == truth))
    assert default["accuracy"] > 0
    # the report's images sit in folders named after their true digit, whatever the class order
    written = sorted((folder / "images").glob("*/*.png"), key=lambda path: path.name)  # 00000.png ...
    assert [p.parent.name for p in written] == [DIGITS[y] for y in truth]


def test_demo_refuses_classes_that_name_no_label(capsys):
    err = _refused(["demo", "--classes", "0,1,2", "--n-images", "2", "--device", "cpu"], capsys)
    assert "--classes: '0', '1', '2' name no held-out digits label" in err


def test_demo_report_into_a_file_is_refused_untouched(tmp_path, capsys):
    mine = tmp_path / "mine.txt"
    mine.write_text("mine")
    err = _refused(["demo", "--report", str(mine), "--model", MISSING_MODEL], capsys)
    assert "--report" in err and "is a file" in err and mine.read_text() == "mine"


# -- env -------------------------------------------------------------------------------------------
def test_env_reports_onnxruntime_gpu_as_onnxruntime(monkeypatch, capsys):
    from fastgen.commands import env

    versions = {"onnxruntime-gpu": "1.19.2", "torch": "2.5.0"}
    monkeypatch.setattr(env, "installed_version", versions.get)
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["onnxruntime"] == "1.19.2 (onnxruntime-gpu)" and info["torch"] == "2.5.0"
    assert info["tensorrt"] == "not installed"


# -- export ----------------------------------------------------------------------------------------
def test_export_out_that_is_a_file_is_refused_untouched(tmp_path, capsys):
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"mine")
    err = _refused(["export", "--out", str(mine), "--model", MISSING_MODEL], capsys)
    assert "--out" in err and "is a file" in err and mine.read_bytes() == b"mine"
    assert Path(mine).is_file()


def test_error_weights_none_is_equal_weights_and_a_list_is_kept():
    parser = build_parser("classify")
    assert parser.parse_args(["classify", ".", "--out", "r.jsonl", "--error-weights", "none"]).error_weights == (1.0,)
    assert parser.parse_args(["classify", ".", "--out", "r.jsonl", "--error-weights", "0.5,2"]).error_weights == (
        0.5,
        2.0,
    )
    assert parser.parse_args(["classify", ".", "--out", "r.jsonl"]).error_weights is None  # the model's own
