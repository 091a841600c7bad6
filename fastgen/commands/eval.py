"""`fastgen eval shape-bias DIR --model M [--out bias.json]`: classify cue-conflict images named the
way model-vs-human names them (`<shape><i>-<texture><j>.png`) and report shape bias, overall with
a bootstrap interval and per category (`fastgen.eval.shape_bias`). Any model and class set fastgen
runs: the classes default to the model's own, `--classes` names others (the 16 model-vs-human
categories for a real checkpoint). The JSON holds the figures, what was left out and why, the
run's settings and every image's decision."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastgen.commands.options import add_model_options, classifier_from_args
from fastgen.commands.outputs import check_new_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="evaluation", required=True)
    bias = sub.add_parser(
        "shape-bias", help="shape bias on cue-conflict images (file names <shape><i>-<texture><j>.png)",
        description="shape bias on cue-conflict images named <shape><i>-<texture><j>.png, at any depth of DIR",
    )  # fmt: skip
    bias.add_argument("folder", type=Path, help="the cue-conflict images (searched recursively)")
    bias.add_argument("--out", type=Path, default=None, help="write the figures and every decision as JSON here")
    bias.add_argument("--bootstrap", type=int, default=2000, help="resamples of the images for the interval")
    bias.add_argument("--force", action="store_true", help="replace an existing --out file")
    add_model_options(bias)


def run(args: argparse.Namespace) -> int:
    from fastgen.cpu_threads import thread_report
    from fastgen.eval.shape_bias import decisions_from, shape_bias
    from fastgen.inputs.images import find_images

    if args.out is not None:
        check_new_file(args.out, "--out", force=args.force)
    if not args.folder.is_dir():
        raise FileNotFoundError(f"{args.folder} is not a folder of cue-conflict images")
    paths = find_images([str(args.folder)])
    if not paths:
        raise FileNotFoundError(f"no image files under {args.folder}")
    clf = classifier_from_args(args)
    results = clf.classify([str(p) for p in paths], on_error="return")
    rows, failed = [], []
    for path, result in zip(paths, results):
        if isinstance(result, Exception):
            failed.append({"path": str(path), "error": str(result)})
        else:
            rows.append((path, result.prediction))
    decisions, left_out = decisions_from(rows, clf.classes.names)
    summary = shape_bias(decisions, bootstrap=args.bootstrap)
    low, high = summary["interval"]
    print(f"model: {args.model}  classes: {len(clf.classes)}  images: {len(paths)}  used: {summary['images']}")
    print(
        f"shape bias: {summary['shape_bias']:.3f}  ({summary['interval_level']:.0%} interval {low:.3f}-{high:.3f}; "
        f"shape {summary['shape_decisions']}, texture {summary['texture_decisions']}, "
        f"other {summary['other_decisions']})"
    )
    for category, row in summary["per_category"].items():
        print(f"  {category:<12} {row['shape_bias']:.3f}  ({row['shape_decisions']}/{row['images']} shape)")
    if any(left_out.values()):
        print(f"left out: {left_out}", file=sys.stderr)
    for failure in failed:
        print(f"cannot classify {failure['path']}: {failure['error']}", file=sys.stderr)
    if args.out is not None:
        report = {
            "model": args.model, "folder": str(args.folder), **summary, "left_out": left_out, "failed": failed,
            "config": clf.config.as_dict(), "classes": list(clf.classes.names), "threads": thread_report(),
            "decisions": [
                {"path": str(path), "prediction": prediction} for path, prediction in rows
            ],
        }  # fmt: skip
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0
