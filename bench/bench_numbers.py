"""1,000 classes: denoiser calls per image, accuracy and agreement with exhaustive evaluation on
`builtin:numbers` held-out images, for each policy at its settings.

    python bench/bench_numbers.py --images 100 --configs exhaustive,tree,screened
    python bench/bench_numbers.py --start 10 --images 5 --configs li   # Li et al.: 100,000 calls/image
    python bench/bench_numbers.py --summary --exhaustive-samples 16

Every configuration scores the same held-out images (`heldout_numbers`, seed 0) with the same
seed; image i always gets the same noise, so a slow configuration can be run in chunks of images
(`--start`, `--images`) that are joined afterwards. One JSON object per configuration and chunk is
appended to `--out` (default `bench/results/numbers_cpu.jsonl`) and printed last.

Settings are chosen on training compositions, never on the held-out numbers: `--split train`
scores the first of 200 compositions of random numbers from training digits (the same 200 in
every run), and `--options JSON` runs a configuration with other policy settings, e.g.

    python bench/bench_numbers.py --split train --images 40 --configs exhaustive --exhaustive-samples 32 --seed 1 --ties --out bench/results/numbers_train_cpu.jsonl
    python bench/bench_numbers.py --split train --images 40 --configs tree --options '{"beam": 2}' --out bench/results/numbers_train_cpu.jsonl

`--summary` joins the chunks of each configuration (same policy settings) by image index and
prints one row per configuration: images, accuracy, UNet evaluations per image, images/s, peak
memory, and agreement with the exhaustive reference of `--exhaustive-samples` samples per class on
the images both scored (none for the reference itself, which would agree with itself); for a
policy that can end undecided, also how many images it left undecided and on how many it dropped
the reference's winner (neither its answer nor among its survivors).

`peak_rss_mib` is this process's peak resident set while one configuration loads and runs (the
high-water mark is reset before it on Linux; elsewhere it is the process's peak so far).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import fastgen
from fastgen.builtin import resolve_builtin
from fastgen.builtin.numbers_data import heldout_numbers, training_numbers
from fastgen.engine.policies import LI_IMAGENET, paired_p_values
from fastgen.eval.benchmark import environment, peak_memory, reset_peak_memory
from fastgen.eval.noise_fit import sample_errors
from fastgen.eval.shifts import blur, contrast, gaussian_noise
from fastgen.models.layout import read_defaults

MODEL = "builtin:numbers"
TRAIN_SEED = 7  # the training compositions settings are chosen on (`--split train`)
TRAIN_IMAGES = 200  # drawn at once, so that chunks of them are the same images
TIE_P = 0.01  # a reference tie: a class not worse than the winner at p >= 0.01 (one-sided paired t-test)
TREE = str(resolve_builtin(MODEL) / "label_tree.json")
PROFILE = str(resolve_builtin(MODEL) / "noise_profile.json")
CONFIGS = {
    "exhaustive": ("exhaustive", {}),  # n_samples from --exhaustive-samples
    "li": ("stages", LI_IMAGENET),
    # The default of builtin:numbers, read from its fastgen.json, and the default before it (3
    # nodes of 16 samples per level).
    "tree": ("tree", {k: v for k, v in read_defaults(resolve_builtin(MODEL))["policy"].items() if k != "name"}),
    "tree-wide": ("tree", {"tree": TREE, "beam": 3, "node_samples": 16, "min_samples": 16, "max_samples": 64}),
    # The tree with the sequential rule (stated error) at every level, t-test or noise-profile boundary.
    "tree-sequential": ("tree", {"tree": TREE, "beam": 3, "node_samples": 16, "max_samples": 64, "confidence": 0.99}),
    "tree-profile": (
        "tree",
        {"tree": TREE, "beam": 3, "node_samples": 16, "max_samples": 64, "confidence": 0.99, "noise_profile": PROFILE},
    ),
    "tree-profile-average": (
        "tree",
        {
            "tree": TREE,
            "beam": 3,
            "node_samples": 16,
            "max_samples": 64,
            "confidence": 0.99,
            "noise_profile": PROFILE,
            "coverage": "average",
        },
    ),  # fmt: skip
    "screened": ("paired", {"screen_samples": 2, "screen_keep": 30, "min_samples": 16, "max_samples": 64}),
}


def shifted(images: np.ndarray, shift: str | None) -> list:
    """The images as the classifier gets them: uint8 as stored, or with `shift` (NAME:STRENGTH,
    `noise:SIGMA`, `blur:SIGMA_PX`, `contrast:FACTOR` of `fastgen.eval.shifts`) applied to all of
    them at once as float images in [0, 1], passed as [1, H, W] tensors."""
    if not shift:
        return list(images)
    name, _, strength = shift.partition(":")
    apply = {"noise": gaussian_noise, "blur": blur, "contrast": contrast}[name](float(strength))
    moved = apply(images / 255.0).astype(np.float32)
    return [torch.from_numpy(image[None]) for image in moved]


def numbers(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n images of a split and their labels: the held-out test set, or `TRAIN_IMAGES`
    training compositions of random numbers (seed `TRAIN_SEED`), on which settings are chosen."""
    if split == "heldout":
        return heldout_numbers(n)
    if n > TRAIN_IMAGES:
        raise ValueError(f"the training split of this benchmark holds {TRAIN_IMAGES} images")
    images, labels, _ = training_numbers(TRAIN_IMAGES, np.random.default_rng(TRAIN_SEED))
    return images[:n], labels[:n]


