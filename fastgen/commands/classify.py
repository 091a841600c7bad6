"""`fastgen classify`: image files into a resumable JSON-lines results file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastgen.commands.options import add_model_options, classifier_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files, folders (recursive) or globs")
    parser.add_argument("--out", type=Path, help="results .jsonl (resumable); default: stdout")
    parser.add_argument("--labels-from-folders", action="store_true", help="report accuracy, label = parent folder name")
    parser.add_argument("--no-progress", action="store_true")
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    from fastgen.inputs.images import find_images
    from fastgen.jobs import distributed
    from fastgen.jobs.local import classify_files

    paths = find_images(args.images)
    if not paths:
        raise SystemExit("fastgen classify: no image files found in the given inputs")
    ranks = distributed.launched_ranks()
    progress = not args.no_progress
    with distributed.sigterm_as_interrupt():
        if ranks is not None:  # under torchrun: this rank's shard; rank 0 merges and reports
            summary = distributed.classify_files_distributed(
                lambda device: classifier_from_args(args, device=str(device)), paths, out=args.out, ranks=ranks,
                device=args.device, labels_from_folders=args.labels_from_folders, progress=progress,
            )  # fmt: skip
        else:
            summary = classify_files(
                classifier_from_args(args), paths, out=args.out,
                labels_from_folders=args.labels_from_folders, progress=progress,
            )  # fmt: skip
    if summary is None:
        return 0
    print(
        f"images: {summary.total}, computed: {summary.computed}, skipped (already in output): "
        f"{summary.skipped}, failed: {summary.failed}",
        file=sys.stderr,
    )
    if summary.accuracy is not None:
        print(f"accuracy: {summary.accuracy:.4f} over {summary.labelled} labelled images", file=sys.stderr)
    return 0
