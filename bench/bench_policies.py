"""Replay benchmark of the adaptive policies on `builtin:digits`: agreement with a reference
decision, accuracy, calls per image, and how often a rule eliminates the reference winner.

Two steps, so that the expensive one runs once:

* `tables`: with the engine as users run it (`DiffusionClassifier.from_pretrained("builtin:digits",
  policy=..., seed=...)`, exhaustive scoring), the per-sample error of every class of each image on
  the first N shared samples of a seed, cached in an .npz. The errors are read from the
  `next_round` call the engine makes at the end of the exhaustive round (a recording policy), so
  they are exactly the tables an adaptive policy is shown.
* `replay`: every policy replayed on slices [alive, :n] of the cached policy-seed tables, exactly
  as the engine calls it (`replay_policy`, checked against the engine by `check`), and compared
  with the reference decision: exhaustive scoring of another seed's samples (disjoint noise), which
  no policy saw. A reference tie is a class not worse than the reference winner at p >= 0.01 by a
  one-sided paired t-test on the reference samples.
* `validity`: the engine run with a policy at many seeds; the fraction of images where the rule
  eliminated the reference winner (`--shift`, `--n 128` for the hard regime above 64 samples).
* Error weights: the tables are of the model's default score, with its fitted `error_weights`;
  `--plain` scores without them (cached under their own names). `weigh` writes a weighted table
  from a plain one (the plain table times each sample's band weight, which is what the engine
  computes: `weigh --compare` measures the difference against an engine table), and `weightings`
  compares error-weighting rules on training digits only.

    nice -n 19 python bench/bench_policies.py tables --split heldout --per-class 15 --seed 0 --n 64
    nice -n 19 python bench/bench_policies.py tables --split heldout --per-class 15 --seed 1 --n 128
    nice -n 19 python bench/bench_policies.py replay --split heldout --per-class 15

A hard regime: `--shift NAME:STRENGTH` (`noise:SIGMA`, `blur:SIGMA_PX`, `contrast:FACTOR`, the
shifts of `fastgen.eval.shifts`) applies a deterministic shift to the split's images before they
are scored, as `fastgen demo --shifts` does (float pixels in [0, 1]); the tables of each shift are
cached under their own name, and the replay must be given the same shift.

    nice -n 19 python bench/bench_policies.py tables --per-class 0 --seed 0 --n 64 --shift blur:1.0
    nice -n 19 python bench/bench_policies.py tables --per-class 0 --seed 1 --n 128 --shift blur:1.0
    nice -n 19 python bench/bench_policies.py replay --per-class 0 --short --shift blur:1.0
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from machine_facts import cpu_label

from fastgen import DiffusionClassifier
from fastgen.builtin import resolve_builtin
from fastgen.builtin.digits_data import CLASS_NAMES, digits_split, to_pil
from fastgen.engine.policies import Exhaustive, PairedTest, Policy, describe_policy, paired_p_values
from fastgen.engine.policies.base import best_row
from fastgen.engine.policies.sequential import SequentialElimination, mixture_z_boundary
from fastgen.engine.sampling import band_error_weight, timestep_sequence
from fastgen.eval.shifts import Shift, blur, contrast, gaussian_noise

RESULTS = Path(__file__).parent / "results"
NOISE_PROFILE = resolve_builtin("builtin:digits") / "noise_profile.json"
# `--plain`: the score without the model's error weights (every sample's error counts the same,
# the default before they were fitted), with the noise profile fitted for that score.
PLAIN_NOISE_PROFILE = RESULTS / "noise_profile_digits_plain.json"
PLAIN = {"on": False}
CACHE = RESULTS / "policy_tables"  # not committed: the tables are large
TIE_P = 0.01


# -- the images --------------------------------------------------------------------------------
SHIFTS = {"noise": gaussian_noise, "blur": blur, "contrast": contrast}


def parse_shift(text: str | None) -> tuple[str, float] | None:
    """`NAME:STRENGTH` (noise:SIGMA, blur:SIGMA_PX, contrast:FACTOR) as (name, strength)."""
    if not text:
        return None
    name, _, strength = text.partition(":")
    if name not in SHIFTS or not strength:
        raise argparse.ArgumentTypeError(f"expected NAME:STRENGTH with NAME one of {', '.join(SHIFTS)}; got {text!r}")
    return name, float(strength)


def shift_tag(shift: tuple[str, float] | None) -> str:
    """The shift as it appears in cache file names ('' for none): 'blur1', 'contrast0.3'."""
    return "" if shift is None else f"{shift[0]}{shift[1]:g}"


def select_images(
    split: str, per_class: int | None, shift: tuple[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images [N, 8, 8], labels [N], index into the split) of the first `per_class` images of each
    class in the split's order (all of them when None). Without a shift the images are uint8 as
    stored; with one they are float in [0, 1], the shift applied to the whole split before the
    selection, so an image is shifted the same way (the same noise) in every selection."""
    train_x, train_y, test_x, test_y = digits_split()
    images, labels = (test_x, test_y) if split == "heldout" else (train_x, train_y)
    if shift is not None:
        apply: Shift = SHIFTS[shift[0]](shift[1])
        images = apply(images / 255.0).astype(np.float32)
    if per_class is None:
        index = np.arange(len(labels))
    else:
        index = np.sort(np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(10)]))
    return images[index], labels[index], index


