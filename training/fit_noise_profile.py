"""Fit the noise profile of the built-in `digits` model on its training split and save it beside
the model's `fastgen.json` (the `sequential` policy's `bound="profile"` reads it).

    python -m training.fit_noise_profile --out fastgen/builtin/digits/noise_profile.json --threads 1

The profile is fitted under the model's default scoring settings (`fastgen.json`), on the first
`--per-class` training digits of each class, with two seeds (`fastgen.eval.noise_fit`). No
held-out digit is used.
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
from fastgen.eval.noise_fit import fit_noise_profile


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--per-class", type=int, default=15, help="training digits per class")
    parser.add_argument("--n-samples", type=int, default=64)
    parser.add_argument("--n-bands", type=int, default=16)
    parser.add_argument("--quantile", type=float, default=0.99)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_x, train_y, _, _ = digits_split()
    index = np.sort(np.concatenate([np.flatnonzero(train_y == k)[: args.per_class] for k in range(10)]))
    clf = DiffusionClassifier.from_pretrained(args.model, device="cpu", policy="exhaustive")
    profile = fit_noise_profile(
        clf, [to_pil(x) for x in train_x[index]], train_y[index].tolist(),
        n_samples=args.n_samples, n_bands=args.n_bands, quantile=args.quantile,
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