def run_config(
    name: str, start: int, n_images: int, batch_size: int, exhaustive_samples: int, seed: int = 0, plain: bool = False,
    shift: str | None = None, ties: bool = False, split: str = "heldout", options: dict | None = None,
) -> dict:  # fmt: skip
    policy, defaults = CONFIGS[name]
    options = {"n_samples": exhaustive_samples} if name == "exhaustive" else {**defaults, **(options or {})}
    images, labels = numbers(split, start + n_images)
    # A shift is applied to images 0..start+n-1 together (seeded noise depends on the whole array).
    images, labels = shifted(images, shift)[start:], labels[start:]
    reset_peak_memory(torch.device("cpu"))
    clf = fastgen.DiffusionClassifier.from_pretrained(
        MODEL, device="cpu", policy=policy, policy_options=options, batch_size=batch_size, seed=seed,
        error_weights=(1.0,) if plain else None,
    )  # fmt: skip
    began = time.perf_counter()
    tied = standing = None
    if name == "exhaustive" and ties:
        # The per-sample errors of every class, kept for the tie test; the decision is the same
        # lowest mean error that exhaustive scoring takes.
        tables = sample_errors(clf, list(images), n_samples=exhaustive_samples, seeds=[seed] * len(images))
        means = tables.mean(axis=2)
        predicted = [int(np.argmin(m)) for m in means]
        evals = [tables.shape[1] * tables.shape[2]] * len(tables)
        tied = [
            [k for k, p in enumerate(paired_p_values(torch.from_numpy(t), w).tolist()) if k == w or p >= TIE_P]
            for t, w in zip(tables, predicted)
        ]
    else:
        results = clf.classify(list(images))
        predicted = [clf.classes.names.index(r.prediction) for r in results]
        evals = [r.unet_evals for r in results]
        # the classes each decision is among: the prediction alone, or the undecided survivors
        standing = [[clf.classes.names.index(c) for c in r.survivors] for r in results]
    seconds = time.perf_counter() - began
    return {
        "config": name,
        "policy": clf.config.as_dict()["policy"],
        "seed": seed,
        "error_weights": weights_of(clf.config.error_weights),
        "shift": shift,
        "split": split,
        "images": n_images,
        "first_image": start,
        "accuracy": float(np.mean(np.array(predicted) == labels)),
        "unet_evals_per_image": float(np.mean(evals)),
        "unet_evals_max": int(max(evals)),
        "images_per_s": n_images / seconds,
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak_memory(torch.device("cpu")) / 2**20, 1),
        "batch_size": batch_size,
        "predictions": predicted,
        **({"ties": tied} if tied is not None else {}),
        **({"standing": standing} if standing is not None else {}),
    }


def weights_of(error_weights) -> list[float] | None:
    """The scoring's error weights as a row records them: None when every sample counts the same
    (rows from before error weights existed have none)."""
    if error_weights is None or len(set(error_weights)) == 1:
        return None
    return list(error_weights)


def by_image(row: dict) -> dict[int, int]:
    """{held-out image index: predicted class} of one row (rows before chunking start at 0)."""
    first = row.get("first_image", 0)
    return {first + i: p for i, p in enumerate(row["predictions"])}


def is_reference(row: dict, exhaustive_samples: int) -> bool:
    """Whether a row is the exhaustive run the others are compared with."""
    return row["config"] == "exhaustive" and row["policy"]["n_samples"] == exhaustive_samples


def agreement(predictions: dict[int, int], reference: dict[int, int] | None) -> tuple[float | None, int]:
    """Fraction of the images both scored on which the predictions agree, and that image count."""
    shared = sorted(set(predictions) & set(reference or {}))
    if not shared:
        return None, 0
    return float(np.mean([predictions[i] == reference[i] for i in shared])), len(shared)


