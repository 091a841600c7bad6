"""`fastgen calibrate RESULTS.jsonl --labels-from-folders --out calibration.json`: fit calibrated
probabilities on labelled results (temperature scaling; Platt scaling on margin and UNet
evaluations for adaptive runs) and print ECE, NLL and Brier score before and after, measured on
the records not used for fitting. `fastgen classify --calibration calibration.json` then adds
`probabilities` to every line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastgen.commands.outputs import check_new_file
from fastgen.commands.types import open_probability, seed_value
from fastgen.jobs.results_dir import check_results_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results", type=Path, help="a results .jsonl, or a results folder of --ray, written by fastgen classify"
    )
    parser.add_argument(
        "--labels-from-folders", action="store_true", required=True,
        help="each image's label is its parent folder name (the only label source so far)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, required=True, help="the calibration .json to write (an existing file only with --force)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--fit-fraction", type=open_probability, default=0.5, help="share of labelled records fitted on (seeded)"
    )
    parser.add_argument("--seed", type=seed_value, default=0, help="seed of the fit / held-out split; 0..2**32-1")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON last")


def run(args: argparse.Namespace) -> int:
    from fastgen.api.calibration import fit_calibration, scored_records
    from fastgen.eval.report import folder_labels, load_run

    check_new_file(args.out, "--out", force=args.force)
    check_results_path(args.results)
    run_ = load_run(args.results)
    for note in run_.notes:
        print(note, file=sys.stderr)
    labels = folder_labels(run_)
    scored = scored_records(run_.records, run_.classes, labels)
    calibration = fit_calibration(scored, fit_fraction=args.fit_fraction, seed=args.seed)
    calibration.save(args.out)
    m = calibration.metrics
    print(f"fitted {calibration.method} on {calibration.fitted_on} images; measured on {m['held_out']} others:")
    print(f"{'':22} {'ECE':>7} {'NLL':>7} {'Brier':>7} {'accuracy':>9}")
    for name, key in (("plain softmax", "before"), ("temperature only", "temperature_only"), ("calibrated", "after")):
        row = m[key]
        print(f"{name:22} {row['ece']:7.4f} {row['nll']:7.4f} {row['brier']:7.4f} {row['accuracy']:9.4f}")
    print(f"wrote {args.out}")
    if args.json:
        print(json.dumps({"method": calibration.method, "temperature": calibration.temperature, **m}))
    return 0
