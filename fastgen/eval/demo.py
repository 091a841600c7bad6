"""`fastgen demo`: the embedded digits model on held-out digits, beside a discriminative baseline.

The held-out quarter of the scikit-learn digits was never seen in training (fixed split). The
baseline is a logistic regression trained on the same training split, for context.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from fastgen.api import DiffusionClassifier
from fastgen.builtin.digits_data import CLASS_NAMES, digits_split
from fastgen.eval.shifts import standard_shifts

DEFAULT_N_IMAGES = 100


@dataclass
class DemoData:
    train_x: np.ndarray  # float [N, 8, 8] in [0, 1]
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_demo_data(n_images: int | None) -> DemoData:
    """The fixed split; `n_images` takes the first n held-out images (None: all of them)."""
    train_x, train_y, test_x, test_y = digits_split()
    if n_images is not None:
        test_x, test_y = test_x[:n_images], test_y[:n_images]
    return DemoData(train_x / 255.0, train_y, test_x / 255.0, test_y)


def baseline_accuracy(data: DemoData, test_x: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=2000, C=1.0)
    model.fit(data.train_x.reshape(len(data.train_x), -1), data.train_y)
    return float(model.score(test_x.reshape(len(test_x), -1), data.test_y))


def fastgen_run(clf: DiffusionClassifier, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    tensors = [torch.from_numpy(image[None].astype(np.float32)) for image in images]
    start = time.perf_counter()
    results = clf.classify(tensors)
    seconds = time.perf_counter() - start
    predictions = np.array([CLASS_NAMES.index(r.prediction) for r in results])
    return {
        "accuracy": float((predictions == labels).mean()),
        "images": len(images),
        "unet_evals_per_image": float(np.mean([r.unet_evals for r in results])),
        "images_per_s": len(images) / seconds,
        "seconds": seconds,
        "predictions": predictions.tolist(),
    }


def run_demo(clf: DiffusionClassifier, n_images: int | None) -> dict:
    data = load_demo_data(n_images)
    report = fastgen_run(clf, data.test_x, data.test_y)
    report["baseline_accuracy"] = baseline_accuracy(data, data.test_x)
    return report


def run_shift_table(clf: DiffusionClassifier, n_images: int | None) -> list[dict]:
    data = load_demo_data(n_images)
    rows = []
    for name, shift in standard_shifts().items():
        shifted = shift(data.test_x)
        run = fastgen_run(clf, shifted, data.test_y)
        rows.append({
            "shift": name,
            "accuracy": run["accuracy"],
            "baseline_accuracy": baseline_accuracy(data, shifted),
            "unet_evals_per_image": run["unet_evals_per_image"],
        })  # fmt: skip
    return rows
