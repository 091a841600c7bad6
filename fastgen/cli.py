"""The `fastgen` command line: argparse subcommands that call the public API.

Only the standard library and torch-free fastgen modules are imported here at module level, and a
subcommand's options are added only when that subcommand is used: `fastgen --help` and
`fastgen env` never import torch or diffusers, and so answer at once.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path

from fastgen.choices import (
    BACKENDS,
    DEFAULT_MAX_PIXELS,
    DTYPE_NAMES,
    INVERT_MODES,
    LOSSES,
    POLICIES,
    TIMESTEP_MODES,
)
from fastgen.cli_types import (
    OneLineErrorParser,
    finite_float,
    int_in,
    open_probability,
    parse_option,
    positive_int,
    positive_int_list,
    positive_int_or_all,
    seed_value,
)
from fastgen.optional import installed_version

# The options of each policy, as argparse `dest` names.
POLICY_OPTIONS = {
    "exhaustive": ("n_samples",),
    "stages": ("n_samples", "to_keep"),
    "paired": ("alpha", "min_samples", "max_samples", "check_every"),
}
POLICY_NAMES = {"Exhaustive": "exhaustive", "FixedStages": "stages", "PairedTest": "paired"}


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and scoring")
    group.add_argument("--model", default="builtin:digits", help="hub id, folder or builtin:NAME")
    group.add_argument("--classes", help="file with one name per line, a prompt CSV, or a comma list (default: the model's)")
    group.add_argument(
        "--template", action="append", dest="templates",
        help="prompt template with {} (repeatable; default: the model's own, with or without --classes)",
    )  # fmt: skip
    group.add_argument("--aggregate", choices=("mean", "min"), default="mean", help="combine several prompts of a class")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    group.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="default fp32")
    group.add_argument("--batch-size", type=positive_int, default=64, help="denoiser rows per batch")
    group.add_argument("--seed", type=seed_value, default=0, help="fixes every (timestep, noise) sample; 0..2**32-1")
    group.add_argument("--loss", choices=LOSSES, default="l2")
    group.add_argument("--timesteps", choices=TIMESTEP_MODES, default="even")
    group.add_argument("--weighting", type=finite_float, default=0.0, help="k in w(t)=exp(-k t); 0 is uniform")
    group.add_argument(
        "--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
        help=f"refuse image files with more pixels than this, from their header (default {DEFAULT_MAX_PIXELS:,})",
    )  # fmt: skip
    group.add_argument(
        "--invert", choices=INVERT_MODES, default=None,
        help="match images to the model's ink polarity: auto (the default for a model that declares one) inverts "
        "an image whose background has the other polarity; always; never",
    )  # fmt: skip
    group.add_argument("--local-files-only", action="store_true", help="never touch the network")
    group.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints (trusted only)")
    add_backend_options(parser)
    policy = parser.add_argument_group("adaptive evaluation")
    policy.add_argument("--policy", choices=POLICIES, default=None, help="default: the model's, else paired")
    policy.add_argument("--n-samples", type=positive_int_list, help="exhaustive: N; stages: N1,N2,...")
    policy.add_argument("--to-keep", type=positive_int_list, help="stages: K1,K2,...")
    policy.add_argument("--alpha", type=open_probability, help="paired: drop a class when p < alpha")
    policy.add_argument("--min-samples", type=int_in(2), help="paired: samples before the first test (>= 2)")
    policy.add_argument("--max-samples", type=positive_int, help="paired: cap on samples per class")
    policy.add_argument("--check-every", type=positive_int, help="paired: samples between tests")


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("denoiser backend")
    group.add_argument("--backend", choices=BACKENDS, default=None, help="default: the model as loaded, in eager torch")
    group.add_argument("--export-dir", type=Path, help="export cache (default: ~/.cache/fastgen/exports)")
    group.add_argument(
        "--backend-option", type=parse_option, action="append", dest="backend_options", metavar="KEY=VALUE",
        help="e.g. compile=true, cuda_graphs=true, exporter=torchscript, batch_sizes=1,32,64 (repeatable)",
    )  # fmt: skip


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_policy_options(args: argparse.Namespace, policy: str, *, chosen: bool) -> None:
    """Refuse policy options that `policy` would silently ignore, and combinations it cannot
    take, naming the options as typed."""
    whose = f"--policy {policy}" if chosen else f"the model's default policy ({policy})"
    given = [d for d in dict.fromkeys(sum(POLICY_OPTIONS.values(), ())) if getattr(args, d, None) is not None]
    unused = [d for d in given if d not in POLICY_OPTIONS[policy]]
    if unused:
        takes = ", ".join(_flag(d) for d in POLICY_OPTIONS[policy])
        raise ValueError(
            f"{', '.join(_flag(d) for d in unused)} does not apply to {whose}, which takes {takes}; "
            "choose the policy with --policy"
        )
    if policy == "exhaustive" and args.n_samples is not None and len(args.n_samples) != 1:
        raise ValueError(f"--n-samples takes one number with {whose}, got {','.join(map(str, args.n_samples))}")
    if policy == "stages" and args.n_samples is not None and args.to_keep is not None:
        if len(args.n_samples) != len(args.to_keep):
            raise ValueError(
                f"--n-samples and --to-keep need one value per stage each, got {len(args.n_samples)} "
                f"and {len(args.to_keep)}"
            )
    if policy == "paired" and None not in (args.min_samples, args.max_samples) and args.min_samples > args.max_samples:
        raise ValueError(f"--min-samples {args.min_samples} is more than --max-samples {args.max_samples}")


def classifier_from_args(args: argparse.Namespace):
    from fastgen.api import DiffusionClassifier

    if args.policy is not None:  # checked before the model is loaded
        check_policy_options(args, args.policy, chosen=True)
    options = {
        "n_samples": args.n_samples,
        "alpha": args.alpha,
        "min_samples": args.min_samples,
        "max_samples": args.max_samples,
        "check_every": args.check_every,
        "to_keep": args.to_keep,
    }
    clf = DiffusionClassifier.from_pretrained(
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
        max_pixels=args.max_pixels,
        invert=args.invert,
        local_files_only=args.local_files_only or None,
        allow_pickle=args.allow_pickle,
        backend=args.backend,
        backend_options=dict(args.backend_options or []),
        export_dir=args.export_dir,
    )
    if args.policy is None and type(clf.policy).__name__ in POLICY_NAMES:
        check_policy_options(args, POLICY_NAMES[type(clf.policy).__name__], chosen=False)
    return clf


def cmd_classify(args: argparse.Namespace) -> int:
    from fastgen import distributed
    from fastgen.batch_job import classify_files
    from fastgen.images import find_images
    from fastgen.results_file import check_not_foreign, check_writable

    paths = find_images(args.images)
    if not paths:
        raise ValueError("no image files found in the given inputs")
    if args.out is not None:  # refuse a bad --out before spending time on loading the model
        check_writable(args.out)
        check_not_foreign(args.out)
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
                retry_failed=args.retry_failed,
                force=args.force,
            )
    if summary is None:
        return 0
    print_summary(summary, args)
    return 0


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


def cmd_demo(args: argparse.Namespace) -> int:
    from fastgen.demo import run_demo, run_shift_table

    clf = classifier_from_args(args)
    policy = type(clf.policy).__name__
    if args.shifts:
        rows = run_shift_table(clf, args.n_images)
        print(f"{'shift':<18} {'fastgen':>8} {'baseline':>9} {'evals/img':>10}")
        for row in rows:
            print(f"{row['shift']:<18} {row['accuracy']:>8.3f} {row['baseline_accuracy']:>9.3f} {row['unet_evals_per_image']:>10.1f}")
        if args.json:
            print(json.dumps({"model": args.model, "policy": policy, "shifts": rows}))
        return 0
    report = run_demo(clf, args.n_images)
    print(f"model: {args.model}  policy: {policy}  device: {clf.adapter.device}")
    print(f"held-out images:        {report['images']}")
    print(f"fastgen accuracy:       {report['accuracy']:.4f}")
    print(f"baseline accuracy:      {report['baseline_accuracy']:.4f}  (logistic regression, same training split)")
    print(f"UNet evaluations/image: {report['unet_evals_per_image']:.1f}")
    print(f"images/s:               {report['images_per_s']:.2f}  ({report['seconds']:.1f} s)")
    if args.json:
        summary = {k: v for k, v in report.items() if k != "predictions"}
        print(json.dumps({"model": args.model, "policy": policy, **summary, "predictions": report["predictions"]}))
    return 0


def nvidia_gpus() -> list[str]:
    """GPU models as the NVIDIA driver lists them, read without initialising CUDA or torch."""
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        found = re.search(r"^Model:\s*(.+)$", info.read_text(errors="replace"), re.MULTILINE)
        names.append(found.group(1).strip() if found else "NVIDIA GPU")
    return names


def torch_cuda_build() -> str:
    """The CUDA version torch was built for, from its version.py, without importing torch."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return "torch not installed"
    version_file = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    try:
        found = re.search(r"^cuda\b[^=]*=\s*(.+)$", version_file.read_text(), re.MULTILINE)
        cuda = ast.literal_eval(found.group(1).strip()) if found else None
    except (OSError, ValueError, SyntaxError):
        return "unknown"
    return cuda or "none (CPU-only build)"


