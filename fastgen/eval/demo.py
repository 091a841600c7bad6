"""`fastgen demo`: an embedded model on its held-out images, beside a discriminative baseline.

`builtin:digits` (the default): the held-out quarter of the scikit-learn digits, never seen in
training (fixed split); the baseline is a logistic regression trained on the same training
split. `builtin:numbers`: held-out three-digit numbers from `heldout_numbers` (composed from
held-out digits only); the baseline applies that digit logistic regression to each 8x8 cell.
`builtin:animals`: the held-out Animal-Shape silhouettes shipped with the package (16x16); its
training images do not ship, so its baselines (logistic regression, RBF SVC, a small CNN) are the
ones `training/train_animals_baselines.py` recorded in the model's `baselines.json`, with their
predictions for every held-out image, scored here on the same images as the model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastgen.api import DiffusionClassifier
from fastgen.builtin.digits_data import CLASS_NAMES, digits_split
from fastgen.eval.shifts import standard_shifts

DEFAULT_N_IMAGES = 100
# `builtin:numbers` scores 1,000 classes per image: a smaller default keeps the demo short.
DEFAULT_N_IMAGES_BY_TASK = {"digits": DEFAULT_N_IMAGES, "numbers": 10, "animals": DEFAULT_N_IMAGES}
BASELINES_FILE = "baselines.json"  # in the animals model's folder


@dataclass
class DemoData:
    train_x: np.ndarray | None  # float [N, 8, 8] in [0, 1]: training digits (the baseline's data); None for animals
    train_y: np.ndarray | None
    test_x: np.ndarray  # float [n, 8, 8] (digits), [n, 8, 24] (numbers) or [n, 16, 16] (animals) in [0, 1]
    test_y: np.ndarray  # class indices: the digit, the number, or the animal
    task: str = "digits"

    @property
    def label_names(self) -> list[str]:
        return label_names(self.task)


def label_names(task: str) -> list[str]:
    """The class name of each label index, as the embedded model names it: `zero` ... `nine`
    for digits, `zero zero seven` ... for numbers. Results are matched to labels by these names,
    so a classifier's classes may come in any order."""
    if task == "numbers":
        from fastgen.builtin.numbers_data import class_names

        return class_names()
    if task == "animals":
        from fastgen.builtin.animals_data import CLASS_NAMES as ANIMALS

        return list(ANIMALS)
    return list(CLASS_NAMES)


def demo_task(model: str) -> str:
    """ "numbers" for `builtin:numbers`, "animals" for `builtin:animals` (or their folders), else
    "digits"."""
    from fastgen.builtin import BUILTIN_MODELS

    path = Path(str(model))
    for task in ("numbers", "animals"):
        if str(model) in (f"builtin:{task}", task):
            return task
        if path.is_dir() and path.resolve() == BUILTIN_MODELS[task].resolve():
            return task
    return "digits"


def model_folder(model: str) -> Path:
    """The folder of `builtin:NAME` or of a model given as a path."""
    from fastgen.builtin import BUILTIN_PREFIX, resolve_builtin

    return resolve_builtin(model) if str(model).startswith(BUILTIN_PREFIX) else Path(str(model))


def load_demo_data(n_images: int | None, task: str = "digits") -> DemoData:
    """The fixed split; `n_images` takes the first n held-out images (None: all held-out
    digits, or 1,000 held-out numbers, one of each)."""
    if task == "animals":
        from fastgen.builtin.animals_data import load_heldout

        heldout = load_heldout()
        test_x, test_y = heldout.images[:n_images], heldout.labels[:n_images]
        return DemoData(None, None, test_x / 255.0, test_y, task)
    train_x, train_y, test_x, test_y = digits_split()
    if task == "numbers":
        from fastgen.builtin.numbers_data import N_CLASSES, heldout_numbers

        test_x, test_y = heldout_numbers(N_CLASSES if n_images is None else n_images)
    elif n_images is not None:
        test_x, test_y = test_x[:n_images], test_y[:n_images]
    return DemoData(train_x / 255.0, train_y, test_x / 255.0, test_y, task)


