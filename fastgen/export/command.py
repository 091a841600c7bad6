"""`fastgen export`: export a model's denoiser to ONNX or a TensorRT engine, into the cache."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def parse_option(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` with VALUE as bool, int, float, a comma list of those, or a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    parts = [_scalar(v) for v in value.split(",")]
    return key.strip().replace("-", "_"), tuple(parts) if len(parts) > 1 else parts[0]


def _scalar(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def _batch_sizes(text: str) -> tuple[int, int, int]:
    from fastgen.export.spec import check_batch_sizes

    try:
        sizes = tuple(int(v) for v in text.split(","))
        return check_batch_sizes(sizes)  # type: ignore[arg-type]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_export_command(sub: argparse._SubParsersAction) -> None:
    from fastgen.export.onnx_export import EXPORTERS
    from fastgen.export.pipeline import FORMATS

    parser = sub.add_parser("export", help="export the denoiser to ONNX or a TensorRT engine (cached)")
    parser.add_argument("--model", default="builtin:digits", help="hub id, folder or builtin:NAME")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default fp32): the graph's and engine's precision")
    parser.add_argument(
        "--batch-sizes", type=_batch_sizes, default=(1, 64, 64), metavar="MIN,OPT,MAX",
        help="TensorRT shape profile (an ONNX file has a dynamic batch axis and ignores it)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="cache folder (default: ~/.cache/fastgen/exports)")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo")
    parser.add_argument("--no-verify", action="store_true", help="skip the parity check against torch")
    parser.add_argument("--local-files-only", action="store_true", help="never touch the network")
    parser.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints (trusted only)")
    parser.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from fastgen.api import default_device, parse_dtype
    from fastgen.export.pipeline import export_model
    from fastgen.models import load_adapter

    adapter = load_adapter(
        args.model,
        device=args.device or default_device(),
        dtype=parse_dtype(args.dtype),
        local_files_only=args.local_files_only or None,
        allow_pickle=args.allow_pickle,
    )
    result = export_model(
        adapter, format=args.format, batch_sizes=args.batch_sizes, out=args.out,
        exporter=args.exporter, verify=not args.no_verify,
    )  # fmt: skip
    verb = "built" if result.built else "found in the cache (nothing built)"
    print(f"{args.format} export {verb}: {result.path}", file=sys.stderr)
    print(json.dumps({"path": str(result.path), "built": result.built, "key": result.key.digest()}))
    return 0
