"""Throughput of `fastgen classify` in one process, under torchrun and on Ray Data.

Each launcher runs the real command twice, on N and on 2N images, each time into an output of its
own that no run used before (a repeated run never resumes an earlier one's output); the second
run's extra time is all classification, so `steady_images_per_s = N / (t_2N - t_N)` and
`startup_s = t_N - N / steady_rate` (interpreter, imports, model load, process group or Ray).
Every mode is measured `--repeats` times, the modes taking turns, and a summary row per mode gives
the min and median of each figure. Every worker runs `--threads` torch threads (`--threads` on
the command line, so the count is fixed): torchrun's ranks and Ray's actors as many as one
process of mode `process:T` runs with T. With --modes, a last row states Ray's overhead: its
start-up beyond one process's, and its extra time per image against torchrun with as many workers.

CPU (a tiny random model is built when --model is not given), torchrun at each --nproc:
    python bench/bench_scaleout.py --nproc 1 2
The embedded digits model on held-out digits: one process with 1 and 2 threads, torchrun x2,
Ray x2 actors, 3 repeats:
    python bench/bench_scaleout.py --model builtin:digits --digits --images 1000 --repeats 3 \
        --modes process:1 process:2 torchrun:2 ray:2 --n-samples 4 --out bench/results/scaleout_digits_cpu.jsonl
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


def has_native_bf16() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    flags = (
        next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
        if cpuinfo.exists()
        else ""
    )
    return "avx512_bf16" in flags.split()


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def versions() -> dict[str, str]:
    out = {}
    for package in ("fastgen", "torch", "diffusers", "transformers", "ray"):
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


def write_digits(folder: Path, n: int) -> Path:
    """`n` held-out digits as 8x8 PNG files, the 450 of the split repeated under new names."""
    from fastgen.builtin.digits_data import digits_split, to_pil

    folder.mkdir(parents=True, exist_ok=True)
    _, _, test_x, _ = digits_split()
    for i in range(n):
        to_pil(test_x[i % len(test_x)]).save(folder / f"img{i:05d}.png")
    return folder


def parse_mode(text: str) -> tuple[str, int]:
    """`process[:THREADS]`, `torchrun:N` or `ray:N` as (launcher, workers); a process's number is
    its threads (it is one worker), the others' their workers (of `--threads` each)."""
    launcher, _, number = text.partition(":")
    if launcher not in ("process", "torchrun", "ray") or (launcher != "process" and not number):
        raise argparse.ArgumentTypeError(f"expected process[:THREADS], torchrun:N or ray:N, got {text!r}")
    return launcher, int(number or 1)


def launch_command(launcher: str, workers: int) -> list[str]:
    if launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={workers}",
            "-m",
            "fastgen",
        ]
    return [sys.executable, "-m", "fastgen"]


