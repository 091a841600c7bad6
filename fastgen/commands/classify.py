"""`fastgen classify`: images (files, folders, globs, .txt path lists, WebDataset .tar shards,
.parquet files, saved Hugging Face datasets) into a resumable JSON-lines results file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastgen.commands.options import add_model_options, classifier_from_args
from fastgen.commands.types import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "images", nargs="+",
        help="image files, folders (recursive), globs, .txt files of paths, WebDataset .tar shards, .parquet "
        "files or folders written by datasets' save_to_disk",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="results .jsonl (resumable); default: stdout")
    parser.add_argument(
        "--labels-from-folders", action="store_true",
        help="report accuracy, an image file's label = its parent folder name (tar, Parquet and dataset labels "
        "are used without this)",
    )  # fmt: skip
    parser.add_argument(
        "--image-column", default=None,
        help="Parquet/dataset column of image bytes (default: the Image feature, else the first binary column)",
    )  # fmt: skip
    parser.add_argument(
        "--id-column", default=None, help="Parquet/dataset column of stable ids (default: the row number)"
    )
    parser.add_argument(
        "--label-column", default=None,
        help="Parquet/dataset column of labels: class names or indices (default: a dataset's ClassLabel)",
    )  # fmt: skip
    parser.add_argument(
        "--retry-failed", action="store_true",
        help="also redo images whose latest record in --out is an error (the new record is appended and wins)",
    )  # fmt: skip
    parser.add_argument(
        "--force", action="store_true",
        help="resume an --out file whose header has other settings: keep its records, append a new header and the new results",
    )  # fmt: skip
    parser.add_argument(
        "--calibration", type=Path, default=None,
        help="a calibration .json (fastgen calibrate): adds calibrated probabilities to every line",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")
    ray = parser.add_argument_group("Ray (pip install 'fastgen[ray]'; docs/scale-out.md)")
    ray.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="local|auto|ADDRESS",
        help="run on Ray Data: 'local' (the default) starts Ray here, 'auto' joins this machine's cluster, or a "
        "cluster address; --out is then a folder of part files",
    )  # fmt: skip
    ray.add_argument(
        "--ray-actors", type=positive_int, default=None,
        help="classifying actors, each building the model once (default: one per GPU, else one)",
    )  # fmt: skip
    ray.add_argument(
        "--images-per-block", type=positive_int, default=None,
        help="images an actor takes at a time; they join its running engine, so blocks cost no batches, "
        "and each block's records are written when it is done (default 256 on GPUs, 64 on CPUs)",
    )  # fmt: skip
    ray.add_argument(
        "--out-format", choices=("jsonl", "parquet"), default="jsonl", help="part files of --ray: JSON lines or Parquet"
    )
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    from fastgen.api.calibration import Calibration
    from fastgen.inputs.sources import FileListSource, open_sources
    from fastgen.jobs import distributed
    from fastgen.jobs.local import classify_sources
    from fastgen.jobs.output_lock import hold_output

    ranks = distributed.launched_ranks()
    check_ray_options(args, ranks)
    sources = open_sources(
        args.images, image_column=args.image_column, id_column=args.id_column, label_column=args.label_column
    )
    if all(isinstance(s, FileListSource) and not s.paths for s in sources):
        raise ValueError(
            "no image files found in the given inputs (a folder is searched for image files only: name tar "
            "shards, Parquet files and .txt lists by path or glob, e.g. shards/*.tar)"
        )
    refuse_unused_column_options(args, sources)
    if args.ray is not None:
        summary = run_ray(args, sources)
        print_summary(summary, args)
        return 0
    progress = not args.no_progress
    # One run per --out: its lock is held from before anything reads the file (and before the
    # model is loaded) to the end; under torchrun rank 0 holds it.
    with distributed.sigterm_as_interrupt(), hold_output(args.out if ranks is None else None):
        # A bad calibration file is refused before the model is loaded.
        calibration = Calibration.load(args.calibration) if args.calibration is not None else None

        def build(device: str | None = None):
            clf = classifier_from_args(args, device=device) if device is not None else classifier_from_args(args)
            clf.use_calibration(calibration)
            return clf

        if ranks is not None:  # under torchrun: this rank's shard; rank 0 merges and reports
            summary = distributed.classify_sources_distributed(
                lambda device: build(str(device)), sources, out=args.out, ranks=ranks,
                device=args.device, labels_from_folders=args.labels_from_folders, progress=progress,
                retry_failed=args.retry_failed, force=args.force,
            )  # fmt: skip
        else:
            summary = classify_sources(
                build(), sources, out=args.out,
                labels_from_folders=args.labels_from_folders, progress=progress,
                retry_failed=args.retry_failed, force=args.force,
            )  # fmt: skip
    if summary is not None:
        print_summary(summary, args)
    return 0


def check_ray_options(args: argparse.Namespace, ranks) -> None:
    if args.ray is None:
        for option, given in (
            ("--ray-actors", args.ray_actors is not None),
            ("--images-per-block", args.images_per_block is not None),
            ("--out-format", args.out_format != "jsonl"),
        ):
            if given:
                raise ValueError(f"{option} applies to a Ray job: add --ray")
        return
    if args.ray not in ("local", "auto") and (":" not in args.ray or Path(args.ray).exists()):
        # --ray takes an optional value, so `--ray shards/*.tar` would take the first input for it
        raise ValueError(
            f"--ray {args.ray!r}: expected local, auto or a cluster address (host:port, ray://host:port); to run "
            "locally, write --ray local, or put --ray after the inputs"
        )
    if ranks is not None:
        raise ValueError("--ray and torchrun are two ways to scale out; run either one (docs/scale-out.md)")
    if args.out is None:
        raise ValueError("--ray writes part files into a folder: name it with --out")


def run_ray(args: argparse.Namespace, sources):
    """The Ray Data job; each actor builds the classifier from the same options."""
    from fastgen.api.calibration import Calibration
    from fastgen.jobs.ray_job import classify_ray

    # A bad calibration file is refused before Ray starts or a model is loaded.
    calibration = Calibration.load(args.calibration) if args.calibration is not None else None

    def build():
        clf = classifier_from_args(args)
        clf.use_calibration(calibration)
        return clf

    return classify_ray(
        build, sources, out=args.out, address=args.ray, actors=args.ray_actors, out_format=args.out_format,
        **({"images_per_block": args.images_per_block} if args.images_per_block else {}),
        labels_from_folders=args.labels_from_folders, retry_failed=args.retry_failed, force=args.force,
        progress=not args.no_progress,
    )  # fmt: skip


def refuse_unused_column_options(args: argparse.Namespace, sources) -> None:
    """Column options only mean something for tables: without one among the inputs they are
    refused rather than ignored."""
    from fastgen.inputs.sources import ParquetSource, SavedDatasetSource

    if any(isinstance(s, (ParquetSource, SavedDatasetSource)) for s in sources):
        return
    for option in ("image_column", "id_column", "label_column"):
        if getattr(args, option) is not None:
            flag = "--" + option.replace("_", "-")
            raise ValueError(f"{flag} names a column of .parquet files or saved datasets; no input is one")


def print_summary(summary, args: argparse.Namespace) -> None:
    in_output = f", errors in output: {summary.errors_in_output}" if args.out is not None else ""
    print(
        f"images: {summary.total}, computed: {summary.computed}, skipped (already in output): "
        f"{summary.skipped}, failed: {summary.failed}{in_output}",
        file=sys.stderr,
    )
    if args.out is not None and summary.errors_in_output and not args.retry_failed:
        print(
            f"{summary.errors_in_output} images have an error as their latest record in {args.out}; "
            "after fixing them, run the same command with --retry-failed to redo them",
            file=sys.stderr,
        )
    if summary.accuracy is not None:
        print(f"accuracy: {summary.accuracy:.4f} over {summary.labelled} labelled images", file=sys.stderr)
