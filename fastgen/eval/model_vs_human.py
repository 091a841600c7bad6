"""Plug a generative classifier into model-vs-human (Geirhos et al.) as a model wrapper.

model-vs-human feeds a model 224 x 224 ImageNet-normalised image tensors, calls
`forward_batch(images) -> (N, 1000)` logits and `softmax(logits)`, then maps the 1000-way
probabilities to its 16 entry-level categories by averaging each category's ImageNet indices.

A generative classifier only needs to score the 16 category prompts. `ModelVsHumanWrapper`
writes a category's logit (-error / temperature) at every ImageNet index of that category and
-inf everywhere else, so after the softmax every index of category c holds exp(s_c) / Z, and
model-vs-human's per-category mean is proportional to exp(s_c): its 16-way decision is exactly
the classifier's prediction and its 16-way probabilities are the classifier's softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fastgen.api.module import IMAGENET_MEAN, IMAGENET_STD, ClassifierModule

if TYPE_CHECKING:
    from fastgen.api import DiffusionClassifier

NUM_IMAGENET_CLASSES = 1000

# The 16 entry-level categories and the ImageNet-1k class indices each one covers, as inclusive
# (first, last) ranges; the same 207 indices model-vs-human's category mapping uses.
IMAGENET_RANGES_16: dict[str, tuple[tuple[int, int], ...]] = {
    "airplane": ((404, 404),),
    "bear": ((294, 297),),
    "bicycle": ((444, 444), (671, 671)),
    "bird": ((8, 8), (10, 16), (18, 20), (22, 24), (80, 83), (87, 96), (98, 100), (127, 133), (135, 145)),
    "boat": ((472, 472), (554, 554), (625, 625), (814, 814), (914, 914)),
    "bottle": ((440, 440), (720, 720), (737, 737), (898, 899), (901, 901), (907, 907)),
    "car": ((436, 436), (511, 511), (817, 817)),
    "cat": ((281, 286),),
    "chair": ((423, 423), (559, 559), (765, 765), (857, 857)),
    "clock": ((409, 409), (530, 530), (892, 892)),
    "dog": ((152, 191), (193, 203), (205, 226), (228, 241), (243, 250), (252, 257), (259, 259), (261, 263), (265, 268)),
    "elephant": ((385, 386),),
    "keyboard": ((508, 508), (878, 878)),
    "knife": ((499, 499),),
    "oven": ((766, 766),),
    "truck": ((555, 555), (569, 569), (656, 656), (675, 675), (717, 717), (734, 734), (864, 864), (867, 867)),
}  # fmt: skip
CATEGORIES_16: tuple[str, ...] = tuple(sorted(IMAGENET_RANGES_16))
DEFAULT_TEMPLATES_16 = ("a photo of a {}.",)


def imagenet_indices(category: str) -> np.ndarray:
    """The ImageNet-1k indices of one of the 16 categories, ascending."""
    if category not in IMAGENET_RANGES_16:
        raise ValueError(f"unknown category {category!r}; the 16 categories are {list(CATEGORIES_16)}")
    return np.concatenate([np.arange(a, b + 1) for a, b in IMAGENET_RANGES_16[category]])


def spread_to_imagenet(category_logits: np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """[N, 16] category logits (columns named by `categories`) -> [N, 1000] ImageNet logits:
    each category's logit at its indices, -inf at the indices no category covers."""
    category_logits = np.asarray(category_logits, dtype=np.float64)
    out = np.full((category_logits.shape[0], NUM_IMAGENET_CLASSES), -np.inf)
    for column, category in enumerate(categories):
        out[:, imagenet_indices(category)] = category_logits[:, column : column + 1]
    return out


def imagenet_to_categories(probabilities: np.ndarray) -> np.ndarray:
    """[N, 1000] probabilities -> [N, 16] by the mean over each category's indices (columns in
    `CATEGORIES_16` order), the aggregation model-vs-human applies."""
    probabilities = np.asarray(probabilities)
    return np.stack([probabilities[:, imagenet_indices(c)].mean(axis=1) for c in CATEGORIES_16], axis=1)


class ModelVsHumanWrapper:
    """model-vs-human's model interface over a classifier of the 16 category prompts.

    Images reach `forward_batch` ImageNet-normalised (model-vs-human's preprocessing), which
    `mean`/`std` undo; pass `mean=None, std=None` for images in [0, 1].
    """

    def __init__(
        self,
        classifier: DiffusionClassifier,
        *,
        temperature: float = 1.0,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ):
        names = tuple(classifier.classes.names)
        if sorted(names) != list(CATEGORIES_16):
            raise ValueError(
                f"the classifier's classes must be the 16 model-vs-human categories "
                f"{list(CATEGORIES_16)}, got {list(names)}; build it with model_vs_human_classifier()"
            )
        self.module = ClassifierModule(classifier, temperature=temperature, mean=mean, std=std)
        self.categories = names

    def forward_batch(self, images: torch.Tensor) -> np.ndarray:
        """images [N, 3, H, W] -> logits (N, 1000), float32 numpy."""
        category_logits = self.module(images).cpu().numpy()
        return spread_to_imagenet(category_logits, self.categories).astype(np.float32)

    def softmax(self, logits: np.ndarray) -> np.ndarray:
        """Row-wise softmax of (N, 1000) logits, as model-vs-human's wrappers provide."""
        logits = np.asarray(logits, dtype=np.float64)
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)

    def decisions(self, logits: np.ndarray) -> list[str]:
        """The 16-way decision model-vs-human derives from these logits."""
        scores = imagenet_to_categories(self.softmax(logits))
        return [CATEGORIES_16[i] for i in scores.argmax(axis=1)]


def model_vs_human_classifier(
    model: str | Path, *, templates: Sequence[str] = DEFAULT_TEMPLATES_16, **options: Any
) -> DiffusionClassifier:
    """A `DiffusionClassifier` over the 16 categories (one prompt per template each)."""
    from fastgen.api import DiffusionClassifier

    return DiffusionClassifier.from_pretrained(model, classes=list(CATEGORIES_16), templates=templates, **options)
