"""The seed paper's properties at the scale of `builtin:animals`: held-out accuracy, accuracy under
noise, blur and contrast, shape bias on cue-conflict images and error consistency, for fastgen's
diffusion classifier beside each discriminative baseline, measured on the same images.

    python -m training.make_animal_cue_conflict --out runs/animal-cue-conflict
    python -m training.animals_report --cue-conflict runs/animal-cue-conflict \
        --out docs/results/animals.json --threads 1

Images: the first `--per-class` held-out images of each class (class-balanced) for accuracy, the
shifts and error consistency; the first `--cue-per-class` cue-conflict images of each shape class
at every strength. fastgen runs its default rule through `DiffusionClassifier` (as `fastgen
classify` does), on the images at the model's 16x16 exactly as the baselines get them
(`training.animals_data.to_model_size` of the 28x28 originals; shifts applied at 16x16); the
baselines (`training/train_animals_baselines.py`: logistic regression, RBF SVC, small CNN) give
their predictions from their saved fits. Shape bias: `fastgen.eval.shape_bias` (shape decisions
over shape-or-texture decisions, bootstrap interval); error consistency:
`fastgen.eval.consistency` (Cohen's kappa on per-image correctness), between fastgen and each
baseline, on the held-out images and on the shifted ones (all shifts pooled).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastgen import DiffusionClassifier
from fastgen.builtin.animals_data import CLASS_NAMES, load_heldout
from fastgen.eval.consistency import error_consistency
from fastgen.eval.shape_bias import decisions_from, shape_bias
from fastgen.eval.shifts import blur, contrast, gaussian_noise
from training.animals_data import to_model_size
from training.train_animals_baselines import NAMES as BASELINES
from training.train_animals_baselines import baseline_predictions
from training.train_digits import cpu_name

SHIFTS = {"noise sigma=0.2": gaussian_noise(0.2), "blur sigma=1px": blur(1.0), "contrast x0.5": contrast(0.5)}


def balanced(labels: np.ndarray, per_class: int) -> np.ndarray:
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASS_NAMES))]))


def fastgen_predictions(clf: DiffusionClassifier, images_u8: np.ndarray) -> tuple[np.ndarray, float]:
    """Label indices and mean denoiser calls of the default rule on uint8 images [N, 16, 16]."""
    tensors = [torch.from_numpy(image.astype(np.float32)[None] / 255.0) for image in images_u8]
    results = clf.classify(tensors)
    index = {name: i for i, name in enumerate(clf.classes.names)}
    return np.array([index[r.prediction] for r in results]), float(np.mean([r.unet_evals for r in results]))


def predictions_of_all(clf, images_u8: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    out, calls = {}, 0.0
    out["fastgen"], calls = fastgen_predictions(clf, images_u8)
    for name in BASELINES:
        out[name] = baseline_predictions(name, images_u8)
    return out, calls


def cue_conflict_images(folder: Path, per_class: int) -> dict[str, list[Path]]:
    """strength -> the first `per_class` zebra-texture images of each shape class."""
    by_strength = {}
    for strength_dir in sorted(folder.glob("strength-*")):
        chosen = []
        for name in CLASS_NAMES:
            files = sorted((strength_dir / "zebra-texture").glob(f"{name}[0-9]*-zebra*.png"))
            chosen += files[:per_class]
        plain = sorted((strength_dir / "plain-fill").glob("zebra*-plain*.png"))[:per_class]
        by_strength[strength_dir.name.removeprefix("strength-")] = (chosen, plain)
    return by_strength


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cue-conflict", type=Path, required=True, help="training.make_animal_cue_conflict's folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=50, help="held-out images per class")
    parser.add_argument("--cue-per-class", type=int, default=30, help="cue-conflict images per shape and strength")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    heldout = load_heldout()
    chosen = balanced(heldout.labels, args.per_class)
    labels = heldout.labels[chosen].astype(np.int64)
    clean = to_model_size(heldout.images_source[chosen])
    clf = DiffusionClassifier.from_pretrained("builtin:animals", device="cpu")
    report: dict = {"images": len(chosen), "per_class": args.per_class, "conditions": {}, "shape_bias": {}}
    correct: dict[str, dict[str, np.ndarray]] = {}
    for condition in ["clean", *SHIFTS]:
        images = clean if condition == "clean" else to_uint8(SHIFTS[condition](clean.astype(np.float32) / 255.0))
        predictions, calls = predictions_of_all(clf, images)
        correct[condition] = {name: p == labels for name, p in predictions.items()}
        report["conditions"][condition] = {
            "accuracy": {name: float(np.mean(c)) for name, c in correct[condition].items()},
            "fastgen_calls_per_image": calls,
        }
        print(condition, json.dumps(report["conditions"][condition]), flush=True)
    report["error_consistency"] = {}
    for pool, conditions in (("clean", ["clean"]), ("shifted", list(SHIFTS))):
        for name in BASELINES:
            a = np.concatenate([correct[c]["fastgen"] for c in conditions])
            b = np.concatenate([correct[c][name] for c in conditions])
            report["error_consistency"][f"fastgen vs {name} ({pool})"] = error_consistency(a, b)
    for first, second in (("cnn", "svc"), ("cnn", "logreg"), ("svc", "logreg")):
        a = np.concatenate([correct[c][first] for c in ["clean", *SHIFTS]])
        b = np.concatenate([correct[c][second] for c in ["clean", *SHIFTS]])
        report["error_consistency"][f"{first} vs {second} (all)"] = error_consistency(a, b)
    for strength, (files, plain) in cue_conflict_images(args.cue_conflict, args.cue_per_class).items():
        images = to_model_size(np.stack([np.array(Image.open(p)) for p in files]))
        predictions, calls = predictions_of_all(clf, images)
        plain_images = to_model_size(np.stack([np.array(Image.open(p)) for p in plain]))
        plain_predictions, _ = predictions_of_all(clf, plain_images)
        row = {"images": len(files), "fastgen_calls_per_image": calls}
        for name, predicted in predictions.items():
            decisions, left_out = decisions_from(
                [(p.name, CLASS_NAMES[k]) for p, k in zip(files, predicted)], CLASS_NAMES
            )
            bias = shape_bias(decisions)
            bias.pop("per_category")
            row[name] = {
                **bias, "left_out": left_out,
                "plain_zebras_called_zebra": float(np.mean(plain_predictions[name] == CLASS_NAMES.index("zebra"))),
            }  # fmt: skip
        report["shape_bias"][strength] = row
        print("strength", strength, json.dumps({n: round(row[n]["shape_bias"], 3) for n in predictions}), flush=True)
    report.update(
        command="python -m training.animals_report " + " ".join(sys.argv[1:] if argv is None else argv),
        seconds=round(time.perf_counter() - start, 1), threads=args.threads, cpu=cpu_name(),
        torch=torch.__version__, policy=clf.config.as_dict()["policy"],
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)


if __name__ == "__main__":
    main()