def cmd_env(args: argparse.Namespace) -> int:
    packages = ("fastgen", "torch", "diffusers", "transformers", "triton", "onnx", "onnxruntime", "tensorrt")
    gpus = nvidia_gpus()
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{p: installed_version(p) or "not installed" for p in packages},
        "torch_cuda": torch_cuda_build(),
        "devices": gpus or ["cpu"],
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    if args.torch:  # what torch itself sees; importing it takes seconds
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["torch_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"]
        info["cpu_threads"] = torch.get_num_threads()
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>14}: {value}")
    return 0


# -- the parser ---------------------------------------------------------------------------------------
def add_classify_arguments(classify: argparse.ArgumentParser) -> None:
    classify.add_argument("images", nargs="+", help="image files, folders (recursive) or globs")
    classify.add_argument("--out", type=Path, help="results .jsonl (resumable); default: stdout")
    classify.add_argument("--labels-from-folders", action="store_true", help="report accuracy, label = parent folder name")
    classify.add_argument(
        "--retry-failed", action="store_true",
        help="also redo images whose latest record in --out is an error (the new record is appended and wins)",
    )  # fmt: skip
    classify.add_argument(
        "--force", action="store_true",
        help="resume an --out file whose header has other settings: keep its records, append a new header and the new results",
    )  # fmt: skip
    classify.add_argument("--no-progress", action="store_true")
    add_model_options(classify)
    classify.set_defaults(func=cmd_classify)


