"""The `fastgen` command line: argparse subcommands that call the public API."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from pathlib import Path

from fastgen.engine.losses import LOSSES
from fastgen.engine.policies import POLICIES
from fastgen.engine.sampling import TIMESTEP_MODES
from fastgen.optional import installed_version


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and scoring")
    group.add_argument("--model", default="builtin:digits", help="hub id, folder or builtin:NAME")
    group.add_argument("--classes", help="file with one name per line, a prompt CSV, or a comma list")
    group.add_argument("--template", action="append", dest="templates", help="prompt template with {} (repeatable)")
    group.add_argument("--aggregate", choices=("mean", "min"), default="mean", help="combine several prompts of a class")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    group.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default fp32)")
    group.add_argument("--batch-size", type=int, default=64, help="denoiser rows per batch")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--loss", choices=LOSSES, default="l2")
    group.add_argument("--timesteps", choices=TIMESTEP_MODES, default="even")
    group.add_argument("--weighting", type=float, default=0.0, help="k in w(t)=exp(-k t); 0 is uniform")
    group.add_argument("--local-files-only", action="store_true", help="never touch the network")
    group.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints (trusted only)")
    add_backend_options(parser)
    policy = parser.add_argument_group("adaptive evaluation")
    policy.add_argument("--policy", choices=POLICIES, default=None, help="default: the model's, else paired")
    policy.add_argument("--n-samples", type=_int_list, help="exhaustive: N; stages: N1,N2,...")
    policy.add_argument("--to-keep", type=_int_list, help="stages: K1,K2,...")
    policy.add_argument("--alpha", type=float, help="paired: drop a class when p < alpha")
    policy.add_argument("--min-samples", type=int, help="paired: samples before the first test")
    policy.add_argument("--max-samples", type=int, help="paired: cap on samples per class")
    policy.add_argument("--check-every", type=int, help="paired: samples between tests")


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    from fastgen.backends import BACKENDS
    from fastgen.export.command import parse_option

    group = parser.add_argument_group("denoiser backend")
    group.add_argument("--backend", choices=BACKENDS, default=None, help="default: the model as loaded, in eager torch")
    group.add_argument("--export-dir", type=Path, help="export cache (default: ~/.cache/fastgen/exports)")
    group.add_argument(
        "--backend-option", type=parse_option, action="append", dest="backend_options", metavar="KEY=VALUE",
        help="e.g. compile=true, cuda_graphs=true, exporter=torchscript, batch_sizes=1,32,64 (repeatable)",
    )  # fmt: skip


def classifier_from_args(args: argparse.Namespace):
    from fastgen.api import DiffusionClassifier

    options = {
        "alpha": args.alpha,
        "min_samples": args.min_samples,
        "max_samples": args.max_samples,
        "check_every": args.check_every,
        "to_keep": args.to_keep,
    }
    if args.n_samples is not None:
        options["n_samples"] = args.n_samples[0] if args.policy == "exhaustive" else args.n_samples
    return DiffusionClassifier.from_pretrained(
        args.model,
        classes=args.classes,
        templates=args.templates,
        aggregate=args.aggregate,
        device=args.device,
        dtype=args.dtype,
        policy=args.policy,
        policy_options={k: v for k, v in options.items() if v is not None},
        loss=args.loss,
        timesteps=args.timesteps,
        weighting=args.weighting,
        seed=args.seed,
        batch_size=args.batch_size,
        local_files_only=args.local_files_only or None,
        allow_pickle=args.allow_pickle,
        backend=args.backend,
        backend_options=dict(args.backend_options or []),
        export_dir=args.export_dir,
    )


def cmd_classify(args: argparse.Namespace) -> int:
    from fastgen import distributed
    from fastgen.batch_job import classify_files
    from fastgen.images import find_images

    paths = find_images(args.images)
    if not paths:
        raise SystemExit("fastgen classify: no image files found in the given inputs")
    ranks = distributed.launched_ranks()
    with distributed.sigterm_as_interrupt():
        if ranks is not None:  # under torchrun: this rank's shard; rank 0 merges and reports
            summary = distributed.classify_files_distributed(args, paths, classifier_from_args, ranks)
        else:
            summary = classify_files(
                classifier_from_args(args),
                paths,
                out=args.out,
                labels_from_folders=args.labels_from_folders,
                progress=not args.no_progress,
            )
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


def _n_images(text: str) -> int | None:
    return None if text == "all" else int(text)


def cmd_demo(args: argparse.Namespace) -> int:
    from fastgen.demo import DEFAULT_N_IMAGES_BY_TASK, demo_task, run_demo, run_shift_table

    task = demo_task(args.model)
    n_images = DEFAULT_N_IMAGES_BY_TASK[task] if args.n_images == 0 else args.n_images
    clf = classifier_from_args(args)
    policy = type(clf.policy).__name__
    if args.shifts:
        rows = run_shift_table(clf, n_images, task)
        print(f"{'shift':<18} {'fastgen':>8} {'baseline':>9} {'evals/img':>10}")
        for row in rows:
            print(f"{row['shift']:<18} {row['accuracy']:>8.3f} {row['baseline_accuracy']:>9.3f} {row['unet_evals_per_image']:>10.1f}")
        if args.json:
            print(json.dumps({"model": args.model, "policy": policy, "shifts": rows}))
        return 0
    report = run_demo(clf, n_images, task)
    baseline = "logistic regression, same training split" + (", per digit cell" if task == "numbers" else "")
    print(f"model: {args.model}  policy: {policy}  device: {clf.adapter.device}  classes: {len(clf.classes.names)}")
    print(f"held-out images:        {report['images']}")
    print(f"fastgen accuracy:       {report['accuracy']:.4f}")
    print(f"baseline accuracy:      {report['baseline_accuracy']:.4f}  ({baseline})")
    print(f"UNet evaluations/image: {report['unet_evals_per_image']:.1f}")
    print(f"images/s:               {report['images_per_s']:.2f}  ({report['seconds']:.1f} s)")
    if args.json:
        summary = {k: v for k, v in report.items() if k != "predictions"}
        print(json.dumps({"model": args.model, "policy": policy, **summary, "predictions": report["predictions"]}))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{p: installed_version(p) or "not installed" for p in ("fastgen", "torch", "diffusers", "transformers", "triton", "onnx", "onnxruntime", "tensorrt")},
        "cuda_available": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"],
        "cpu_threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>14}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgen", description="Generative classification with diffusion models")
    sub = parser.add_subparsers(dest="command", required=True)

    classify = sub.add_parser("classify", help="classify image files into a JSON-lines file")
    classify.add_argument("images", nargs="+", help="image files, folders (recursive) or globs")
    classify.add_argument("--out", type=Path, help="results .jsonl (resumable); default: stdout")
    classify.add_argument("--labels-from-folders", action="store_true", help="report accuracy, label = parent folder name")
    classify.add_argument("--no-progress", action="store_true")
    add_model_options(classify)
    classify.set_defaults(func=cmd_classify)

    demo = sub.add_parser("demo", help="classify held-out digits (builtin:digits) or numbers (--model builtin:numbers), beside a baseline")
    demo.add_argument("--n-images", type=_n_images, default=0,
                      help="held-out images to use, or 'all' (default: 100 digits, 10 numbers)")
    demo.add_argument("--shifts", action="store_true", help="accuracy under noise, blur and contrast shifts")
    demo.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    add_model_options(demo)
    demo.set_defaults(func=cmd_demo)

    from fastgen import bench_command

    bench = sub.add_parser("bench", help="fastgen beside the reference-style loop; utilisation; policies")
    bench_command.add_arguments(bench)
    bench.set_defaults(func=bench_command.main)

    env = sub.add_parser("env", help="versions and devices")
    env.add_argument("--json", action="store_true")
    env.set_defaults(func=cmd_env)

    from fastgen.export.command import add_export_command

    add_export_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"fastgen {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every finished image is already a synced line; the file ends after the last of them.
        out = getattr(args, "out", None)
        where = f"finished images are saved in {out}; " if out else ""
        print(f"fastgen {args.command}: interrupted; {where}run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