def summarise(rows: list[dict], exhaustive_samples: int) -> list[dict]:
    """One row per configuration, its chunks joined by image index (the latest run of an image wins)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        key = [
            row["config"],
            row["policy"],
            row.get("seed", 0),
            row.get("error_weights"),
            row.get("shift"),
            row.get("split", "heldout"),
        ]
        groups.setdefault(json.dumps(key, sort_keys=True), []).append(row)
    joined = []
    for chunks in groups.values():
        predictions, ties, standing, evals, seconds, images = {}, {}, {}, 0.0, 0.0, 0
        split = chunks[0].get("split", "heldout")
        truth = dict(enumerate(numbers(split, 1 + max(max(by_image(row)) for row in chunks))[1].tolist()))
        for row in chunks:
            predictions.update(by_image(row))
            ties.update({row.get("first_image", 0) + i: set(t) for i, t in enumerate(row.get("ties") or [])})
            standing.update({row.get("first_image", 0) + i: set(t) for i, t in enumerate(row.get("standing") or [])})
            evals += row["unet_evals_per_image"] * row["images"]
            seconds += row["seconds"]
            images += row["images"]
        labels = np.array([truth[i] for i in sorted(predictions)])
        joined.append({
            "config": chunks[0]["config"], "policy": chunks[0]["policy"], "seed": chunks[0].get("seed", 0),
            "error_weights": chunks[0].get("error_weights"), "shift": chunks[0].get("shift"), "split": split,
            "images": len(predictions),
            "accuracy": float(np.mean(np.array([predictions[i] for i in sorted(predictions)]) == labels)),
            "unet_evals_per_image": round(evals / images, 1),
            "unet_evals_max": max(row["unet_evals_max"] for row in chunks),
            "images_per_s": round(images / seconds, 4),
            "peak_rss_mib": max(row["peak_rss_mib"] for row in chunks),
            "predictions": predictions, "ties": ties or None, "standing": standing or None,
        })  # fmt: skip
    # Each row is compared with the reference scored the same way (the same error weights).
    references = {
        json.dumps([row["error_weights"], row["shift"], row["split"]]): (row["predictions"], row.get("ties"))
        for row in joined
        if is_reference(row, exhaustive_samples)
    }
    for row in joined:
        predictions = row.pop("predictions")
        row.pop("ties")
        standing = row.pop("standing")
        if is_reference(row, exhaustive_samples):
            row["agreement_with_exhaustive"], row["agreement_images"] = None, 0
        else:
            reference, ties = references.get(
                json.dumps([row["error_weights"], row["shift"], row["split"]]), (None, None)
            )
            row["agreement_with_exhaustive"], row["agreement_images"] = agreement(predictions, reference)
            if ties is not None:  # a prediction among the reference's ties counts as agreeing
                shared = sorted(set(predictions) & set(ties))
                row["agreement_ties_allowed"] = float(np.mean([predictions[i] in ties[i] for i in shared]))
            if standing is not None and reference is not None:
                # the reference winner dropped: neither the answer nor among the undecided survivors
                shared = sorted(set(standing) & set(reference))
                row["undecided"] = sum(len(standing[i]) > 1 for i in standing)
                row["winner_eliminated"] = sum(reference[i] not in standing[i] for i in shared)
        row["exhaustive_samples"] = exhaustive_samples
    return joined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--start", type=int, default=0, help="index of the first held-out image")
    parser.add_argument("--summary", action="store_true", help="join the recorded chunks; run nothing")
    parser.add_argument("--configs", default="exhaustive,tree,screened")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--exhaustive-samples", type=int, default=6, help="samples per class of the reference")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the samples' seed (a reference on another seed shares no noise with the policies)",
    )
    parser.add_argument("--plain", action="store_true", help="score without the model's error weights")
    parser.add_argument(
        "--ties", action="store_true", help="exhaustive: keep each image's classes tied with the winner (p >= 0.01)"
    )
    parser.add_argument(
        "--split", choices=("heldout", "train"), default="heldout",
        help="held-out numbers (the test set), or training compositions to choose settings on",
    )  # fmt: skip
    parser.add_argument("--options", type=json.loads, default=None, help="JSON: policy options over the config's own")
    parser.add_argument("--shift", default=None, help="NAME:STRENGTH: noise:SIGMA, blur:SIGMA_PX or contrast:FACTOR")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "numbers_cpu.jsonl")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    earlier = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    if args.summary:
        for row in summarise(earlier, args.exhaustive_samples):
            print(json.dumps(row), flush=True)
        return
    model_weights = read_defaults(resolve_builtin(MODEL)).get("scoring", {}).get("error_weights")
    weights = weights_of((1.0,) if args.plain else model_weights)
    reference = next(
        (
            by_image(r) for r in reversed(earlier)
            if is_reference(r, args.exhaustive_samples) and r.get("error_weights") == weights
            and r.get("shift") == args.shift and r.get("split", "heldout") == args.split
        ),
        None,
    )  # fmt: skip
    env = {**environment(torch.device("cpu")), "cpu_flags_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text()}
    for name in args.configs.split(","):
        row = run_config(
            name, args.start, args.images, args.batch_size, args.exhaustive_samples, args.seed, args.plain, args.shift,
            args.ties, args.split, args.options,
        )  # fmt: skip
        if is_reference(row, args.exhaustive_samples):
            reference = {**(reference or {}), **by_image(row)}
            row["agreement_with_exhaustive"] = None  # the reference itself: it would agree with itself
        else:
            row["agreement_with_exhaustive"] = agreement(by_image(row), reference)[0]
        row.update(
            command="python bench/bench_numbers.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "summary", "options")) + (f" --options '{json.dumps(args.options)}'" if args.options else ""),
            machine=platform.machine(), threads=torch.get_num_threads(), **env,
        )  # fmt: skip
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        summary = {k: v for k, v in row.items() if k != "predictions"}
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
