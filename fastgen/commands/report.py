"""`fastgen report RESULTS.jsonl [--out report.html]`: one self-contained HTML page with
accuracy, the confusion matrix, a reliability diagram, histograms of the denoiser budget and of
margins, the hardest images and the run's settings; PNG figures in `<out stem>_figures/`.
An existing page, or a figures folder with files in it, is replaced only with `--force`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastgen.commands.outputs import check_empty_folder, check_new_file
from fastgen.jobs.results_dir import check_results_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results", type=Path, help="a results .jsonl, or a results folder of --ray, written by fastgen classify"
    )
    parser.add_argument("--out", type=Path, default=None, help="the HTML page (default: RESULTS with .html)")
    parser.add_argument(
        "--labels-from-folders",
        action="store_true",
        help="label = parent folder name (accuracy, confusion, reliability)",
    )
    parser.add_argument(
        "--calibration", type=Path, default=None,
        help="calibration .json for the reliability diagram (needs --labels-from-folders)",
    )  # fmt: skip
    parser.add_argument(
        "--force", action="store_true", help="replace an existing page and the figures in its figures folder"
    )


def run(args: argparse.Namespace) -> int:
    from fastgen.api.calibration import Calibration
    from fastgen.eval.report import build_report, figures_folder, folder_labels, load_run

    check_results_path(args.results)
    if args.calibration is not None and not args.labels_from_folders:
        raise ValueError("--calibration draws the reliability diagram, which needs labels: add --labels-from-folders")
    out = args.out or args.results.with_suffix(".html")
    if out.resolve() == args.results.resolve():
        raise ValueError("--out must not be the results file itself")
    check_outputs(out, "--out" if args.out else "the default --out", force=args.force)
    calibration = Calibration.load(args.calibration) if args.calibration else None
    run_ = load_run(args.results)
    labels = folder_labels(run_) if args.labels_from_folders else None
    page = build_report(run_, out, labels=labels, calibration=calibration, title=f"fastgen report: {args.results.name}")
    for note in run_.notes:
        print(note, file=sys.stderr)
    print(f"wrote {page} (figures in {figures_folder(page)})")
    return 0


def check_outputs(out: Path, option: str, *, force: bool) -> None:
    """The page and its figures folder, refused when either holds a user's files (without `force`)."""
    from fastgen.eval.report import figures_folder

    check_new_file(out, option, force=force)
    check_empty_folder(figures_folder(out), f"{option} {out}: its figures folder", force=force)
