"""`fastgen demo`: classify an embedded model's held-out images, beside discriminative baselines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastgen.commands.options import add_model_options, classifier_from_args
from fastgen.commands.outputs import check_empty_folder
from fastgen.commands.types import positive_int_or_all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--n-images", type=positive_int_or_all, default=0,
        help="held-out images to use, or 'all' (default: 100 digits, 10 numbers, 100 animals)",
    )  # fmt: skip
    parser.add_argument("--shifts", action="store_true", help="accuracy under noise, blur and contrast shifts")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument(
        "--report", type=Path, default=None, metavar="DIR",
        help="also write the held-out images, their results file and an HTML report into DIR (a new folder)",
    )  # fmt: skip
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    from fastgen.cpu_threads import thread_report
    from fastgen.eval.demo import (
        BASELINES_FILE,
        DEFAULT_N_IMAGES_BY_TASK,
        demo_task,
        model_folder,
        run_demo,
        run_shift_table,
    )

    task = demo_task(args.model)
    if args.report is not None:
        if args.shifts:  # the report is of the held-out images as they are, not of the shifted copies
            raise ValueError("--report does not apply to --shifts: run the demo without --shifts for its report")
        check_empty_folder(args.report, "--report", force_option=False)
    n_images = DEFAULT_N_IMAGES_BY_TASK[task] if args.n_images == 0 else args.n_images
    if args.classes is not None:  # refused before the model loads: its policy may not fit them either
        from fastgen.inputs.classes import build_classes

        check_classes_are_labels(list(build_classes(args.classes).names), task)
    clf = classifier_from_args(args)
    if args.classes is None:  # the model's own classes (given ones were checked above)
        check_classes_are_labels(list(clf.classes.names), task)
    policy = type(clf.policy).__name__
    if args.shifts:
        rows = run_shift_table(clf, n_images, task)
        print(f"{'shift':<18} {'fastgen':>8} {'baseline':>9} {'evals/img':>10}")
        for row in rows:
            baseline = "n/a" if row["baseline_accuracy"] is None else f"{row['baseline_accuracy']:.3f}"
            print(f"{row['shift']:<18} {row['accuracy']:>8.3f} {baseline:>9} {row['unet_evals_per_image']:>10.1f}")
        if task == "animals":
            print("(baseline n/a: the animals' training images do not ship with the package)")
        if args.json:
            print(json.dumps({"model": args.model, "policy": policy, "shifts": rows}))
        return 0
    baselines_file = model_folder(args.model) / BASELINES_FILE if task == "animals" else None
    report = run_demo(clf, n_images, task, baselines_file=baselines_file)
    if args.report is not None:
        write_report(clf, n_images, task, args.report)
    print(f"model: {args.model}  policy: {policy}  device: {clf.adapter.device}  classes: {len(clf.classes.names)}")
    print(f"held-out images:        {report['images']}")
    print(f"fastgen accuracy:       {report['accuracy']:.4f}")
    if task == "animals":
        print_recorded_baselines(report["baselines"], baselines_file)
    else:
        baseline = "logistic regression, same training split" + (", per digit cell" if task == "numbers" else "")
        print(f"baseline accuracy:      {report['baseline_accuracy']:.4f}  ({baseline})")
    print(f"UNet evaluations/image: {report['unet_evals_per_image']:.1f}")
    print(f"undecided:              {report['undecided']}  ({report['undecided_errors']} of them wrong)")
    print(f"images/s:               {report['images_per_s']:.2f}  ({report['seconds']:.1f} s)")
    if args.json:
        summary = {k: v for k, v in report.items() if k != "predictions"}
        config = clf.config.as_dict()
        print(
            json.dumps(
                {
                    "model": args.model,
                    "policy": policy,
                    "config": config,
                    **summary,
                    "threads": thread_report(),
                    "predictions": report["predictions"],
                }
            )
        )
    return 0


def print_recorded_baselines(baselines: dict | None, path: Path | None) -> None:
    """The animals' baselines as their script recorded them: accuracy on the demo's images (from
    the recorded predictions) and on the whole held-out split."""
    if baselines is None:
        print(f"baselines:              not recorded ({path} is missing; python -m training.train_animals_baselines)")
        return
    print(f"baselines (recorded by `{baselines['recorded_by']}`, same split and 16x16 images):")
    for name, entry in baselines["models"].items():
        print(
            f"  {name:<8} {entry['accuracy']:.4f} on these images, {entry['heldout_accuracy']:.4f} "
            f"on all {baselines['heldout_images']} held-out  ({entry['description'].split(';')[0]})"
        )


def check_classes_are_labels(classes: list[str], task: str) -> None:
    """Refuse classes that name no label of the held-out images: no image could be right."""
    from fastgen.eval.demo import label_names

    names = label_names(task)
    known = set(names)
    unknown = [c for c in classes if c not in known]
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ValueError(
            f"--classes: {shown} name no held-out {task} label; the demo's labels are named "
            f"{', '.join(names[:3])} ... {names[-1]} (any order, any subset)"
        )


def write_report(clf, n_images: int | None, task: str, folder: Path) -> None:
    """The demo's images as files, classified into `folder/results.jsonl`, and its report."""
    from fastgen.eval.demo import write_demo_images
    from fastgen.eval.report import build_report, folder_labels, load_run
    from fastgen.jobs.local import classify_files

    paths = write_demo_images(n_images, task, folder / "images")
    results = folder / "results.jsonl"
    classify_files(clf, paths, out=results, labels_from_folders=True, progress=False)
    run_ = load_run(results)
    page = build_report(run_, folder / "report.html", labels=folder_labels(run_), title=f"fastgen demo: {task}")
    print(f"report:                 {page}")