def baseline_accuracy(data: DemoData, test_x: np.ndarray) -> float | None:
    """Logistic regression on the training digits; for numbers, applied to each 8x8 cell (a
    number is right when all three cells are). None for animals: no training images ship."""
    from sklearn.linear_model import LogisticRegression

    if data.train_x is None:
        return None
    model = LogisticRegression(max_iter=2000, C=1.0)
    model.fit(data.train_x.reshape(len(data.train_x), -1), data.train_y)
    if data.task == "numbers":
        cells = test_x.reshape(len(test_x), 8, 3, 8).transpose(0, 2, 1, 3).reshape(-1, 64)
        digits = model.predict(cells).reshape(len(test_x), 3)
        predicted = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]
        return float((predicted == data.test_y).mean())
    return float(model.score(test_x.reshape(len(test_x), -1), data.test_y))


def fastgen_run(clf: DiffusionClassifier, images: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, float]:
    """Classify float images [n, H, W] whose labels are indices into `names`; a prediction is
    right when it is the label's name (whatever the classifier's class order). `predictions`
    are label indices too (-1 for a class that names no label). `undecided` counts the images an
    adaptive policy left undecided, `undecided_errors` those of them predicted wrong."""
    tensors = [torch.from_numpy(image[None].astype(np.float32)) for image in images]
    index = {name: i for i, name in enumerate(names)}
    start = time.perf_counter()
    results = clf.classify(tensors)
    seconds = time.perf_counter() - start
    predictions = np.array([index.get(r.prediction, -1) for r in results])
    undecided = np.array([not r.decided for r in results])  # an adaptive policy's budget ran out on a tie
    return {
        "accuracy": float((predictions == labels).mean()),
        "images": len(images),
        "unet_evals_per_image": float(np.mean([r.unet_evals for r in results])),
        "undecided": int(undecided.sum()),
        "undecided_errors": int((undecided & (predictions != labels)).sum()),
        "images_per_s": len(images) / seconds,
        "seconds": seconds,
        "predictions": predictions.tolist(),
    }


def recorded_baselines(path: Path, labels: np.ndarray) -> dict[str, Any] | None:
    """The baselines `training/train_animals_baselines.py` recorded in `path`: each one's
    accuracy on all held-out images and, from its recorded predictions, on the first
    len(labels) of them (the demo's images); None when the file is missing."""
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text(encoding="utf-8"))
    models = {}
    for name, entry in recorded["baselines"].items():
        predicted = np.array([int(c) for c in entry["heldout_predictions"][: len(labels)]])
        models[name] = {
            "description": entry["description"],
            "accuracy": float((predicted == labels).mean()) if len(labels) else float("nan"),
            "heldout_accuracy": entry["heldout_accuracy"],
        }
    return {
        "recorded_by": recorded["command"],
        "file": str(path),
        "heldout_images": recorded["split"]["heldout_images"],
        "models": models,
    }


def run_demo(
    clf: DiffusionClassifier, n_images: int | None, task: str = "digits", *, baselines_file: Path | None = None
) -> dict:
    """The model on the task's held-out images, beside its baselines (`baselines_file`: the
    animals model's recorded baselines)."""
    data = load_demo_data(n_images, task)
    report = fastgen_run(clf, data.test_x, data.test_y, data.label_names)
    if task == "animals":
        report["baselines"] = recorded_baselines(baselines_file, data.test_y) if baselines_file else None
    else:
        report["baseline_accuracy"] = baseline_accuracy(data, data.test_x)
    return report


def run_shift_table(clf: DiffusionClassifier, n_images: int | None, task: str = "digits") -> list[dict]:
    data = load_demo_data(n_images, task)
    rows = []
    for name, shift in standard_shifts().items():
        shifted = shift(data.test_x)
        run = fastgen_run(clf, shifted, data.test_y, data.label_names)
        rows.append({
            "shift": name,
            "accuracy": run["accuracy"],
            "baseline_accuracy": baseline_accuracy(data, shifted),
            "unet_evals_per_image": run["unet_evals_per_image"],
        })  # fmt: skip
    return rows


def write_demo_images(
    n_images: int | None, task: str, folder: Path, class_names: list[str] | None = None
) -> list[Path]:
    """The demo's held-out images as PNG files in `folder/<class name>/`, so that a results file
    (and a report) can be made from them with labels from folders; `class_names` names the
    label indices (default: the embedded model's names, `label_names(task)`)."""
    from PIL import Image

    data = load_demo_data(n_images, task)
    class_names = data.label_names if class_names is None else class_names
    paths = []
    for i, (image, label) in enumerate(zip(data.test_x, data.test_y)):
        target = folder / class_names[int(label)] / f"{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)).save(target)
        paths.append(target)
    return paths
