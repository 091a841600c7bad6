"""Fit the noise profile of a built-in model on its training split and save it beside the
model's `fastgen.json` (the `sequential` policy's `bound="profile"` and the tree policy read it).

    python -m training.fit_noise_profile --out fastgen/builtin/digits/noise_profile.json --threads 1
    python -m training.fit_noise_profile --error-weights none \
        --out fastgen/builtin/digits/noise_profile_equal_weights.json --threads 1
    python -m training.fit_noise_profile --model builtin:numbers --per-class 2 --n-samples 32 \
        --out fastgen/builtin/numbers/noise_profile.json --threads 1

The profile is fitted under the model's default scoring settings (`fastgen.json`; `--error-weights
none` for equal weights), each image with noise of its own (`fastgen.eval.noise_fit`), on
training images only, and declared for every prompt the model's default classes and policy
score. `builtin:digits`: the first `--per-class`
training digits of each class, against all ten classes. `builtin:numbers`: 1,000 classes are too
many to score twice, so the images are `--per-class` training compositions of each of 20 numbers
(five groups of four that share their first two digits, so that close rivals are in), scored
against those 20 classes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from fastgen import DiffusionClassifier
from fastgen.builtin.digits_data import digits_split, to_pil
from fastgen.builtin.numbers_data import DigitPool, class_name
from fastgen.eval.noise_fit import fit_noise_profile


def numbers_training_set(per_class: int, seed: int = 0) -> tuple[DiffusionClassifier, list, list[int]]:
    """`builtin:numbers` on 20 of its classes, and `per_class` training compositions of each."""
    rng = np.random.default_rng(seed)
    numbers = []
    for prefix in rng.choice(100, size=5, replace=False):
        numbers.extend(int(prefix) * 10 + int(u) for u in rng.choice(10, size=4, replace=False))
    clf = DiffusionClassifier.from_pretrained(
        "builtin:numbers", device="cpu", policy="exhaustive", classes=[class_name(n) for n in numbers]
    )
    labels = np.repeat(np.arange(len(numbers)), per_class)
    pool = DigitPool("train")
    images = pool.compose(pool.draw(np.asarray(numbers)[labels], rng))
    return clf, [to_pil(x) for x in images], labels.tolist()


def training_set(model: str, per_class: int) -> tuple[DiffusionClassifier, list, list[int]]:
    """(classifier, images, labels) a fit runs on: `builtin:numbers` on 20 of its classes
    (`numbers_training_set`), any other model on the first `per_class` training digits of each
    class against all ten."""
    if model == "builtin:numbers":
        return numbers_training_set(per_class)
    train_x, train_y, _, _ = digits_split()
    index = np.sort(np.concatenate([np.flatnonzero(train_y == k)[:per_class] for k in range(10)]))
    clf = DiffusionClassifier.from_pretrained(model, device="cpu", policy="exhaustive")
    return clf, [to_pil(x) for x in train_x[index]], train_y[index].tolist()


def declared_prompts(model: str) -> list[str]:
    """Every prompt the model's default classes and policy score (its classes in its templates,
    and a label tree's inner nodes): what the profile is declared to hold for, whichever of them
    the fit itself scored."""
    clf = DiffusionClassifier.from_pretrained(model, device="cpu", policy="exhaustive")
    defaults = clf.adapter.defaults.get("policy") or {}
    if defaults.get("tree"):
        tree_clf = DiffusionClassifier.from_pretrained(
            model, device="cpu", policy="tree", policy_options={"tree": defaults["tree"]}
        )
        return list(tree_clf.units.flat_prompts)
    return list(clf.units.flat_prompts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--per-class", type=int, default=15, help="training digits per class")
    parser.add_argument("--n-samples", type=int, default=128)
    parser.add_argument("--n-bands", type=int, default=16)
    parser.add_argument("--quantile", type=float, default=0.99)
    parser.add_argument("--ucl", type=float, default=0.95, help="upper confidence limit for the fit's own error")
    parser.add_argument(
        "--error-weights", default="model", choices=("model", "none"),
        help="fit for the model's error weights, or for equal weights (none)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clf, images, labels = training_set(args.model, args.per_class)
    if args.error_weights == "none":
        clf.config = clf.config.replace(error_weights=(1.0,))
    profile = fit_noise_profile(
        clf, images, labels, n_samples=args.n_samples, n_bands=args.n_bands, quantile=args.quantile,
        ucl=args.ucl, prompts=declared_prompts(args.model),
    )  # fmt: skip
    data = profile.as_dict()
    data["fit"].update(
        split="train", per_class=args.per_class, torch=torch.__version__, machine=platform.machine(),
        command="python -m training.fit_noise_profile " + " ".join(argv if argv is not None else sys.argv[1:]),
    )  # fmt: skip
    args.out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(data["fit"]))


if __name__ == "__main__":
    main()
