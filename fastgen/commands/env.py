"""`fastgen env`: versions and devices, for bug reports. Answers without importing torch
unless asked (`--torch`), so it is quick even where torch takes seconds to load."""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
from pathlib import Path

from fastgen.optional import installed_version

# The import names reported, each with the pip distributions that install it: a GPU build is
# published under its own name (onnxruntime-gpu, tensorrt-cu12) and is just as good.
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "fastgen": ("fastgen",),
    "torch": ("torch",),
    "diffusers": ("diffusers",),
    "transformers": ("transformers",),
    "triton": ("triton", "pytorch-triton"),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11"),
}


def package_version(package: str) -> str:
    """The installed version of `package` under any of its distribution names; a build with
    another name says which (`1.19.2 (onnxruntime-gpu)`)."""
    for distribution in DISTRIBUTIONS.get(package, (package,)):
        version = installed_version(distribution)
        if version is not None:
            return version if distribution == package else f"{version} ({distribution})"
    return "not installed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--torch", action="store_true", help="also import torch and report what it sees (slower)")


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


def run(args: argparse.Namespace) -> int:
    gpus = nvidia_gpus()
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{p: package_version(p) for p in DISTRIBUTIONS},
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
