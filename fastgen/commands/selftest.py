"""`fastgen selftest`: run every execution path this machine has against the fp32 reference and
print one table (path, model, pass/FAIL/error/skipped with the reason, max relative error,
predictions equal, rows/s). Exit code 1 when a path that ran failed. Run it first on a new GPU
machine, and attach its `--json` output to a bug report."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fastgen.commands.outputs import check_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if torch sees one, else cpu)"
    )
    parser.add_argument(
        "--paths", default=None, help="comma-separated path names to run (default: every path the machine can run)"
    )
    parser.add_argument(
        "--export-dir", type=Path, default=None, help="keep ONNX/TensorRT exports here (default: a temp dir)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON after the table")


def run(args: argparse.Namespace) -> int:
    import torch

    check_folder(args.export_dir, "--export-dir")
    try:
        on_cpu = torch.device(args.device).type == "cpu" if args.device else not torch.cuda.is_available()
    except (RuntimeError, TypeError):
        on_cpu = False  # resolve_device below says what is wrong with the name
    if on_cpu and "triton" not in sys.modules:
        # Off CUDA the Triton kernels run only in the interpreter, chosen before triton loads
        # (which importing fastgen's API does).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from fastgen.api.classifier import resolve_device
    from fastgen.eval.selftest import format_table, run_selftest

    device = resolve_device(args.device)

    requested = {p.strip() for p in args.paths.split(",") if p.strip()} if args.paths else None
    print(f"fastgen selftest on {device} (torch {torch.__version__})", file=sys.stderr, flush=True)
    results = run_selftest(
        device, paths=requested, export_dir=args.export_dir,
        progress=lambda r: print(f"  {r.path} / {r.model}: {r.status} {r.reason}".rstrip(), file=sys.stderr, flush=True),
    )  # fmt: skip
    print(format_table(results))
    failed = [r for r in results if r.status in ("FAIL", "error")]
    if args.json:
        print(json.dumps({"device": str(device), "passed": not failed, "results": [r.as_dict() for r in results]}))
    return 1 if failed else 0