def timed_run(mode: tuple[str, int], images: Path, out: Path, args: argparse.Namespace, model: str) -> float:
    launcher, workers = mode
    command = [
        *launch_command(launcher, workers), "classify", str(images), "--out", str(out), "--model", model,
        "--policy", "exhaustive", "--n-samples", str(args.n_samples),
        "--batch-size", str(args.batch_size), "--device", args.device, "--no-progress",
    ]  # fmt: skip
    if not args.digits:
        command += ["--classes", CLASSES]
    if launcher == "ray":
        command += ["--ray", "local", "--ray-actors", str(workers)]
    if args.dtype:
        command += ["--dtype", args.dtype]
    threads = workers if launcher == "process" else args.threads  # a process's number is its threads
    command += ["--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def measure(mode, small: Path, large: Path, root: Path, args: argparse.Namespace, model: str, repeat: int = 0) -> dict:
    launcher, workers = mode
    name = f"{launcher}-{workers}-r{repeat}"  # a fresh output for every run: nothing to resume
    load_before = os.getloadavg()[0]  # other work on a shared machine shows here
    t_small = timed_run(mode, small, root / f"small-{name}.out", args, model)
    t_large = timed_run(mode, large, root / f"large-{name}.out", args, model)
    # Below the noise of start-up times the difference says nothing: no rate rather than a wild one.
    rate = args.images / (t_large - t_small) if t_large > t_small else None
    threads = workers if launcher == "process" else args.threads
    return {
        "bench": "scaleout", "device": device_name(args.device), "cpu_native_bf16": has_native_bf16(), **versions(),
        "model": args.model or "tiny-pixel-text (random)", "launcher": launcher, "nproc": workers,
        "cpu": cpu_model(),
        "dtype": args.dtype or "fp32", "classes": 10 if args.digits else len(CLASSES.split(",")),
        "policy": "exhaustive", "n_samples": args.n_samples, "batch_size": args.batch_size,
        "threads_per_worker": threads, "workers": 1 if launcher == "process" else workers, "repeat": repeat,
        "images": [args.images, 2 * args.images], "wall_s": [round(t_small, 3), round(t_large, 3)],
        "load_average_1min_before": round(load_before, 2),
        "steady_images_per_s": round(rate, 3) if rate else None,
        "startup_s": round(t_small - args.images / rate, 3) if rate else None,
    }  # fmt: skip


def ray_overhead(rows: list[dict]) -> dict | None:
    """Ray's start-up beyond one process's, and its extra steady time per image against
    torchrun with the same number of workers."""
    by_mode = {(r["launcher"], r["nproc"]): r for r in rows}
    process = by_mode.get(("process", 1))
    summary: dict = {"bench": "scaleout-ray-overhead"}
    for (launcher, workers), row in by_mode.items():
        if launcher != "ray" or row["steady_images_per_s"] is None:
            continue
        if process is not None and process["startup_s"] is not None:
            summary[f"ray{workers}_startup_beyond_one_process_s"] = round(row["startup_s"] - process["startup_s"], 3)
        torchrun = by_mode.get(("torchrun", workers))
        if torchrun is not None and torchrun["steady_images_per_s"] is not None:
            extra = 1 / row["steady_images_per_s"] - 1 / torchrun["steady_images_per_s"]
            summary[f"ray{workers}_per_image_overhead_vs_torchrun{workers}_ms"] = round(1000 * extra, 3)
    return summary if len(summary) > 1 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="hub id or folder (default: a tiny random pixel-space model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="torchrun world sizes (without --modes)")
    parser.add_argument(
        "--modes", type=parse_mode, nargs="+", default=None, help="process, torchrun:N, ray:N (instead of --nproc)"
    )
    parser.add_argument("--digits", action="store_true", help="held-out digits as the images (--model builtin:digits)")
    parser.add_argument("--images", type=int, default=64, help="N: the runs use N and 2N images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each torchrun rank and Ray actor")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of every mode, the modes taking turns")
    parser.add_argument("--out", type=Path, default=None, help="also append the rows to this .jsonl")
    args = parser.parse_args()
    modes = args.modes or [("torchrun", n) for n in args.nproc]

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = args.model
        if model is None:
            from fastgen.testing import make_pixel_text

            model = str(make_pixel_text(root / "tiny-model", seed=0))
        if args.digits:
            small, large = write_digits(root / "small", args.images), write_digits(root / "large", 2 * args.images)
        else:
            small = write_images(root / "small", args.images, args.image_size)
            large = write_images(root / "large", 2 * args.images, args.image_size)
        for repeat in range(args.repeats):
            for mode in modes:
                rows.append(measure(mode, small, large, root, args, model, repeat))
                emit(rows[-1], args.out)
    medians = []
    for mode in modes:
        summary = summarise_mode([r for r in rows if (r["launcher"], r["nproc"]) == mode])
        medians.append(summary["median_row"])
        emit({k: v for k, v in summary.items() if k != "median_row"}, args.out)
    overhead = ray_overhead(medians)
    if overhead is not None:
        emit(overhead, args.out)
    return 0


def summarise_mode(rows: list[dict]) -> dict:
    """min and median of the steady rate and the start-up over a mode's repeats, and a row of
    medians for the overhead comparison."""
    import statistics

    first = rows[0]
    out: dict = {"bench": "scaleout-summary", "launcher": first["launcher"], "nproc": first["nproc"],
                 "threads_per_worker": first["threads_per_worker"], "repeats": len(rows), "device": first["device"]}  # fmt: skip
    median_row = dict(first)
    for figure in ("steady_images_per_s", "startup_s"):
        values = [r[figure] for r in rows if r[figure] is not None]
        out[figure] = {"min": min(values), "median": statistics.median(values), "all": values} if values else None
        median_row[figure] = statistics.median(values) if values else None
    out["median_row"] = median_row
    return out


def emit(row: dict, out: Path | None) -> None:
    print(json.dumps(row), flush=True)
    if out is not None:
        with out.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
