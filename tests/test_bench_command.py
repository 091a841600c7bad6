"""`fastgen bench` reports every figure it promises, as one JSON object on its last line. The
report's figures are checked against each other and against what the test computes directly;
CI times nothing."""

from __future__ import annotations

import contextlib
import io
import json
import platform
import resource

import pytest
import torch
from helpers import small_classifier
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fastgen import DiffusionClassifier
from fastgen.commands.main import main
from fastgen.eval import benchmark

CLASSES = "cat,dog,bird"


def _lifetime_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024  # macOS gives bytes, Linux KiB


@pytest.fixture(scope="module")
def report(model_dirs):
    argv = [
        "bench", "--model", str(model_dirs["pixel-text"]), "--classes", CLASSES, "--n-images", "4",
        "--n-samples", "4", "--repeats", "2", "--latency-images", "2", "--backend", "eager", "--json",
    ]  # fmt: skip
    out = io.StringIO()  # capsys is per test; the report is made once for the module
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


def _bench_images(clf: DiffusionClassifier, n: int, seed: int = 0) -> list[torch.Tensor]:
    """The random images `fastgen bench` draws for a model that has no data set of its own."""
    g = torch.Generator().manual_seed(seed)
    (height, width), channels = clf.adapter.image_hw, clf.adapter.image_channels
    return [torch.rand(channels, height, width, generator=g) for _ in range(n)]


def test_reference_style_and_engine_do_the_same_exhaustive_work(report):
    # (a) and (b) in fp32 on the same exhaustive work: identical predictions, identical counts
    assert report["agreement"] == 1.0 and report["predictions_agree_on"] == report["images"] == 4
    a, b = report["reference_style"], report["fastgen"]
    assert a["unet_evals_per_image"] == b["unet_evals_per_image"] == 3 * 4
    assert report["settings"]["engine_dtype"] == report["settings"]["dtype"] == "torch.float32"
    assert report["speedup_runs"]["runs"] == 2
    assert report["speedup_runs"]["min"] <= report["speedup"] <= report["speedup_runs"]["max"]
    assert b["batches"] == 1 and b["denoiser_rows"] == 4 * 3 * 4


def test_rates_are_consistent_with_the_counts_and_times(report):
    for row in (report["reference_style"], report["fastgen"]):
        assert row["images_per_s"] == pytest.approx(4 / row["seconds"])
        assert row["unet_evals_per_s"] == pytest.approx(row["unet_evals_per_image"] * 4 / row["seconds"])
        assert 0 < row["unet_seconds"] <= row["seconds"]
        assert row["outside_unet_share"] == pytest.approx(1 - row["unet_seconds"] / row["seconds"])
    assert report["latency"]["images"] == 2 and report["latency"]["p50_s"] <= report["latency"]["p99_s"]
    achieved, peak = report["unet_stage_flops_per_s"], report["matmul_flops_per_s"]
    assert report["unet_stage_utilisation"] == pytest.approx(achieved / peak)


def test_flops_per_eval_is_the_counted_flops_of_one_row(report, model_dirs):
    clf = DiffusionClassifier.from_pretrained(model_dirs["pixel-text"], classes=CLASSES, device="cpu")
    assert report["flops_per_eval"] == benchmark.flops_per_eval(clf) > 0
    prefix = benchmark.flops_per_eval(clf, prefix_only=True)
    rows, distinct = report["fastgen"]["denoiser_rows"], report["fastgen"]["distinct_inputs"]
    expected = benchmark.executed_flops_per_row(report["flops_per_eval"], prefix, rows, distinct)
    assert report["flops_per_row_executed"] == pytest.approx(expected)


def test_peak_memory_lies_between_the_model_and_the_process_lifetime_peak(report):
    lifetime_peak = _lifetime_peak_bytes()
    rows = (report["reference_style"], report["fastgen"], report["latency"], *report["policies"])
    for row in rows:  # a python process with torch loaded holds well over 50 MiB
        assert 50 * 2**20 < row["peak_memory_bytes"] <= lifetime_peak
    assert report["fastgen"]["memory_measure"] == "peak resident set of this process"


@pytest.mark.skipif(platform.system() != "Linux", reason="the resident-set peak is reset through /proc")
def test_a_reset_starts_a_new_peak():
    """The peak of one run, not of the process's life: 256 MiB touched and unmapped before the
    reset must not show in the peak after it (an anonymous mapping, so the pages surely come and
    go: the allocator may reuse resident heap for an array)."""
    import mmap

    cpu = torch.device("cpu")
    size = 256 * 2**20
    block = mmap.mmap(-1, size)
    block.write(b"\x01" * size)  # every page resident
    peak_with_block = benchmark.peak_memory(cpu)
    block.close()
    benchmark.reset_peak_memory(cpu)
    after_reset = benchmark.peak_memory(cpu)
    assert after_reset <= peak_with_block - 200 * 2**20
    small = mmap.mmap(-1, 32 * 2**20)
    small.write(b"\x01" * (32 * 2**20))
    assert benchmark.peak_memory(cpu) >= after_reset + 24 * 2**20  # and it counts what comes after
    small.close()


