"""`fastgen bench` reports every figure it promises, as one JSON object on its last line. Only
the report's shape and its agreements are checked here; CI times nothing."""

from __future__ import annotations

import json

from fastgen.commands.main import main


def test_bench_prints_the_side_by_side_report_as_its_last_line(model_dirs, capsys):
    argv = [
        "bench", "--model", str(model_dirs["pixel-text"]), "--classes", "cat,dog,bird", "--n-images", "3",
        "--n-samples", "4", "--repeats", "2", "--latency-images", "2", "--backend", "eager", "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # (a) and (b) in fp32 on the same exhaustive work: identical predictions, identical counts
    assert report["agreement"] == 1.0 and report["predictions_agree_on"] == 3
    a, b = report["reference_style"], report["fastgen"]
    assert a["unet_evals_per_image"] == b["unet_evals_per_image"] == 3 * 4
    assert report["speedup"] > 0 and report["speedup_runs"]["runs"] == 2
    assert report["settings"]["engine_dtype"] == report["settings"]["dtype"] == "torch.float32"
    for figures in (a, b, report["latency"], *report["policies"]):
        assert figures["peak_memory_bytes"] > 0
    assert report["flops_per_eval"] > 0 and report["unet_stage_utilisation"] > 0
    assert report["latency"]["p50_s"] <= report["latency"]["p99_s"]
    policies = {row["policy"]: row for row in report["policies"]}
    assert set(policies) == {"exhaustive", "stages", "paired"}
    assert policies["exhaustive"]["unet_evals_per_image"] == 12
    assert policies["exhaustive"]["agreement_with_exhaustive"] == 1.0
