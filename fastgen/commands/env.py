"""`fastgen env`: versions and devices, for bug reports."""

from __future__ import annotations

import argparse
import json
import platform

from fastgen.optional import installed_version

PACKAGES = ("fastgen", "torch", "diffusers", "transformers", "triton", "onnx", "onnxruntime", "tensorrt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{p: installed_version(p) or "not installed" for p in PACKAGES},
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