def test_policy_agreement_is_measured_against_an_independent_exhaustive_run(report, model_dirs):
    policies = {row["policy"]: row for row in report["policies"]}
    assert set(policies) == {"exhaustive", "stages", "paired"}
    assert policies["exhaustive"]["unet_evals_per_image"] == 12
    reference = policies["exhaustive"]["agreement_reference"]
    # twice the most samples any policy draws (4), on the next seed: not the exhaustive row itself
    assert {k: reference[k] for k in ("policy", "n_samples", "seed")} == {
        "policy": "exhaustive",
        "n_samples": 8,
        "seed": 1,
    }
    clf = DiffusionClassifier.from_pretrained(
        model_dirs["pixel-text"], classes=CLASSES, device="cpu", seed=1, policy="exhaustive",
        policy_options={"n_samples": 8},
    )  # fmt: skip
    direct = [r.prediction_index for r in clf.classify(_bench_images(clf, 4))]
    assert reference["predictions"] == direct
    own = DiffusionClassifier.from_pretrained(
        model_dirs["pixel-text"], classes=CLASSES, device="cpu", policy="exhaustive", policy_options={"n_samples": 4}
    )
    assert policies["exhaustive"]["predictions"] == [r.prediction_index for r in own.classify(_bench_images(own, 4))]
    for row in policies.values():
        assert row["agreement_reference"] == reference
        matches = sum(a == b for a, b in zip(row["predictions"], direct))
        assert row["agreement_with_exhaustive"] == matches / 4


def test_agreement_refuses_runs_of_different_lengths():
    assert benchmark.agreement([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    with pytest.raises(ValueError, match="3 predictions cannot be compared with 2"):
        benchmark.agreement([0, 1, 2], [0, 1])


def test_attention_flops_do_not_depend_on_the_sdpa_kernel():
    """The CPU SDPA kernel has no formula in torch's counter; the math path runs matmuls it
    counts. Both must give the same figure, attention included."""
    clf = DiffusionClassifier.from_pretrained("builtin:digits", device="cpu")
    default = benchmark.flops_per_eval(clf)
    with sdpa_kernel(SDPBackend.MATH):
        math_path = benchmark.flops_per_eval(clf)
    assert default == math_path
    q, k, v = (torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 6))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert benchmark.attention_flops(q.shape, k.shape, v.shape) == counter.get_total_flops() == 2 * 2 * 3 * 5 * 7 * 10


def _status_kib(pid, field: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))


@pytest.mark.skipif(platform.system() != "Linux", reason="worker-process memory is read from /proc")
def test_worker_process_memory_counts_shared_pages_once(model_dirs, images):
    clf = small_classifier(model_dirs["label-unet"], "label-unet", backend="torch", backend_options={"processes": 2})
    try:
        stats = benchmark.engine_run(clf, images[:2])
        pids = benchmark.worker_pids(clf.denoise)
        summed_peaks = sum(_status_kib(pid, "VmHWM") * 1024 for pid in ("self", *pids))
        worker_shared = [(_status_kib(pid, "RssFile") + _status_kib(pid, "RssShmem")) * 1024 for pid in pids]
    finally:
        clf.denoise.close()
    assert len(pids) == 2 and all(shared > 0 for shared in worker_shared)
    # each worker maps torch's libraries and the batch buffers this process maps too: the sum of
    # every process's peak counts those pages three times, the benchmark once (the margin: what
    # this process may have grown by since the run)
    once = summed_peaks - sum(worker_shared)
    assert once - 64 * 2**20 <= stats.peak_memory_bytes <= once
    assert "each shared page counted once" in stats.extra["memory_measure"]


def test_numbers_benchmark_compares_no_row_with_itself():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[1] / "bench" / "bench_numbers.py"
    spec = importlib.util.spec_from_file_location("bench_numbers", script)
    bench_numbers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_numbers)

    def row(config, policy, predictions, first=0):
        return {"config": config, "policy": policy, "images": len(predictions), "first_image": first,
                "unet_evals_per_image": 10.0, "unet_evals_max": 10, "seconds": 1.0, "peak_rss_mib": 1.0,
                "predictions": predictions}  # fmt: skip

    reference, six = {"name": "exhaustive", "n_samples": 16}, {"name": "exhaustive", "n_samples": 6}
    rows = [row("exhaustive", reference, [0, 1, 2, 3]), row("exhaustive", six, [0, 1, 9, 3]),
            row("tree", {"name": "tree"}, [0, 1]), row("tree", {"name": "tree"}, [2, 7], first=2)]  # fmt: skip
    summary = {r["policy"].get("n_samples", r["config"]): r for r in bench_numbers.summarise(rows, 16)}
    assert summary[16]["agreement_with_exhaustive"] is None and summary[16]["agreement_images"] == 0
    assert summary[6]["agreement_with_exhaustive"] == 0.75 and summary[6]["agreement_images"] == 4
    assert summary["tree"]["agreement_with_exhaustive"] == 0.75 and summary["tree"]["images"] == 4
    # a run on training compositions is never compared with the held-out reference
    trained = {**row("tree", {"name": "tree", "beam": 2}, [0, 1, 2, 3]), "split": "train"}
    (train_row,) = [r for r in bench_numbers.summarise([*rows, trained], 16) if r["split"] == "train"]
    assert train_row["agreement_with_exhaustive"] is None and train_row["agreement_images"] == 0
    # an adaptive run's undecided survivors: the reference winner of image 2 (class 2) was dropped
    sequential = {**row("tree", {"name": "tree", "confidence": 0.99}, [0, 1, 7]), "standing": [[0], [1, 5], [7, 9]]}
    (seq_row,) = [r for r in bench_numbers.summarise([*rows, sequential], 16) if r["policy"].get("confidence")]
    assert (seq_row["undecided"], seq_row["winner_eliminated"]) == (2, 1)
