"""`fastgen export`: export a model's denoiser to ONNX or a TensorRT engine, into the cache."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastgen.api import DTYPES
from fastgen.backends.spec import check_batch_sizes
from fastgen.commands.outputs import check_folder
from fastgen.export.onnx_export import EXPORTERS
from fastgen.export.pipeline import FORMATS


def _batch_sizes(text: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(v) for v in text.split(","))
        return check_batch_sizes(sizes)  # type: ignore[arg-type]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


DEFAULT_BATCH_SIZES = (1, 64, 64)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="builtin:digits", help="hub id, folder or builtin:NAME")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None, help="the graph's and engine's precision (default fp32)"
    )
    parser.add_argument(
        "--batch-sizes", type=_batch_sizes, default=None, metavar="MIN,OPT,MAX",
        help=f"--format tensorrt: the engine's shape profile (default {','.join(map(str, DEFAULT_BATCH_SIZES))}); "
        "an ONNX file has a dynamic batch axis",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="cache folder (default: ~/.cache/fastgen/exports)")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo")
    parser.add_argument("--no-verify", action="store_true", help="skip the parity check against torch")
    parser.add_argument("--local-files-only", action="store_true", help="never touch the network")
    parser.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints (trusted only)")


def run(args: argparse.Namespace) -> int:
    from fastgen.api import default_device, parse_dtype
    from fastgen.export.pipeline import export_model
    from fastgen.models import load_adapter

    if args.batch_sizes is not None and args.format == "onnx":
        raise ValueError("--batch-sizes is a TensorRT shape profile; an ONNX export has a dynamic batch axis: "
                         "leave it out or add --format tensorrt")  # fmt: skip
    check_folder(args.out, "--out")
    adapter = load_adapter(
        args.model,
        device=args.device or default_device(),
        dtype=parse_dtype(args.dtype),
        local_files_only=args.local_files_only or None,
        allow_pickle=args.allow_pickle,
    )
    result = export_model(
        adapter, format=args.format, batch_sizes=args.batch_sizes or DEFAULT_BATCH_SIZES, out=args.out,
        exporter=args.exporter, verify=not args.no_verify,
    )  # fmt: skip
    verb = "built" if result.built else "found in the cache (nothing built)"
    print(f"{args.format} export {verb}: {result.path}", file=sys.stderr)
    print(json.dumps({"path": str(result.path), "built": result.built, "key": result.key.digest()}))
    return 0
