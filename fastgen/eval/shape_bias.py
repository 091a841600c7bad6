"""Shape bias on cue-conflict images, as model-vs-human defines it (Geirhos et al., ICLR 2019;
Jaini, Clark & Geirhos, ICLR 2024).

A cue-conflict image carries the shape of one class and the texture of another. Its file name
says which, the way model-vs-human names them: `<shape><i>-<texture><j>.<ext>` (`cat7-elephant2.png`:
a cat's shape with an elephant's texture; the digits number the source images). A decision is a
*shape decision* when the prediction is the shape class, a *texture decision* when it is the
texture class, and neither otherwise. Images whose shape and texture class are the same are left
out (they test nothing), and so are images whose shape or texture is not among the classes the
classifier was given. Then

    shape bias = shape decisions / (shape decisions + texture decisions)

overall, and per category (over the images whose shape is that category). The interval is a
percentile bootstrap over images.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_NAME = re.compile(r"^(?P<shape>[A-Za-z_ ]+?)\d*-(?P<texture>[A-Za-z_ ]+?)\d*$")


def cue_conflict_classes(path: str | Path) -> tuple[str, str] | None:
    """(shape class, texture class) from a model-vs-human style file name, or None when the name
    is not of that form (`cat7-elephant2.png` -> ("cat", "elephant"))."""
    match = _NAME.match(Path(path).stem)
    if match is None:
        return None
    return match["shape"], match["texture"]


@dataclass(frozen=True)
class Decision:
    shape: str
    texture: str
    prediction: str

    @property
    def kind(self) -> str:
        """'shape', 'texture' or 'other'."""
        if self.prediction == self.shape:
            return "shape"
        if self.prediction == self.texture:
            return "texture"
        return "other"


def decisions_from(
    rows: Iterable[tuple[str | Path, str]], class_names: Sequence[str] | None = None
) -> tuple[list[Decision], dict[str, int]]:
    """The decisions of (file name, prediction) rows, and how many rows were left out and why
    (a name not of the cue-conflict form, the same class for shape and texture, a class the
    classifier does not have)."""
    known = set(class_names) if class_names is not None else None
    kept: list[Decision] = []
    left_out = {"not_cue_conflict_name": 0, "shape_equals_texture": 0, "class_not_scored": 0}
    for path, prediction in rows:
        classes = cue_conflict_classes(path)
        if classes is None:
            left_out["not_cue_conflict_name"] += 1
            continue
        shape, texture = classes
        if shape == texture:
            left_out["shape_equals_texture"] += 1
        elif known is not None and (shape not in known or texture not in known):
            left_out["class_not_scored"] += 1
        else:
            kept.append(Decision(shape, texture, prediction))
    return kept, left_out


def _bias(kinds: np.ndarray) -> float:
    shape, texture = int(np.sum(kinds == 0)), int(np.sum(kinds == 1))
    return shape / (shape + texture) if shape + texture else float("nan")


def shape_bias(
    decisions: Sequence[Decision], *, bootstrap: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Shape bias overall (with a bootstrap interval over images) and per shape category, with
    the counts behind each figure."""
    codes = {"shape": 0, "texture": 1, "other": 2}
    kinds = np.array([codes[d.kind] for d in decisions], dtype=np.int64)
    overall = _bias(kinds)
    interval = [float("nan"), float("nan")]
    if len(kinds) and np.isfinite(overall):
        rng = np.random.default_rng(seed)
        draws = np.array([_bias(kinds[rng.integers(0, len(kinds), len(kinds))]) for _ in range(bootstrap)])
        draws = draws[np.isfinite(draws)]
        tail = (1.0 - level) / 2.0
        interval = [float(np.quantile(draws, tail)), float(np.quantile(draws, 1.0 - tail))]
    per_category = {}
    for category in sorted({d.shape for d in decisions}):
        mine = np.array([codes[d.kind] for d in decisions if d.shape == category], dtype=np.int64)
        per_category[category] = {
            "shape_bias": _bias(mine), "images": int(len(mine)), "shape_decisions": int(np.sum(mine == 0)),
            "texture_decisions": int(np.sum(mine == 1)), "other_decisions": int(np.sum(mine == 2)),
        }  # fmt: skip
    return {
        "shape_bias": overall,
        "interval": interval,
        "interval_level": level,
        "bootstrap": bootstrap,
        "images": int(len(kinds)),
        "shape_decisions": int(np.sum(kinds == 0)),
        "texture_decisions": int(np.sum(kinds == 1)),
        "other_decisions": int(np.sum(kinds == 2)),
        "shape_or_texture_share": float(np.mean(kinds < 2)) if len(kinds) else float("nan"),
        "per_category": per_category,
    }
