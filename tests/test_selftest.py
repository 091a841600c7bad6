"""`fastgen selftest`: the command passes on CPU with every GPU path skipped for a stated reason,
and its comparison fails the things it exists to catch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastgen.eval.selftest import (
    PATHS,
    ExecutionPath,
    compare,
    run_path,
    selftest_models,
    skip_reason,
    tied_in_reference,
)
from fastgen.kernels._triton import has_triton

GPU_PATHS = {"eager-fp16", "cuda-graphs", "cuda-preset", "onnxruntime-cuda", "onnxruntime-tensorrt"}


# Every path but two: the CPU ONNX Runtime one, whose three dynamo exports take a minute here (ONNX
# parity has its own tests: test_backends_onnx, test_flow_export and the provider test below), and
# `compile`, which runs only when named (its default skip is checked below).
REQUESTED = [p.name for p in PATHS if p.name not in ("onnxruntime-cpu", "compile")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU run")
def test_selftest_command_passes_on_cpu_and_says_why_each_gpu_path_is_skipped():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the command chooses it
    command = [sys.executable, "-m", "fastgen", "selftest", "--json", "--paths", ",".join(REQUESTED)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["passed"] and report["device"] == "cpu"
    rows = {(r["path"], r["model"]): r for r in report["results"]}
    assert {path for path, _ in rows} == {p.name for p in PATHS}
    ran = {"eager-fp32", "torch-sdpa-fp32", "eager-bf16"} | ({"triton-kernels"} if has_triton() else set())
    for (path, _), row in rows.items():
        if path not in REQUESTED:
            assert row["status"] == "skipped" and row["reason"] == "not requested", row
        elif path in ran:
            assert row["status"] == "pass", row
            # Only an image the reference itself ties at this path's tolerance may be predicted
            # otherwise: which side of a tie a path lands on depends on the CPU's kernels
            # (AVX512-BF16 rounds bf16 matmuls differently from AVX2).
            equal, n = map(int, row["predictions_equal"].split("/"))
            assert n in (8, 4) and equal >= n - row["reference_ties"], row
            assert row["rows_per_s"] > 0
        else:
            assert row["status"] == "skipped" and row["reason"], row
        if path in GPU_PATHS:
            assert "CUDA" in row["reason"]
    # The table precedes the JSON and names every path.
    assert all(p.name in done.stdout for p in PATHS)


def test_compare_fails_nan_errors_and_real_prediction_flips_but_not_ties():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.5, 1.0, size=(6, 10))
    reference[:, 3] = 0.2  # class 3 wins every image by a wide margin
    assert compare(reference + 1e-6, reference, 1e-3)[2]
    flipped = reference.copy()
    flipped[2, 7] = 0.1  # image 2 now predicts class 7: a real disagreement
    worst, equal, ok = compare(flipped, reference, 1e-3)
    assert equal == 5 and not ok and worst > 0.1
    with_nan = reference.copy()
    with_nan[4, 1] = np.nan
    assert not compare(with_nan, reference, 1e-3)[2]
    tie = reference.copy()
    tie[0, 5] = 0.2 + 1e-5  # the reference's own margin on image 0 is within tolerance
    swapped = tie.copy()
    swapped[0, 3], swapped[0, 5] = tie[0, 5], tie[0, 3]
    worst, equal, ok = compare(swapped, tie, 1e-3)
    assert equal == 5 and ok and worst < 1e-3
    assert tied_in_reference(tie, 1e-3).tolist() == [True] + [False] * 5
    assert not tied_in_reference(tie, 1e-6).any()  # a margin of 1e-5 is no tie at a tighter tolerance


def test_skip_reasons_follow_the_device_the_request_and_what_is_installed():
    cpu = torch.device("cpu")
    by_name = {p.name: p for p in PATHS}
    assert "CUDA" in skip_reason(by_name["tensorrt-fp32"], cpu, None)
    assert skip_reason(by_name["eager-fp32"], cpu, None) is None
    assert skip_reason(by_name["eager-fp32"], cpu, {"onnxruntime-cpu"}) == "not requested"
    assert "minutes" in skip_reason(by_name["compile"], cpu, None)
    assert skip_reason(by_name["compile"], cpu, {"compile"}) is None  # named: it runs
    assert skip_reason(by_name["onnxruntime-cpu"], torch.device("cuda"), None) is not None


def test_a_path_that_raises_is_an_error_row_not_the_end_of_the_run(tmp_path):
    digits = selftest_models(tmp_path)[0]
    broken = ExecutionPath("broken", backend="torch", backend_options={"no_such_option": 1})
    row = run_path(broken, digits, np.zeros((8, 10)), torch.device("cpu"), tmp_path)
    assert row.status == "error" and "no_such_option" in row.reason


def test_an_onnxruntime_path_whose_provider_falls_back_fails_and_says_so(model_dirs, tmp_path):
    """A CPU-only onnxruntime asked for the CUDA provider silently runs on the CPU: the path's
    numbers would be right, but it did not test CUDA, so it must not pass."""
    pytest.importorskip("onnxruntime")
    from fastgen.eval.selftest import TestModel, reference_errors

    g = torch.Generator().manual_seed(2)
    model = TestModel("tiny-dit", str(model_dirs["dit"]), [torch.rand(3, 16, 16, generator=g)], ["class0", "class1"])
    asked = ExecutionPath(
        "onnxruntime-cuda", backend="onnxruntime",
        backend_options={"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "exporter": "torchscript"},
    )  # fmt: skip
    device = torch.device("cpu")
    row = run_path(asked, model, reference_errors(model, device), device, tmp_path)
    assert row.status == "FAIL" and "could not use CUDAExecutionProvider" in row.reason
    assert row.max_rel_error is not None and row.max_rel_error < 1e-3  # the numbers themselves agree


def test_the_command_exits_1_when_a_path_that_ran_failed(monkeypatch, capsys):
    """A failed or broken path makes the exit code 1 (scripts and CI read it); skips do not."""
    import fastgen.eval.selftest as selftest_module
    from fastgen.commands.main import main
    from fastgen.eval.selftest import PathResult

    def rows(statuses):
        return lambda device, **_: [PathResult(f"p{i}", "m", status, reason="why") for i, status in enumerate(statuses)]

    monkeypatch.setattr(selftest_module, "run_selftest", rows(["pass", "skipped"]))
    assert main(["selftest", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["passed"] is True
    for bad in ("FAIL", "error"):
        monkeypatch.setattr(selftest_module, "run_selftest", rows(["pass", bad, "skipped"]))
        assert main(["selftest", "--device", "cpu", "--json"]) == 1
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["passed"] is False