def engine_inputs(images: np.ndarray) -> list:
    """What the classifier is given: uint8 images as grayscale PIL images, shifted float images as
    [1, H, W] tensors in [0, 1] (as `fastgen demo --shifts` passes them)."""
    if images.dtype == np.uint8:
        return [to_pil(image) for image in images]
    return [torch.from_numpy(image[None]) for image in images]


# -- tables --------------------------------------------------------------------------------------
_RECORDED: list[torch.Tensor] = []


@dataclass(frozen=True)
class RecordingExhaustive(Exhaustive):
    """Exhaustive scoring that keeps the per-sample table the engine hands its policy."""

    def next_round(self, class_errors, alive):
        _RECORDED.append(class_errors.detach().clone())
        return super().next_round(class_errors, alive)


def table_path(split: str, per_class: int | None, seed: int, n: int, shift: tuple[str, float] | None = None) -> Path:
    tag = (f"_{shift_tag(shift)}" if shift is not None else "") + ("_plain" if PLAIN["on"] else "")
    return CACHE / f"{split}_{per_class or 'all'}{tag}_seed{seed}_n{n}.npz"


def compute_tables(images: np.ndarray, *, seed: int, n: int, batch_size: int) -> np.ndarray:
    """Per-sample errors [N, K, n] of every class of every image, from the engine."""
    clf = DiffusionClassifier.from_pretrained(
        "builtin:digits",
        policy=RecordingExhaustive(n_samples=n),
        seed=seed,
        batch_size=batch_size,
        device="cpu",
        error_weights=(1.0,) if PLAIN["on"] else None,
    )
    tables = np.empty((len(images), 10, n), dtype=np.float32)
    for start in range(0, len(images), 10):
        _RECORDED.clear()
        chunk = engine_inputs(images[start : start + 10])
        results = clf.classify(chunk)
        # The engine finishes images in completion order: match each recorded table to its image
        # by its row means, which are the result's errors exactly.
        means = [t.double().mean(dim=1).numpy() for t in _RECORDED]
        for i, result in enumerate(results):
            match = [j for j, m in enumerate(means) if np.array_equal(m, result.errors)]
            assert len(match) == 1, f"image {start + i}: {len(match)} recorded tables match its errors"
            tables[start + i] = _RECORDED[match[0]].numpy()
        print(f"  {start + len(chunk)}/{len(images)} images", file=sys.stderr, flush=True)
    return tables


