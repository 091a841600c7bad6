"""Fit the error weights of a built-in model on its training split and write them into the
model's `fastgen.json` (`"scoring": {"error_weights": [...]}`), keeping every other key.

    python -m training.fit_error_weights --model-file fastgen/builtin/digits/fastgen.json --threads 1
    python -m training.fit_error_weights --model builtin:numbers --per-class 2 --n-samples 64 \
        --model-file fastgen/builtin/numbers/fastgen.json --threads 1

The rule is `fastgen.eval.error_weight_fit`'s: training images scored exhaustively on
`--n-samples` shared samples of the even grid without weights; per band of timesteps, the mean
paired difference between a rival and the true class over its variance. `builtin:digits`: the
first `--per-class` training digits of each class, against all ten classes. `builtin:numbers`:
`--per-class` training compositions of each of the 20 numbers `training.fit_noise_profile` uses
(close rivals included), against those 20 classes. A model whose weights change needs its noise profile fitted again afterwards
(`python -m training.fit_noise_profile`), since the profile is fitted for the weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from fastgen.eval.error_weight_fit import fit_error_weights
from training.fit_noise_profile import training_set


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-file", type=Path, required=True, help="the fastgen.json to write the weights into")
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--per-class", type=int, default=15, help="training digits per class")
    parser.add_argument("--n-samples", type=int, default=128)
    parser.add_argument("--n-bands", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clf, images, labels = training_set(args.model, args.per_class)
    weights = fit_error_weights(clf, images, labels, n_samples=args.n_samples, n_bands=args.n_bands, seed=args.seed)
    model = json.loads(args.model_file.read_text(encoding="utf-8"))
    model.setdefault("scoring", {})["error_weights"] = list(weights)
    model["error_weights_fit"] = {
        "split": "train", "per_class": args.per_class, "images": len(images), "n_samples": args.n_samples,
        "n_bands": args.n_bands, "seed": args.seed, "rule": "fastgen.eval.error_weight_fit",
        "torch": torch.__version__, "machine": platform.machine(),
        "command": "python -m training.fit_error_weights " + " ".join(argv if argv is not None else sys.argv[1:]),
    }  # fmt: skip
    args.model_file.write_text(json.dumps(model, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"error_weights": weights, **model["error_weights_fit"]}))


if __name__ == "__main__":
    main()
