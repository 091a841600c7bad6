"""CPU threads: `fastgen demo` on held-out digits with 1 thread, 2 threads and fastgen's own
default, on a quiet machine, beside busy processes, and with busy processes that start mid-run.

    python bench/bench_threads.py --n-images 100 --repeats 3 --out bench/results/threads_cpu.jsonl

Each run is a fresh `fastgen demo --json` process; the time to classify the images is the demo's
own figure (`classify_seconds`; start-up and model loading excluded), the process's wall time is
recorded beside it, and the report (accuracy, calls, the threads it chose) comes from the JSON line. `--busy K` starts K processes
that spin on one core each for the length of every "beside busy" run, the way another job on a
shared machine would. Variants set the environment a user could set: OMP_NUM_THREADS (torch's
thread count) and OMP_WAIT_POLICY (whether idle OpenMP threads spin or sleep). One JSON line per
run, with the CPU named and whether it has native bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine_facts import cpu_facts

SPIN = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass\n"

VARIANTS = {
    "default": {},
    "threads=1": {"FASTGEN_THREADS": "1"},
    "threads=2": {"FASTGEN_THREADS": "2"},
}


def run_demo(n_images: int, env_changes: dict[str, str], busy: int, busy_after_s: float = 0.0) -> dict[str, object]:
    """One `fastgen demo` process; `busy` spinners start `busy_after_s` seconds after it (0: half a
    second before it, so they hold their cores when it counts the idle ones)."""
    env = {**os.environ, **env_changes}
    spinners = []
    try:
        if busy and not busy_after_s:
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
            time.sleep(0.5)
        start = time.perf_counter()
        demo = subprocess.Popen(
            [sys.executable, "-m", "fastgen", "demo", "--n-images", str(n_images), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        if busy and busy_after_s:
            time.sleep(busy_after_s)
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
        stdout, stderr = demo.communicate()
        seconds = time.perf_counter() - start
        done = subprocess.CompletedProcess(demo.args, demo.returncode, stdout, stderr)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    if done.returncode != 0:
        raise RuntimeError(f"fastgen demo failed ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "seconds": round(seconds, 3),  # the whole process: start-up, model load, classification
        "classify_seconds": round(report["seconds"], 3),  # classifying the images alone
        "accuracy": report["accuracy"],
        "unet_evals_per_image": report["unet_evals_per_image"],
        "threads": report.get("threads"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-repeat", type=int, default=0, help="number of the first repeat (to add to a file)")
    parser.add_argument("--busy", type=int, default=1, help="spinning processes beside the 'busy' runs")
    parser.add_argument(
        "--busy-after", type=float, default=8.0,
        help="the 'busy later' runs start their spinners this many seconds after fastgen (mid-run)",
    )  # fmt: skip
    parser.add_argument("--loads", default="quiet,busy,busy later", help="comma list of quiet, busy, busy later")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=None, help="append one JSON line per run here")
    args = parser.parse_args(argv)
    machine = cpu_facts()
    rows = []
    for repeat in range(args.first_repeat, args.first_repeat + args.repeats):
        for load in args.loads.split(","):
            for name in args.variants.split(","):
                busy = 0 if load == "quiet" else args.busy
                after = args.busy_after if load == "busy later" else 0.0
                result = run_demo(args.n_images, VARIANTS[name], busy, after)
                row = {
                    "bench": "threads", "variant": name, "load": load, "busy_processes": busy,
                    "busy_after_s": after, "repeat": repeat,
                    "n_images": args.n_images, **result, **machine,
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out is not None:
                    with args.out.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
    print("\nclassification seconds (the process's wall time in brackets)")
    print("variant        load        min s   median s   (process median s, runs)")
    for load in args.loads.split(","):
        for name in args.variants.split(","):
            chosen = [r for r in rows if r["variant"] == name and r["load"] == load]
            times = [r["classify_seconds"] for r in chosen]
            process = statistics.median(r["seconds"] for r in chosen)
            print(
                f"{name:14s} {load:10s} {min(times):6.2f}   {statistics.median(times):8.2f}   "
                f"({process:.2f}, {len(times)})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
