"""The Ray job's inputs at scale: planning and reading cost against the number of inputs, the time
to a first classified image of a long path list, and memory on a large Parquet file.

    python bench/bench_ray_inputs.py reading --paths 4000 16000 --out bench/results/ray_inputs_cpu.jsonl
    python bench/bench_ray_inputs.py first-image --paths 100000 --out bench/results/ray_inputs_cpu.jsonl
    python bench/bench_ray_inputs.py parquet-memory --images 1000 6000 --size 224 \
        --out bench/results/ray_inputs_cpu.jsonl

`reading`: a text file listing N paths of 8x8 digit PNGs (the 450 held-out digits written once,
listed over and over under distinct names through symbolic links), planned (`plan_units`) and
read and decoded through the job's own Datasource, no model: seconds from the list to the last
row, on a local Ray of the machine's CPUs (started, and its workers warmed up on 400 paths,
before the clock).
`first-image`: `fastgen classify LIST --ray local --out DIR` with `builtin:digits` on such a list;
seconds from the command's start until the first part file is in DIR (the first block's
records, written as soon as that block is classified), then the job is stopped.
`parquet-memory`: a Parquet file of N random RGB PNGs at SIZE px (one row group of 256 rows
each), classified by a tiny random pixel model of MODEL_SIZE px (default 32: each image is decoded
at SIZE and resized to the model's size, as for any model; a 224 px tiny UNet would spend the run
in its attention), exhaustive 2 samples, in one process
(`fastgen classify F.parquet --out F.jsonl`) and on Ray (`--ray local --out DIR`): the peak, over
the run, of the resident memory of the command's process and all its descendants (Ray's workers),
sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_facts import cpu_facts as cpu


def path_list(root: Path, n: int) -> Path:
    """A list of n distinct paths to digit PNGs (symbolic links to the 450 held-out digits)."""
    from fastgen.builtin.digits_data import digits_split, to_pil

    pngs = root / "pngs"
    if not pngs.exists():
        pngs.mkdir(parents=True)
        _, _, test_x, _ = digits_split()
        for i, image in enumerate(test_x):
            to_pil(image).save(pngs / f"d{i:03d}.png")
    links = root / f"links-{n}"
    links.mkdir(exist_ok=True)
    originals = sorted(pngs.glob("*.png"))
    lines = []
    for i in range(n):
        link = links / f"img{i:07d}.png"
        if not link.exists():
            link.symlink_to(originals[i % len(originals)])
        lines.append(str(link))
    listing = root / f"list-{n}.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def cmd_reading(args) -> list[dict]:
    import ray

    from fastgen.inputs.sources import open_sources
    from fastgen.jobs.ray_job import DecodeSpec, plan_units, units_datasource

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        lists = {n: path_list(root, n) for n in args.paths}
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
        try:
            spec = DecodeSpec((8, 8), 1, 10_000_000)
            # Warm-up, not timed: Ray starts its worker processes (and they import fastgen) once.
            warm = plan_units(open_sources([path_list(root, 400)]), frozenset())
            for _ in ray.data.read_datasource(units_datasource(warm.units, spec)).iter_batches(batch_size=None):
                pass
            for n, listing in lists.items():
                start = time.perf_counter()
                plan = plan_units(open_sources([listing]), frozenset())
                planned = time.perf_counter() - start
                dataset = ray.data.read_datasource(units_datasource(plan.units, spec))
                read = sum(
                    int(sum(1 for key in batch["id"] if key))
                    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy")
                )
                seconds = time.perf_counter() - start
                row = {"bench": "ray-reading", "paths": n, "rows": read, "units": len(plan.units),
                       "planning_s": round(planned, 3), "seconds": round(seconds, 3), **cpu()}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            ray.shutdown()
    if len(rows) >= 2:
        ratio = rows[-1]["seconds"] / rows[0]["seconds"]
        rows.append({"bench": "ray-reading-ratio", "paths": [r["paths"] for r in rows], "time_ratio": round(ratio, 3)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def cmd_first_image(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for n in args.paths:
            listing = path_list(root, n)
            out = root / f"out-{n}"
            command = [sys.executable, "-m", "fastgen", "classify", str(listing), "--ray", "local", "--out", str(out),
                       "--model", "builtin:digits", "--device", "cpu", "--no-progress",
                       *(["--images-per-block", str(args.images_per_block)] if args.images_per_block else [])]  # fmt: skip
            env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
            start = time.perf_counter()
            job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            first = None
            while job.poll() is None and time.perf_counter() - start < args.limit:
                if out.is_dir() and any(p.name.startswith("part-") for p in out.iterdir()):
                    first = time.perf_counter() - start
                    break
                time.sleep(0.2)
            job.terminate()
            try:
                job.wait(timeout=60)
            except subprocess.TimeoutExpired:
                job.kill()
            row = {"bench": "ray-first-image", "paths": n, "first_part_s": round(first, 2) if first else None, "images_per_block": args.images_per_block or "default",
                   "limit_s": args.limit, **cpu()}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def parquet_file(root: Path, n: int, size: int) -> Path:
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    path = root / f"images-{n}-{size}.parquet"
    rng = np.random.default_rng(n)
    writer = None
    for start in range(0, n, 256):
        blobs, ids = [], []
        for i in range(start, min(n, start + 256)):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
            blobs.append(buffer.getvalue())
            ids.append(f"{i:06d}")
        table = pa.table({"id": ids, "png": blobs})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return path


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            with open(f"/proc/{current}/status") as handle:
                total += next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def cmd_parquet_memory(args) -> list[dict]:
    from fastgen.testing import make_pixel_text

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = str(make_pixel_text(root / "model", seed=0, sample_size=args.model_size))
        for mode in ("process", "ray"):
            for n in args.images:
                table = parquet_file(root, n, args.size)
                out = root / (f"out-{mode}-{n}" + ("" if mode == "ray" else ".jsonl"))
                command = [sys.executable, "-m", "fastgen", "classify", str(table), "--image-column", "png",
                           "--id-column", "id", "--model", model, "--classes", "cat,dog", "--policy", "exhaustive",
                           "--n-samples", "2", "--device", "cpu", "--threads", "1", "--out", str(out),
                           "--no-progress"]  # fmt: skip
                if mode == "ray":
                    command += ["--ray", "local"]
                env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
                start = time.perf_counter()
                job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                peak = 0
                while job.poll() is None:
                    peak = max(peak, tree_rss(job.pid))
                    time.sleep(0.2)
                seconds = time.perf_counter() - start
                row = {"bench": "parquet-memory", "mode": mode, "images": n, "size": args.size, "model_size": args.model_size,
                       "file_mb": round(table.stat().st_size / 2**20, 1), "peak_rss_mib": round(peak / 2**20, 1),
                       "seconds": round(seconds, 1), "exit": job.returncode, **cpu()}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    reading = sub.add_parser("reading")
    reading.add_argument("--paths", type=int, nargs="+", default=[4000, 16000])
    first = sub.add_parser("first-image")
    first.add_argument("--paths", type=int, nargs="+", default=[100_000])
    first.add_argument("--limit", type=float, default=600.0)
    first.add_argument(
        "--images-per-block", type=int, default=None, help="the job's --images-per-block (default: its own)"
    )
    memory = sub.add_parser("parquet-memory")
    memory.add_argument("--images", type=int, nargs="+", default=[1000, 6000])
    memory.add_argument("--size", type=int, default=224)
    memory.add_argument("--model-size", type=int, default=32)
    for each in (reading, first, memory):
        each.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    run = {"reading": cmd_reading, "first-image": cmd_first_image, "parquet-memory": cmd_parquet_memory}
    rows = run[args.command](args)
    if args.out is not None:
        with args.out.open("a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