def add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--n-images", type=positive_int_or_all, default=100, help="held-out images to use, or 'all'")
    demo.add_argument("--shifts", action="store_true", help="accuracy under noise, blur and contrast shifts")
    demo.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    add_model_options(demo)
    demo.set_defaults(func=cmd_demo)


def add_bench_arguments(bench: argparse.ArgumentParser) -> None:
    from fastgen import bench_command  # imports torch: only when `fastgen bench` runs

    bench_command.add_arguments(bench)
    bench.set_defaults(func=bench_command.main)


def add_env_arguments(env: argparse.ArgumentParser) -> None:
    env.add_argument("--json", action="store_true")
    env.add_argument("--torch", action="store_true", help="also import torch and report what it sees (slower)")
    env.set_defaults(func=cmd_env)


def add_export_arguments(export: argparse.ArgumentParser) -> None:
    from fastgen.export.command import add_arguments

    add_arguments(export)


# name -> (help, function adding the subcommand's options)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "classify": ("classify image files into a JSON-lines file", add_classify_arguments),
    "demo": ("classify held-out digits with builtin:digits, beside a baseline", add_demo_arguments),
    "bench": ("fastgen beside the reference-style loop; utilisation; policies", add_bench_arguments),
    "env": ("versions and devices", add_env_arguments),
    "export": ("export the denoiser to ONNX or a TensorRT engine (cached)", add_export_arguments),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `fastgen` parser. With `only`, just that subcommand gets its options (the others are
    listed, with their help, but importing what their options need is skipped)."""
    parser = OneLineErrorParser(prog="fastgen", description="Generative classification with diffusion models")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    for name, (help_text, add_arguments) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            add_arguments(command)
    return parser


def _command_in(argv: list[str]) -> str:
    """The subcommand named in `argv` (its first word that is not an option), or ''."""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(only=_command_in(argv)).parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"fastgen {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a disk that fills up or goes away mid-run: one line, not a traceback
        print(f"fastgen {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Every finished image is already a synced line; the file ends after the last of them.
        out = getattr(args, "out", None)
        where = f"finished images are saved in {out}; " if out else ""
        print(f"fastgen {args.command}: interrupted; {where}run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
