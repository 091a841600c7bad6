"""Does the stated error hold? How often the default rule of `builtin:digits` (sequential
elimination on its noise profile, with the noise check) drops the class of lowest expected error,
with independent noise for every image and every run.

    python bench/bench_validity.py synthetic --scales 1,1.25,1.5,2,3 --tables 1000 \
        --out bench/results/validity_synthetic.json
    python bench/bench_validity.py digits --conditions clean,noise:0.2,inverted \
        --images 20 --seeds 20 --reference-samples 128 \
        --out bench/results/validity_digits_clean_noise_inverted.json
    python bench/bench_validity.py calls --out bench/results/validity_calls_digits.json

`synthetic`: error tables drawn from the model's own profile: every class has the same expected
error at every timestep (all nine comparisons with class 0 are exactly null, the case the bound
is tightest for), and each class's noise has `scale` times the profile's sd per paired
difference. The rule runs on each table as the engine runs it (its noise check carried from look
to look); a table counts as a drop when class 0 is not standing at the end. Each table is an
independent image.

`digits`: held-out digits (the first `--images / 10` of each class) under a condition (clean; a
shift of `fastgen.eval.shifts` as `NAME:STRENGTH`; `inverted`: 1 - pixels with `invert=never`,
dark ink on white as the model never saw it). The true winner of an image is the class of lowest
mean error over `--reference-samples` exhaustive samples on noise of its own (seed 7_000_000 +
image); each image is then classified `--seeds` times by the default rule, run r with seed
1_000_000 + 1000 x image + r (independent of the reference and of every other run), and a run
counts as a drop when the true winner is not among its survivors.

`calls`: where the default rule's calls go on all 450 held-out digits: the samples of the last
class standing beside the winner, the calls of the others, and the floor the decisive comparison
alone sets.

Rates come with exact (Clopper-Pearson) 95% intervals; the stated rate is 1 - confidence.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine_facts import cpu_facts
from scipy import stats

from fastgen import DiffusionClassifier
from fastgen.builtin.digits_data import CLASS_NAMES, digits_split
from fastgen.engine.policies import Exhaustive
from fastgen.engine.policies.base import call_next_round
from fastgen.eval.shifts import blur, contrast, gaussian_noise

SHIFTS = {"blur": blur, "contrast": contrast, "noise": gaussian_noise}


def interval(k: int, n: int) -> list[float]:
    """Clopper-Pearson 95% interval of a rate k / n."""
    low = 0.0 if k == 0 else float(stats.beta.ppf(0.025, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(0.975, k + 1, n - k))
    return [round(low, 5), round(high, 5)]


def cpu() -> dict[str, object]:
    facts = cpu_facts()
    return {"cpu": facts["cpu"], "avx512_bf16": facts["avx512_bf16"], "torch": torch.__version__}


def default_classifier(**kwargs) -> DiffusionClassifier:
    return DiffusionClassifier.from_pretrained("builtin:digits", device="cpu", **kwargs)


# -- synthetic tables ----------------------------------------------------------------------------
def run_table(policy, table: torch.Tensor) -> tuple[list[int], dict[int, int], object]:
    """(classes standing at the end, each class's samples, the image's state) of `policy` on
    errors [K, N]."""
    alive, n, state = list(range(table.shape[0])), policy.first_round(), policy.start_image()
    stopped: dict[int, int] = {}
    while True:
        kept, next_n = call_next_round(policy, table[alive, :n], alive, state)
        for k in alive:
            if k not in kept or next_n is None:
                stopped[k] = n
        alive = kept
        if next_n is None:
            return alive, stopped, state
        n = next_n


def cmd_synthetic(args) -> dict[str, object]:
    clf = default_classifier()
    policy = clf.config.policy.bind(clf.classes.names)
    if args.check_level is not None:  # the noise check's level, as chosen: see docs/embedded-models.md
        policy = dataclasses.replace(policy, check_level=args.check_level)
    profile = policy._profile
    n, k = policy.max_samples, len(clf.classes)
    sd = profile.sample_sd(n)
    t = profile.timesteps(n)
    level = 0.05 + 0.02 * np.sin(np.pi * (t + 1) / profile.num_train_timesteps)  # any shared level
    rows = []
    for scale in (float(s) for s in args.scales.split(",")):
        rng = np.random.default_rng(args.seed)
        drops, calls, switched, drop_looks = 0, [], 0, []
        for _ in range(args.tables):
            noise = rng.standard_normal((k, n)) * scale * sd / math.sqrt(2.0)
            alive, samples, state = run_table(policy, torch.from_numpy(level + noise))
            calls.append(sum(samples.values()))
            switched_at = getattr(state, "switched_at", None)
            switched += switched_at is not None
            if 0 not in alive:
                drops += 1
                # which boundary dropped it: the profile's until the look the check switched at
                by_profile = switched_at is None or switched_at > samples[0]
                drop_looks.append({"samples": samples[0], "boundary": "profile" if by_profile else "self-normalised"})
        row = {
            "scale": scale, "tables": args.tables, "drops": drops, "rate": drops / args.tables,
            "interval95": interval(drops, args.tables), "stated": round(1 - policy.confidence, 6),
            "switched_share": switched / args.tables, "calls_per_table": float(np.mean(calls)),
            "drops_at": drop_looks,
        }  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {
        "bench": "validity synthetic",
        "policy": {**clf.config.as_dict()["policy"], "check_level": policy.check_level},
        "rows": rows,
    }


# -- digits --------------------------------------------------------------------------------------
def condition_images(name: str, images: np.ndarray) -> tuple[np.ndarray, dict[str, object]]:
    """Float pixels [N, 8, 8] in [0, 1] under a condition, and the loading options it needs."""
    pixels = images.astype(np.float32) / 255.0  # digits_split stores ink as 0..255
    if name == "clean":
        return pixels, {}
    if name == "inverted":
        return 1.0 - pixels, {"invert": "never"}
    shift, strength = name.split(":")
    return SHIFTS[shift](float(strength))(pixels).astype(np.float32), {}


def cmd_digits(args) -> dict[str, object]:
    _, _, test_x, test_y = digits_split()
    per_class = max(1, args.images // 10)
    index = np.sort(np.concatenate([np.flatnonzero(test_y == c)[:per_class] for c in range(10)]))
    out = {"bench": "validity digits", "images": index.tolist(), "conditions": []}
    for condition in args.conditions.split(","):
        pixels, load = condition_images(condition, test_x[index].reshape(-1, 8, 8))
        tensors = [torch.from_numpy(p[None].copy()) for p in pixels]
        reference = default_classifier(policy=Exhaustive(n_samples=args.reference_samples), **load)
        rule = default_classifier(**load)
        per_image, start = [], time.perf_counter()
        for i, image in enumerate(tensors):
            reference.config = reference.config.replace(seed=7_000_000 + int(index[i]))
            truth = reference.classify([image])[0]
            winner = truth.prediction
            order = np.argsort(truth.errors)
            drops, calls, switched = 0, [], 0
            for r in range(args.seeds):
                rule.config = rule.config.replace(seed=1_000_000 + 1000 * int(index[i]) + r)
                result = rule.classify([image])[0]
                drops += winner not in result.survivors
                calls.append(result.unet_evals)
                switched += (result.policy_record or {}).get("noise_check", {}).get("bound") == "self-normalised"
            per_image.append({
                "image": int(index[i]), "label": int(test_y[index[i]]), "true_winner": winner,
                "reference_gap": float(truth.errors[order[1]] - truth.errors[order[0]]),
                "drops": drops, "runs": args.seeds, "calls": float(np.mean(calls)), "switched": switched,
            })  # fmt: skip
        drops = sum(r["drops"] for r in per_image)
        runs = sum(r["runs"] for r in per_image)
        summary = {
            "condition": condition, "images": len(per_image), "runs": runs, "drops": drops, "rate": drops / runs,
            "interval95": interval(drops, runs), "stated": round(1 - rule.policy.confidence, 6),
            "worst_image_rate": max(r["drops"] / r["runs"] for r in per_image),
            "images_with_a_drop": sum(r["drops"] > 0 for r in per_image),
            "switched_share": sum(r["switched"] for r in per_image) / runs,
            "calls_per_image": float(np.mean([r["calls"] for r in per_image])),
            "true_winner_is_label": sum(r["true_winner"] == CLASS_NAMES[r["label"]] for r in per_image),
            "seconds": round(time.perf_counter() - start, 1),
        }  # fmt: skip
        print(json.dumps(summary), flush=True)
        out["conditions"].append({**summary, "per_image": per_image})
    out["policy"] = rule.config.as_dict()["policy"]
    return out


# -- where the calls go -----------------------------------------------------------------------------
def cmd_calls(args) -> dict[str, object]:
    """The default rule on every held-out digit: how many samples the decisive comparison (the
    winner against the last class standing beside it) took, against the rest."""
    _, _, test_x, test_y = digits_split()
    pixels, _ = condition_images("clean", test_x.reshape(-1, 8, 8))
    clf = default_classifier()
    results = clf.classify([torch.from_numpy(p[None].copy()) for p in pixels])
    decisive, rest, calls = [], [], []
    for result in results:
        samples = np.sort(result.n_samples)[::-1]
        decisive.append(int(samples[1]))  # the last rival's samples; the winner has at least as many
        rest.append(int(samples[2:].sum()))
        calls.append(result.unet_evals)
    decisive, rest, calls = np.array(decisive), np.array(rest), np.array(calls)
    # Were every other class dropped at the first look, an image would still cost the winner and
    # its last rival their samples (at least 2 x the rival's) and the first look of the others.
    floor = 2 * decisive + clf.policy.min_samples * (len(CLASS_NAMES) - 2)
    summary = {
        "images": len(results),
        "accuracy": float(np.mean([r.prediction == CLASS_NAMES[y] for r, y in zip(results, test_y)])),
        "calls_per_image": float(calls.mean()),
        "last_rival_samples_mean": float(decisive.mean()),
        "last_rival_samples_median": float(np.median(decisive)),
        "other_classes_calls_mean": float(rest.mean()),
        "floor_if_the_others_went_at_once": float(floor.mean()),
        "images_at_most_40_calls": int((calls <= 40).sum()),
    }
    print(json.dumps(summary), flush=True)
    return {"bench": "validity calls", **summary, "policy": clf.config.as_dict()["policy"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    synthetic = sub.add_parser("synthetic")
    synthetic.add_argument("--scales", default="1,1.5,2,3")
    synthetic.add_argument("--tables", type=int, default=2000)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument(
        "--check-level", type=float, default=None, help="the noise check's level (default: the rule's)"
    )
    digits = sub.add_parser("digits")
    digits.add_argument("--conditions", default="clean,blur:1.0,contrast:0.3,noise:0.2,inverted")
    digits.add_argument("--images", type=int, default=40)
    digits.add_argument("--seeds", type=int, default=25)
    digits.add_argument("--reference-samples", type=int, default=256)
    calls = sub.add_parser("calls")
    for each in (synthetic, digits, calls):
        each.add_argument("--out", type=Path, default=None)
        each.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report = {"synthetic": cmd_synthetic, "digits": cmd_digits, "calls": cmd_calls}[args.command](args)
    report.update(
        command="python bench/bench_validity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        seconds=round(time.perf_counter() - start, 1), threads=args.threads, **cpu(),
    )  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
