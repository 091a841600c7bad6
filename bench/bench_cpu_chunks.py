"""How to spread one batch over CPU cores: the torch backend's denoiser alone (no engine) on the
embedded model, compiled, in the fastest CPU settings' dtype, with a batch run (1) whole on the
intra-op thread pool, (2) in chunks on `threads`, (3) in chunks on worker `processes`.

    python bench/bench_cpu_chunks.py --out bench/results/cpu_chunks.jsonl

Prints one JSON line per configuration: rows per second over `--repeats` timed calls after two
warm-up calls (which compile), for the whole denoiser and for the shared-prefix path (each
distinct input once, ten class rows per input, as the engine calls it).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fastgen import DiffusionClassifier
from fastgen.backends.presets import fastest_settings
from fastgen.eval.benchmark import environment


def rows_per_second(call, repeats: int) -> float:
    call()
    call()
    start = time.perf_counter()
    for _ in range(repeats):
        rows = call()
    return rows * repeats / (time.perf_counter() - start)


def measure(name: str, split: dict, batch: int, repeats: int) -> dict:
    settings = fastest_settings("cpu")
    options = {k: v for k, v in settings["backend_options"].items() if k not in ("threads", "processes")}
    clf = DiffusionClassifier.from_pretrained(
        "builtin:digits", device="cpu", dtype=settings["dtype"], backend="torch", backend_options={**options, **split}
    )
    g = torch.Generator().manual_seed(0)
    n_classes = len(clf.conditions)
    distinct = batch // n_classes
    x_t = torch.randn(distinct, *clf.adapter.x0_shape, generator=g)
    t = torch.randint(0, clf.adapter.num_train_timesteps, (distinct,), generator=g)
    rows = torch.arange(distinct).repeat_interleave(n_classes)
    cond = clf.conditions[torch.arange(rows.shape[0]) % n_classes]
    whole = lambda: clf.denoise(x_t[rows], t[rows], cond).shape[0]
    shared = lambda: clf.denoise(x_t, t, cond, rows).shape[0]
    report = {
        "config": name,
        "backend_options": {**options, **split},
        "dtype": str(settings["dtype"]),
        "batch_rows": int(rows.shape[0]),
        "whole_rows_per_s": rows_per_second(whole, repeats),
        "shared_prefix_rows_per_s": rows_per_second(shared, repeats),
    }
    clf.denoise.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=510, help="rows per call (a multiple of the 10 classes)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = parser.parse_args()
    cores = torch.get_num_threads()
    configs = {
        "one batch, intra-op threads": {},
        f"threads={cores}": {"threads": cores},
        f"processes={cores}": {"processes": cores},
    }
    for name, split in configs.items():
        line = json.dumps({**environment(torch.device("cpu")), **measure(name, split, args.batch, args.repeats)})
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main()
