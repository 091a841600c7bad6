"""1,000 classes: denoiser calls per image, accuracy and agreement with exhaustive evaluation on
`builtin:numbers` held-out images, for each policy at its settings.

    python bench/bench_numbers.py --images 100 --configs exhaustive,tree,screened
    python bench/bench_numbers.py --images 10 --configs li       # Li et al.'s schedule: 100,000 calls/image

Every configuration scores the same held-out images (`heldout_numbers`, seed 0) with the same
seed. Agreement is measured against the exhaustive run's predictions, read back from earlier
rows of `--out` when exhaustive is not in this invocation. One JSON object per configuration is
appended to `--out` (default `bench/results/numbers_cpu.jsonl`) and printed last.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

import fastgen
from fastgen.builtin import resolve_builtin
from fastgen.builtin.numbers_data import heldout_numbers
from fastgen.engine.policies import LI_IMAGENET
from fastgen.eval.benchmark import environment

MODEL = "builtin:numbers"
TREE = str(resolve_builtin(MODEL) / "label_tree.json")
CONFIGS = {
    "exhaustive": ("exhaustive", {}),  # n_samples from --exhaustive-samples
    "li": ("stages", LI_IMAGENET),
    "tree": ("tree", {"tree": TREE, "beam": 3, "node_samples": 16, "min_samples": 16, "max_samples": 64}),
    "screened": ("paired", {"screen_samples": 2, "screen_keep": 30, "min_samples": 16, "max_samples": 64}),
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_config(name: str, n_images: int, batch_size: int, exhaustive_samples: int) -> dict:
    policy, options = CONFIGS[name]
    if name == "exhaustive":
        options = {"n_samples": exhaustive_samples}
    images, labels = heldout_numbers(n_images)
    clf = fastgen.DiffusionClassifier.from_pretrained(
        MODEL, device="cpu", policy=policy, policy_options=options, batch_size=batch_size
    )
    start = time.perf_counter()
    results = clf.classify(list(images))
    seconds = time.perf_counter() - start
    predicted = [clf.classes.names.index(r.prediction) for r in results]
    evals = [r.unet_evals for r in results]
    return {
        "config": name,
        "policy": clf.config.as_dict()["policy"],
        "images": n_images,
        "accuracy": float(np.mean(np.array(predicted) == labels)),
        "unet_evals_per_image": float(np.mean(evals)),
        "unet_evals_max": int(max(evals)),
        "images_per_s": n_images / seconds,
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "batch_size": batch_size,
        "predictions": predicted,
    }


def agreement(row: dict, reference: dict | None) -> float | None:
    if reference is None:
        return None
    n = min(len(row["predictions"]), len(reference["predictions"]))
    return float(np.mean(np.array(row["predictions"][:n]) == np.array(reference["predictions"][:n])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--configs", default="exhaustive,tree,screened")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--exhaustive-samples", type=int, default=6, help="samples per class of the reference")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "numbers_cpu.jsonl")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    earlier = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    reference = next((r for r in reversed(earlier) if r["config"] == "exhaustive"), None)
    env = {**environment(torch.device("cpu")), "cpu_flags_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text()}
    for name in args.configs.split(","):
        row = run_config(name, args.images, args.batch_size, args.exhaustive_samples)
        if name == "exhaustive":
            reference = row
        row["agreement_with_exhaustive"] = agreement(row, reference)
        row.update(
            command="python bench/bench_numbers.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
            machine=platform.machine(), threads=torch.get_num_threads(), **env,
        )  # fmt: skip
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        summary = {k: v for k, v in row.items() if k != "predictions"}
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
