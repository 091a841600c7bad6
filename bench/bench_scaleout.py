"""Throughput of `fastgen classify` under torchrun at several world sizes.

Each world size runs the real command twice, on N and on 2N images, into fresh output files;
the second run's extra time is all classification, so `steady_images_per_s = N / (t_2N - t_N)`
and `startup_s = t_N - N / steady_rate` (interpreter, imports, model load, process group).
One JSON row per world size.

CPU (a tiny random model is built when --model is not given):
    python bench/bench_scaleout.py --nproc 1 2
GPU, one process per GPU:
    python bench/bench_scaleout.py --model stabilityai/stable-diffusion-2-base --device cuda \
        --dtype fp16 --nproc 1 8 --images 256 --n-samples 50 --batch-size 250
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch
from PIL import Image

CLASSES = "cat,dog,bird,fish,horse"


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"cpu: {cpu_model()}, {os.cpu_count()} cores"


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def versions() -> dict[str, str]:
    out = {}
    for package in ("fastgen", "torch", "diffusers", "transformers"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def write_images(folder: Path, n: int, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(n)
    for i in range(n):
        pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i:05d}.png")
    return folder


def timed_run(nproc: int, images: Path, out: Path, args: argparse.Namespace, model: str) -> float:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "fastgen", "classify", str(images), "--out", str(out), "--model", model,
        "--classes", CLASSES, "--policy", "exhaustive", "--n-samples", str(args.n_samples),
        "--batch-size", str(args.batch_size), "--device", args.device, "--no-progress",
    ]  # fmt: skip
    if args.dtype:
        command += ["--dtype", args.dtype]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="hub id or folder (default: a tiny random pixel-space model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=64, help="N: the runs use N and 2N images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = args.model
        if model is None:
            from fastgen.testing import make_pixel_text

            model = str(make_pixel_text(root / "tiny-model", seed=0))
        small = write_images(root / "small", args.images, args.image_size)
        large = write_images(root / "large", 2 * args.images, args.image_size)
        for nproc in args.nproc:
            t_small = timed_run(nproc, small, root / f"small-{nproc}.jsonl", args, model)
            t_large = timed_run(nproc, large, root / f"large-{nproc}.jsonl", args, model)
            rate = args.images / max(t_large - t_small, 1e-9)
            row = {
                "bench": "scaleout", "device": device_name(args.device), **versions(),
                "model": args.model or "tiny-pixel-text (random)", "nproc": nproc, "dtype": args.dtype or "fp32",
                "classes": len(CLASSES.split(",")), "n_samples": args.n_samples, "batch_size": args.batch_size,
                "omp_threads": args.threads, "images": [args.images, 2 * args.images],
                "wall_s": [round(t_small, 3), round(t_large, 3)],
                "steady_images_per_s": round(rate, 3), "startup_s": round(t_small - args.images / rate, 3),
            }  # fmt: skip
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