def cmd_tables(args) -> None:
    images, labels, index = select_images(args.split, args.per_class, args.shift)
    path = table_path(args.split, args.per_class, args.seed, args.n, args.shift)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tables = compute_tables(images, seed=args.seed, n=args.n, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    np.savez_compressed(path, tables=tables, labels=labels, index=index, seed=args.seed, shift=shift_tag(args.shift))
    print(
        json.dumps(
            {
                "tables": str(path),
                "images": len(images),
                "n": args.n,
                "seed": args.seed,
                "shift": shift_tag(args.shift) or None,
                "seconds": round(seconds, 1),
                "cpu": cpu_label(),
                "threads": torch.get_num_threads(),
            }
        )
    )


def cmd_weigh(args) -> None:
    """The model-scored tables from `--plain` ones: the engine multiplies each sample's error by
    the weight of its timestep's band (`error_weights`), so the plain table times those weights is
    the table the engine computes, up to fp32 rounding (`--compare` measures that against a table
    the engine computed)."""
    PLAIN["on"] = True
    plain_path = table_path(args.split, args.per_class, args.seed, args.n, args.shift)
    PLAIN["on"] = False
    path = table_path(args.split, args.per_class, args.seed, args.n, args.shift)
    data = dict(np.load(plain_path))
    weights = DiffusionClassifier.from_pretrained("builtin:digits", device="cpu").config.error_weights
    factor = band_error_weight(timestep_sequence(args.n, 1000, mode="even"), weights, 1000).float().numpy()
    weighted = data["tables"] * factor
    if args.compare:
        engine = np.load(path)["tables"]
        scale = float(np.abs(engine).max())
        print(json.dumps({"compared_with": str(path), "max_abs_difference": float(np.abs(weighted - engine).max()),
                          "largest_error": scale}))  # fmt: skip
        return
    if path.exists():
        raise SystemExit(f"{path} exists (computed by the engine?): not overwritten")
    np.savez_compressed(path, **{**data, "tables": weighted, "weighed_from": str(plain_path.name)})
    print(json.dumps({"tables": str(path), "from": str(plain_path)}))


def cmd_weightings(args) -> None:
    """How the error-weighting rules compare on training digits only (`--plain` tables of the
    training split: clean, for the fit, and the three hard-regime shifts): the accuracy of
    exhaustive scoring on the 64 samples of seed 0 under each rule's weights, all fitted on the
    clean training tables. Fitted rule: mean / variance of the paired difference per band (the
    diagonal Fisher discriminant, `fastgen.eval.error_weight_fit`); the others: 1 / sd, squared
    signal-to-noise, 1 / sqrt(noise sd), and none."""
    PLAIN["on"] = True
    fit = np.load(table_path("train", 15, 0, 128))
    tables, labels = fit["tables"].astype(np.float64), fit["labels"]
    bands = timestep_sequence(128, 1000, mode="even").numpy() * 16 // 1000
    rows = np.arange(len(labels))
    rivals = np.arange(10)[None, :] != labels[:, None]
    diffs = (tables - tables[rows, labels][:, None, :])[rivals]
    mean = np.array([diffs[:, bands == b].mean() for b in range(16)])
    sd = np.array([diffs[:, bands == b].std() for b in range(16)])
    noise = np.asarray(json.loads(PLAIN_NOISE_PROFILE.read_text())["fit"]["typical_sd"])
    rules = {
        "none": np.ones(16), "mean / variance (fitted rule)": np.maximum(mean, 0) / sd**2, "1 / sd": 1 / sd,
        "(mean / sd)^2": (mean / sd) ** 2, "1 / sqrt(noise sd)": noise**-0.5,
    }  # fmt: skip
    out = {"command": "python bench/bench_policies.py weightings", "cpu": cpu_label(), "rows": []}
    for tag, shift in [("clean", None), ("blur 1.0", ("blur", 1.0)), ("contrast 0.3", ("contrast", 0.3)),
                       ("noise 0.5", ("noise", 0.5))]:  # fmt: skip
        data = np.load(table_path("train", 15, 0, 64, shift))
        row = {"images": tag}
        for name, weights in rules.items():
            scores = (data["tables"] * weights[bands[:64]]).mean(axis=2)
            row[name] = round(float(np.mean(scores.argmin(axis=1) == data["labels"])), 3)
        out["rows"].append(row)
        print(json.dumps(row))
    (RESULTS / "error_weightings_train.json").write_text(json.dumps(out, indent=1) + "\n")


# -- the policies replayed ----------------------------------------------------------------------
@dataclass(frozen=True)
class PlugInMixture(SequentialElimination):
    """The mixture boundary on the plain z statistic (variance plugged in, no Student-t
    correction): the asymptotic confidence sequence with no guard for tiny n."""

    def next_round(self, class_errors, alive):
        n_done = class_errors.shape[1]
        best = best_row(class_errors, alive)
        diffs = (class_errors.double() - class_errors[best].double()).numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            z = diffs.mean(axis=1) / (diffs.std(axis=1, ddof=1) / math.sqrt(n_done))
        pair_alpha = (1.0 - self.confidence) / max(max(self._n_classes, len(alive)) - 1, 1)
        boundary = mixture_z_boundary(n_done, pair_alpha, self.tightest_at)
        kept = [c for i, c in enumerate(alive) if i == best or not z[i] > boundary]
        if len(kept) == 1 or n_done >= self.max_samples:
            return kept, None
        return kept, min(n_done + self.check_every, self.max_samples)


def profiled(**options) -> SequentialElimination:
    """The sequential rule with the known-variance boundary of the model's own noise profile."""
    profile = PLAIN_NOISE_PROFILE if PLAIN["on"] else NOISE_PROFILE
    return SequentialElimination(bound="profile", noise_profile=str(profile), **options)


# The setting of fewest calls at full agreement on training digits (`replay --split train`), with
# either coverage; the model's default states its error on average over pairs.
CHOSEN_PROFILE = {"confidence": 0.99, "min_samples": 2, "check_every": 1, "tightest_at": 1.0, "coverage": "average"}


def candidate_policies(budget: int) -> list[Policy]:
    """Fixed schedules, the shipped paired test (its budget capped at the table's length) and
    its variants, and the sequential rule at several settings."""
    fixed = [Exhaustive(n_samples=n) for n in (4, 8, 16) if n <= budget]
    paired = [
        PairedTest(max_samples=budget),
        PairedTest(min_samples=8, max_samples=budget),
        PairedTest(alpha=1e-2, min_samples=4, max_samples=budget, check_every=2),
        PairedTest(min_samples=4, max_samples=budget, check_every=2),
    ]
    sequential = []
    for confidence in (0.99, 0.999):
        for min_samples in (2, 3, 4):
            for check_every in (1, 2, 4):
                common = {"confidence": confidence, "max_samples": budget, "min_samples": min_samples}
                sequential.append(SequentialElimination(bound="spending", check_every=check_every, **common))
                for tightest_at in (2.0, 4.0, 8.0, 16.0):
                    sequential.append(
                        SequentialElimination(
                            bound="mixture", check_every=check_every, tightest_at=tightest_at, **common
                        )
                    )
                    sequential.append(
                        PlugInMixture(bound="mixture", check_every=check_every, tightest_at=tightest_at, **common)
                    )
                for tightest_at in (1.0, 2.0, 4.0):
                    for coverage in ("quantile", "average"):
                        sequential.append(
                            profiled(check_every=check_every, tightest_at=tightest_at, coverage=coverage, **common)
                        )
    return fixed + paired + [p.bind(CLASS_NAMES) for p in sequential]


def short_list(budget: int) -> list[Policy]:
    """The fixed schedules, the shipped paired test, its best variant here, and the chosen rule."""
    return [
        Exhaustive(n_samples=4),
        Exhaustive(n_samples=8),
        PairedTest(max_samples=budget),
        PairedTest(alpha=1e-2, min_samples=4, max_samples=budget, check_every=2),
        SequentialElimination(max_samples=budget).bind(CLASS_NAMES),
        PlugInMixture(max_samples=budget).bind(CLASS_NAMES),
        profiled(max_samples=budget, **CHOSEN_PROFILE).bind(CLASS_NAMES),
        profiled(max_samples=budget, **{**CHOSEN_PROFILE, "coverage": "quantile"}).bind(CLASS_NAMES),
        profiled(max_samples=budget, **{**CHOSEN_PROFILE, "confidence": 0.95}).bind(CLASS_NAMES),
    ]


# -- replay ------------------------------------------------------------------------------------
@dataclass
class Replayed:
    prediction: int
    calls: int
    alive: list[int]  # the classes standing at the end
    n_samples: np.ndarray  # per class: the samples it had when it stopped
    partial: np.ndarray  # per class: its mean error then
    decided: bool


def replay_policy(policy: Policy, table: np.ndarray) -> Replayed:
    """What the engine does with `policy` on one image whose per-sample errors are `table` [K, N]:
    the same rounds, the same slices [alive, :n] handed to `next_round`, the same row count."""
    n_classes = table.shape[0]
    errors = torch.from_numpy(table)
    alive, n_target = policy.initial_units(n_classes), policy.first_round()
    scored: dict[int, int] = {}
    n_samples, partial = np.zeros(n_classes, dtype=np.int64), np.full(n_classes, math.nan)
    calls = 0
    while True:
        if n_target > table.shape[1]:
            raise ValueError(f"the policy asks for {n_target} samples; the table has {table.shape[1]}")
        calls += sum(n_target - scored.get(k, 0) for k in alive)
        scored.update({k: n_target for k in alive})
        class_errors = errors[alive, :n_target]
        kept, next_target = policy.next_round(class_errors, alive)
        for row, k in enumerate(alive):
            if k not in kept or next_target is None:
                n_samples[k], partial[k] = n_target, float(class_errors[row].double().mean())
        alive = list(kept)
        if next_target is None:
            break
        n_target = next_target
    prediction = min(alive, key=lambda k: (partial[k], k))
    decided = policy.decided(alive) if hasattr(policy, "decided") else True
    return Replayed(prediction, calls, alive, n_samples, partial, decided)


def reference_decisions(ref_tables: np.ndarray) -> tuple[np.ndarray, list[set[int]]]:
    """(winner per image, the set of classes tied with it) from the reference tables [N, K, R]:
    a class is tied when a one-sided paired t-test on the reference samples does not find it
    worse than the winner at p < 0.01."""
    winners, ties = [], []
    for table in ref_tables:
        means = table.astype(np.float64).mean(axis=1)
        winner = int(np.argmin(means))
        p = paired_p_values(torch.from_numpy(table), winner)
        winners.append(winner)
        ties.append({k for k in range(len(means)) if k == winner or p[k] >= TIE_P})
    return np.array(winners), ties


def score_policy(policy: Policy, tables: np.ndarray, labels: np.ndarray, winners, ties) -> dict:
    """Agreement (strict, ties allowed), accuracy, calls, undecided and eliminated-winner counts."""
    runs = [replay_policy(policy, table) for table in tables]
    predictions = np.array([r.prediction for r in runs])
    undecided = np.array([not r.decided for r in runs])
    return {
        "policy": describe_policy(policy),
        "images": len(runs),
        "agreement": float(np.mean(predictions == winners)),
        "agreement_ties_allowed": float(np.mean([p in t for p, t in zip(predictions, ties)])),
        "accuracy": float(np.mean(predictions == labels)),
        "calls_per_image": float(np.mean([r.calls for r in runs])),
        "max_calls": int(max(r.calls for r in runs)),
        "undecided": int(undecided.sum()),
        "errors_undecided": int(np.sum(undecided & (predictions != labels))),
        "winner_eliminated": int(sum(w not in r.alive for w, r in zip(winners, runs))),
    }


def load_tables(
    split: str, per_class: int | None, seed: int, n: int, shift: tuple[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    path = table_path(split, per_class, seed, n, shift)
    if not path.exists():
        shift_arg = f" --shift {shift[0]}:{shift[1]:g}" if shift is not None else ""
        raise SystemExit(
            f"{path} is missing: run `bench/bench_policies.py tables --split {split} --per-class {per_class or 0}"
            f" --seed {seed} --n {n}{shift_arg}`"
        )
    data = np.load(path)
    return data["tables"], data["labels"]


def cmd_replay(args) -> None:
    tables, labels = load_tables(args.split, args.per_class, args.seed, args.n, args.shift)
    plain, PLAIN["on"] = PLAIN["on"], args.plain or args.reference_plain
    ref_tables, ref_labels = load_tables(args.split, args.per_class, args.reference_seed, args.reference_n, args.shift)
    PLAIN["on"] = plain
    assert np.array_equal(labels, ref_labels)
    winners, ties = reference_decisions(ref_tables)
    shift = None if args.shift is None else {"name": args.shift[0], "strength": args.shift[1]}
    settings = {"split": args.split, "per_class": args.per_class, "shift": shift,
                "error_weights": "none (--plain)" if PLAIN["on"] else "the model's", "policy_seed": args.seed,
                "reference_error_weights": "none" if PLAIN["on"] or args.reference_plain else "the model's",
                "policy_table_n": args.n,
                "reference_seed": args.reference_seed, "reference_n": args.reference_n, "tie_p": TIE_P,
                "reference_accuracy": float(np.mean(winners == labels)),
                "reference_ties": int(sum(len(t) > 1 for t in ties)), "cpu": cpu_label(), "torch": torch.__version__,
                "command": "python bench/bench_policies.py " + " ".join(sys.argv[1:])}  # fmt: skip
    policies = short_list(args.n) if args.short else candidate_policies(args.n)
    rows = [score_policy(policy, tables, labels, winners, ties) for policy in policies]
    tag = f"_{shift_tag(args.shift)}" if args.shift is not None else ""
    tag += "_plain" if PLAIN["on"] else ""
    out = Path(args.out or RESULTS / f"policies_replay_{args.split}_{args.per_class or 'all'}{tag}.json")
    out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    print(json.dumps(settings))
    for row in rows:
        print(json.dumps(row))


def validity_policies(budget: int) -> list[Policy]:
    """The rules whose error the validity run measures: the chosen sequential setting, its
    alpha-spending and unguarded counterparts, and the paired tests (no stated error)."""
    chosen = SequentialElimination(max_samples=budget)
    return [
        chosen.bind(CLASS_NAMES),
        replace(chosen, bound="spending").bind(CLASS_NAMES),
        replace(chosen, confidence=0.999).bind(CLASS_NAMES),
        *(PlugInMixture(max_samples=budget, min_samples=m).bind(CLASS_NAMES) for m in (2, 3, 4)),
        PairedTest(max_samples=budget),
        PairedTest(alpha=1e-2, min_samples=4, max_samples=budget, check_every=2),
        profiled(max_samples=budget, **CHOSEN_PROFILE).bind(CLASS_NAMES),
        profiled(max_samples=budget, **{**CHOSEN_PROFILE, "confidence": 0.95}).bind(CLASS_NAMES),
        profiled(max_samples=budget, **{**CHOSEN_PROFILE, "coverage": "quantile"}).bind(CLASS_NAMES),
    ]


def cmd_validity(args) -> None:
    """Over many policy seeds: how often each rule eliminated the reference winner."""
    reference_per_class = None if args.reference_per_class == 0 else args.reference_per_class
    ref_data = np.load(table_path(args.split, reference_per_class, args.reference_seed, args.reference_n, args.shift))
    winners_all, _ = reference_decisions(ref_data["tables"])
    winner_of = dict(zip(ref_data["index"].tolist(), winners_all.tolist()))
    policies = validity_policies(args.n)
    eliminated = np.zeros(len(policies), dtype=np.int64)
    runs, seeds, per_image = 0, [], {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        path = table_path(args.split, args.per_class, seed, args.n, args.shift)
        if not path.exists():
            continue
        data = np.load(path)
        seeds.append(seed)
        for table, index in zip(data["tables"], data["index"].tolist()):
            runs += 1
            for j, policy in enumerate(policies):
                lost = winner_of[index] not in replay_policy(policy, table).alive
                eliminated[j] += lost
                per_image[(j, index)] = per_image.get((j, index), 0) + lost
    rows = [
        {
            "policy": describe_policy(policy),
            "runs": runs,
            "winner_eliminated": int(eliminated[j]),
            "rate": float(eliminated[j] / max(runs, 1)),
            "worst_image_rate": max((v for (k, _), v in per_image.items() if k == j), default=0) / max(len(seeds), 1),
        }
        for j, policy in enumerate(policies)
    ]
    settings = {"split": args.split, "per_class": args.per_class, "shift": shift_tag(args.shift) or None, "seeds": seeds, "n": args.n,
                "reference_seed": args.reference_seed, "reference_n": args.reference_n, "cpu": cpu_label(),
                "command": "python bench/bench_policies.py " + " ".join(sys.argv[1:])}  # fmt: skip
    plain = "_plain" if PLAIN["on"] else ""
    tag = f"_{shift_tag(args.shift)}" if args.shift is not None else ""
    out = RESULTS / f"policies_validity_{args.split}_{args.per_class or 'all'}{tag}{plain}.json"
    out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    for row in rows:
        print(json.dumps(row))


def cmd_check(args) -> None:
    """Replay against the engine: the same policies on the first `--images` images of the cached
    seed-0 tables, run by the engine as users run it; every count and decision must agree."""
    tables, _ = load_tables(args.split, args.per_class, args.seed, args.n, args.shift)
    images, _, _ = select_images(args.split, args.per_class, args.shift)
    images, tables = images[: args.images], tables[: args.images]
    rows = []
    for policy in (
        SequentialElimination(max_samples=args.n),
        PairedTest(alpha=1e-2, min_samples=4, max_samples=args.n),
        profiled(max_samples=args.n, **CHOSEN_PROFILE),
    ):
        clf = DiffusionClassifier.from_pretrained(
            "builtin:digits", policy=policy, seed=args.seed, device="cpu", error_weights=(1.0,) if PLAIN["on"] else None
        )
        results = clf.classify(engine_inputs(images))
        bound = policy.bind(CLASS_NAMES)
        replayed = [replay_policy(bound, table) for table in tables]
        same = [
            r.prediction_index == p.prediction and r.unet_evals == p.calls and r.decided == p.decided
            and np.array_equal(r.n_samples, p.n_samples)
            and np.allclose(r.partial_errors, p.partial, rtol=0, atol=1e-6, equal_nan=True)
            for r, p in zip(results, replayed)
        ]  # fmt: skip
        rows.append({"policy": describe_policy(policy), "images": len(same), "identical": int(sum(same)),
                     "engine_calls": int(sum(r.unet_evals for r in results)),
                     "replay_calls": int(sum(p.calls for p in replayed))})  # fmt: skip
        print(json.dumps(rows[-1]))
    settings = {"cpu": cpu_label(), "command": "python bench/bench_policies.py " + " ".join(sys.argv[1:])}
    (RESULTS / "policies_replay_check.json").write_text(
        json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n"
    )
    if not all(row["identical"] == row["images"] for row in rows):
        raise SystemExit("the replay differs from the engine")


SHIFT_HELP = "a shift of the images, NAME:STRENGTH: noise:SIGMA, blur:SIGMA_PX or contrast:FACTOR (default: none)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tables = sub.add_parser("tables", help="per-sample error tables from the engine (cached .npz)")
    tables.add_argument("--split", choices=("heldout", "train"), default="heldout")
    tables.add_argument("--per-class", type=int, default=15, help="images per class (0: all)")
    tables.add_argument("--seed", type=int, required=True)
    tables.add_argument("--n", type=int, required=True, help="samples per class")
    tables.add_argument("--batch-size", type=int, default=640)
    tables.add_argument("--threads", type=int, default=1)
    tables.add_argument("--shift", type=parse_shift, default=None, help=SHIFT_HELP)
    replay = sub.add_parser("replay", help="replay the candidate policies on cached tables")
    replay.add_argument("--split", choices=("heldout", "train"), default="heldout")
    replay.add_argument("--per-class", type=int, default=15, help="images per class (0: all)")
    replay.add_argument("--seed", type=int, default=0, help="the policy tables' seed")
    replay.add_argument("--n", type=int, default=64, help="the policy tables' samples (the policies' budget)")
    replay.add_argument("--reference-seed", type=int, default=1)
    replay.add_argument("--reference-n", type=int, default=128)
    replay.add_argument("--out", default=None)
    replay.add_argument("--short", action="store_true", help="only the fixed schedules, paired tests and chosen rule")
    replay.add_argument("--shift", type=parse_shift, default=None, help=SHIFT_HELP)
    replay.add_argument(
        "--reference-plain", action="store_true", help="the reference scored without error weights (--plain tables)"
    )
    validity = sub.add_parser("validity", help="how often each rule eliminated the reference winner, over seeds")
    validity.add_argument("--split", choices=("heldout", "train"), default="heldout")
    validity.add_argument("--per-class", type=int, default=5, help="images per class of the seed tables")
    validity.add_argument("--first-seed", type=int, default=2)
    validity.add_argument("--seeds", type=int, default=20)
    validity.add_argument("--n", type=int, default=64)
    validity.add_argument("--reference-per-class", type=int, default=15, help="(0: all)")
    validity.add_argument("--shift", type=parse_shift, default=None, help=SHIFT_HELP)
    validity.add_argument("--reference-seed", type=int, default=1)
    validity.add_argument("--reference-n", type=int, default=128)
    sub.add_parser("weightings", help="error-weighting rules compared on training digits (clean and shifted)")
    weigh = sub.add_parser("weigh", help="model-scored tables from --plain ones (times the error weights)")
    weigh.add_argument("--split", choices=("heldout", "train"), default="heldout")
    weigh.add_argument("--per-class", type=int, default=15, help="images per class (0: all)")
    weigh.add_argument("--seed", type=int, required=True)
    weigh.add_argument("--n", type=int, required=True)
    weigh.add_argument("--shift", type=parse_shift, default=None, help=SHIFT_HELP)
    weigh.add_argument("--compare", action="store_true", help="compare with the engine's table instead of writing")
    check = sub.add_parser("check", help="the replay against the engine on a few images")
    check.add_argument("--split", choices=("heldout", "train"), default="heldout")
    check.add_argument("--per-class", type=int, default=15)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--n", type=int, default=64)
    check.add_argument("--images", type=int, default=10)
    check.add_argument("--shift", type=parse_shift, default=None, help=SHIFT_HELP)
    for command in (tables, replay, validity, check):
        command.add_argument("--plain", action="store_true", help="score without the model's error weights")
    args = parser.parse_args(argv)
    PLAIN["on"] = getattr(args, "plain", False)
    if getattr(args, "per_class", None) == 0:
        args.per_class = None
    torch.set_num_threads(getattr(args, "threads", 1))
    commands = {
        "tables": cmd_tables,
        "replay": cmd_replay,
        "validity": cmd_validity,
        "check": cmd_check,
        "weigh": cmd_weigh,
        "weightings": cmd_weightings,
    }
    commands[args.command](args)


if __name__ == "__main__":
    main()
