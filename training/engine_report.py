"""Held-out accuracy of a trained model folder, measured through the engine users run.

Every training report in this folder is scored here: `fastgen.DiffusionClassifier` loads the
saved files through the same `from_pretrained` path as `builtin:NAME`, with the exhaustive
policy (every class on the same `n_samples` shared-noise samples), so a published accuracy is
exactly what `fastgen classify --policy exhaustive --n-samples N` gives on those images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fastgen


def engine_accuracy(
    folder: str | Path,
    images: Sequence[np.ndarray],
    labels: Sequence[int],
    *,
    n_samples: int,
    batch_size: int = 2048,
    seed: int = 0,
    policy: str = "exhaustive",
    policy_options: dict[str, Any] | None = None,
    scoring: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Accuracy of the model in `folder` on uint8 `images` whose class indices are `labels`
    (indices into the model's own `fastgen.json` classes); `scoring` holds other scoring
    settings (a flow model's `flow_timesteps` / `flow_weighting`)."""
    options = {"n_samples": n_samples} if policy == "exhaustive" else dict(policy_options or {})
    clf = fastgen.DiffusionClassifier.from_pretrained(
        folder, device="cpu", dtype=torch.float32, policy=policy, policy_options=options,
        batch_size=batch_size, seed=seed, **(scoring or {}),
    )  # fmt: skip
    start = time.perf_counter()
    results = clf.classify(list(images))
    seconds = time.perf_counter() - start
    names = clf.classes.names
    predicted = np.array([names.index(r.prediction) for r in results])
    truth = np.asarray(labels)
    return {
        "policy": policy,
        "n_samples": n_samples,
        "n_images": int(len(truth)),
        "accuracy": float((predicted == truth).mean()),
        "n_errors": int((predicted != truth).sum()),
        "unet_evals_per_image": float(np.mean([r.unet_evals for r in results])),
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "predicted": predicted.tolist(),
    }
