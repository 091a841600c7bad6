"""The `fastgen bench` command: runs the main benchmark and prints a table, then JSON."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

from fastgen.api import DTYPES, DiffusionClassifier, default_device, parse_dtype
from fastgen.backends.presets import fastest_settings
from fastgen.builtin import BUILTIN_PREFIX
from fastgen.commands.options import (
    EXPORT_BACKENDS,
    add_backend_options,
    backend_options_from_pairs,
    check_backend_args,
)
from fastgen.commands.outputs import check_empty_folder, check_folder
from fastgen.commands.types import positive_int, seed_value
from fastgen.eval import benchmark


def _images(model: str, clf: DiffusionClassifier, n: int, seed: int) -> tuple[list[torch.Tensor], np.ndarray | None]:
    """The embedded models' held-out images; seeded random images of the model's size for any other."""
    if model.startswith(BUILTIN_PREFIX):
        from fastgen.eval.demo import demo_task, load_demo_data

        data = load_demo_data(n, demo_task(model))
        return [torch.from_numpy(x[None].astype(np.float32)) for x in data.test_x], data.test_y
    g = torch.Generator().manual_seed(seed)
    (height, width), channels = clf.adapter.image_hw, clf.adapter.image_channels
    return [torch.rand(channels, height, width, generator=g) for _ in range(n)], None


def _classifier(args: argparse.Namespace, model: str, **overrides) -> DiffusionClassifier:
    options = {
        "classes": args.classes,
        "device": args.device or default_device(),
        "dtype": args.dtype,
        "batch_size": args.batch_size or 256,
        "seed": args.seed,
        "policy": "exhaustive",
        "policy_options": {"n_samples": args.n_samples},
    }
    options.update(overrides)
    return DiffusionClassifier.from_pretrained(model, **options)


def engine_settings(args: argparse.Namespace, device: torch.device, x0_shape: tuple[int, ...]) -> dict:
    """`from_pretrained` arguments for (b): the device's fastest settings unless `--backend`
    names one; `--engine-dtype`, `--batch-size`, `--backend-option` and `--export-dir` override
    either."""
    if args.backend in (None, "fastest"):
        settings = fastest_settings(device, x0_shape=x0_shape)
    elif args.backend == "eager":
        settings = {"dtype": parse_dtype(args.dtype), "batch_size": 256, "backend": None, "backend_options": {}}
    else:
        settings = {"dtype": parse_dtype(args.dtype), "batch_size": 256, "backend": args.backend, "backend_options": {}}
    options = dict(settings["backend_options"] or {})
    options.update(backend_options_from_pairs(args.backend_options))
    if options and settings["backend"] is None:
        raise ValueError("--backend-option needs a backend: --backend torch, onnxruntime or tensorrt")
    if args.export_dir is not None and settings["backend"] not in EXPORT_BACKENDS:
        raise ValueError(
            f"--export-dir is the export cache of --backend {' or '.join(EXPORT_BACKENDS)}; (b) runs on "
            f"{settings['backend'] or 'eager torch'} here (--backend {args.backend or 'fastest'}), which exports nothing"
        )
    settings["backend_options"] = options or None
    settings["export_dir"] = args.export_dir
    if args.engine_dtype:
        settings["dtype"] = parse_dtype(args.engine_dtype)
    if args.batch_size:
        settings["batch_size"] = args.batch_size
    return settings


def measure(args: argparse.Namespace) -> dict:
    model = args.model
    if args.sd2_random:
        from fastgen.testing.sd_sized import make_sd2_base_sized

        model = str(make_sd2_base_sized(args.sd2_random))
    clf = _classifier(args, model, batch_size=32)
    engine = engine_settings(args, clf.adapter.device, clf.adapter.x0_shape)
    engine_clf = _classifier(args, model, **engine)
    # The model as loaded decides the images: random ones of its size for --sd2-random.
    pixels, _ = _images(model, clf, args.n_images, args.seed)
    report = {
        "benchmark": "side_by_side",
        "command": "fastgen bench " + " ".join(sys.argv[2:]),
        **benchmark.environment(clf.adapter.device),
        "settings": {
            "model": args.model if not args.sd2_random else "sd2-base-sized random weights",
            "classes": list(clf.classes.names),
            "policy": "exhaustive",
            "n_samples": args.n_samples,
            "engine_batch_size": engine["batch_size"],
            "engine_backend": engine["backend"] or "eager",
            "engine_backend_options": engine["backend_options"] or {},
            "engine_export_dir": str(engine["export_dir"]) if engine["export_dir"] else None,
            "engine_backend_settings": _describe(engine_clf.denoise),
            "engine_dtype": str(engine_clf.adapter.dtype),
            "engine_scoring": engine_clf.config.as_dict(),
            "reference_rows_per_batch": 32,
            "dtype": str(clf.adapter.dtype),
            "images": len(pixels),
            "image_source": "held-out digits" if model.startswith(BUILTIN_PREFIX) else "seeded random",
            "seed": args.seed,
            "repeats": args.repeats,
        },
    }
    report.update(benchmark.side_by_side(clf, engine_clf, pixels, repeats=args.repeats))
    report.update(benchmark.utilisation(engine_clf, report["fastgen"]))
    if not args.skip_latency:
        latency_clf = _classifier(args, model, policy=None, policy_options=None)
        report["latency"] = {
            "policy": type(latency_clf.policy).__name__,
            **benchmark.latency(latency_clf, pixels[: args.latency_images or DEFAULT_LATENCY_IMAGES]),
        }
    if not args.skip_policies:
        n = args.n_samples
        policies = {
            "exhaustive": ("exhaustive", {"n_samples": n}),
            "stages": ("stages", {"n_samples": (max(2, n // 10), max(3, n // 2), n), "to_keep": (5, 2, 1)}),
            "paired": ("paired", {"alpha": 2e-3, "min_samples": min(20, n), "max_samples": n}),
        }
        report["policies"] = benchmark.policy_table(partial(_classifier, args, model), pixels, policies)
    return report


def _describe(denoise) -> dict:
    describe = getattr(denoise, "describe", None)
    return describe() if callable(describe) else {"backend": "eager"}


def print_table(report: dict) -> None:
    a, b = report["reference_style"], report["fastgen"]
    print(f"device: {report['device_name']} ({report['device']}), {report['settings']['images']} images, "
          f"exhaustive n={report['settings']['n_samples']}, dtype {report['settings']['dtype']}")  # fmt: skip
    print(f"{'':<18}{'images/s':>10}{'evals/s':>12}{'outside UNet':>14}{'peak MiB':>10}")
    for name, row in (("reference-style", a), ("fastgen", b)):
        print(f"{name:<18}{row['images_per_s']:>10.2f}{row['unet_evals_per_s']:>12.0f}"
              f"{row['outside_unet_share']:>13.1%}{row['peak_memory_bytes'] / 2**20:>10.0f}")  # fmt: skip
    spread = report["speedup_runs"]
    print(f"speedup (b)/(a): {report['speedup']:.2f}x (min {spread['min']:.2f}, max {spread['max']:.2f} over "
          f"{spread['runs']} runs); agreement {report['agreement']:.1%}")  # fmt: skip
    print(f"UNet stage: {report['unet_stage_flops_per_s'] / 1e9:.1f} GFLOP/s of {report['matmul_flops_per_s'] / 1e9:.1f} "
          f"measured matmul GFLOP/s = {report['unet_stage_utilisation']:.1%}")  # fmt: skip
    if "latency" in report:
        lat = report["latency"]
        print(
            f"latency ({lat['policy']}): p50 {lat['p50_s']:.3f} s, p90 {lat['p90_s']:.3f} s, p99 {lat['p99_s']:.3f} s"
        )
    for row in report.get("policies", []):
        print(
            f"policy {row['policy']:<11} evals/image {row['unet_evals_per_image']:>8.1f}  agreement {row['agreement_with_exhaustive']:.1%}"
        )


DEFAULT_LATENCY_IMAGES = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="hub id, folder or builtin:NAME (default: builtin:digits)")
    parser.add_argument("--classes", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", choices=DTYPES, default=None)
    parser.add_argument("--n-images", type=positive_int, default=32)
    parser.add_argument("--n-samples", type=positive_int, default=50, help="exhaustive samples per class")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="engine rows per batch (default: the fastest settings' or 256)",
    )
    # (b)'s engine: `fastest` (the default: fastgen.backends.presets.fastest_settings for the
    # device), `eager`, or a backend; --backend-option takes exactly what `classify` takes.
    add_backend_options(parser, backends=("fastest", "eager"))
    parser.add_argument(
        "--engine-dtype", choices=DTYPES, default=None, help="dtype of (b) (default: the fastest settings' or --dtype)"
    )
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs of (a) and (b) each")
    parser.add_argument(
        "--latency-images", type=positive_int, default=None,
        help=f"images timed one by one (default: {DEFAULT_LATENCY_IMAGES}, at most --n-images)",
    )  # fmt: skip
    parser.add_argument("--seed", type=seed_value, default=0, help="0..2**32-1")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-policies", action="store_true")
    parser.add_argument(
        "--sd2-random", metavar="DIR", help="build an SD-2-base-sized random-weight model in DIR and use it"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def check_args(args: argparse.Namespace) -> None:
    """Refuse, before any model loads, options that would be ignored or cannot combine."""
    if args.sd2_random:
        if args.model is not None:
            raise ValueError("--sd2-random builds the model it benchmarks: leave --model out")
        check_sd2_folder(Path(args.sd2_random))
    args.model = args.model or "builtin:digits"  # None only so that --sd2-random can tell it was not given
    if args.latency_images is not None:
        if args.skip_latency:
            raise ValueError("--latency-images does not apply with --skip-latency")
        if args.latency_images > args.n_images:
            raise ValueError(f"--latency-images {args.latency_images} is more than --n-images {args.n_images}")
    check_folder(args.export_dir, "--export-dir")
    if args.backend not in (None, "fastest"):  # `fastest` is known only once the device is: engine_settings checks it
        options = backend_options_from_pairs(args.backend_options)
        if args.backend == "eager" and options:
            raise ValueError("--backend-option needs a backend: --backend eager runs the model as loaded")
        check_backend_args(args.backend, args.export_dir, options)


def check_sd2_folder(folder: Path) -> None:
    """A folder of an earlier --sd2-random build is reused; anything else must be new or empty."""
    if not (folder / "model_index.json").is_file():
        check_empty_folder(folder, "--sd2-random", force_option=False)


def run(args: argparse.Namespace) -> int:
    check_args(args)
    report = measure(args)
    print_table(report)
    if args.json:
        print(json.dumps(report))
    return 0
