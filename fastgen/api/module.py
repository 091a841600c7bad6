"""A classifier as a `torch.nn.Module`, for tools that expect a torchvision/timm classifier.

`ClassifierModule(images) -> logits` where

* `images` is a float tensor [N, C, H, W] with values in [0, 1] (any size: each image is resized
  on its shorter side and center-cropped to the model's resolution, as `classify` does). Pass
  `mean`/`std` when the images were normalised as `(x - mean) / std` (for example
  `IMAGENET_MEAN`/`IMAGENET_STD`); they are mapped back to [0, 1] first.
* `logits[n, k] = -errors[n, k] / temperature`: the lowest error gets the highest logit, so
  `logits.argmax(1)` is `classify`'s prediction and `logits.softmax(1)` is
  `ImageResult.probabilities(temperature)`. Classes pruned by an adaptive policy get `-inf`
  (probability 0); use the exhaustive policy when every logit must be finite.

The module holds no trainable parameters and does not move with `.to()`: the model runs on the
device it was loaded on, and the logits come back on the input's device, in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from fastgen.api import DiffusionClassifier
    from fastgen.engine.result import ImageResult

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def logits_from_results(results: Sequence[ImageResult], temperature: float = 1.0) -> np.ndarray:
    """[N, K] float64 logits -errors / temperature; -inf where a class was pruned."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    errors = np.stack([np.asarray(r.errors, dtype=np.float64) for r in results])
    return np.where(np.isnan(errors), -np.inf, -errors / temperature)


def _channel_stats(values: Sequence[float] | None, name: str) -> torch.Tensor | None:
    if values is None:
        return None
    tensor = torch.as_tensor(values, dtype=torch.float32).flatten()
    if name == "std" and (tensor <= 0).any():
        raise ValueError(f"std must be positive per channel, got {list(values)}")
    return tensor.view(1, -1, 1, 1)


class ClassifierModule(nn.Module):
    """images [N, C, H, W] -> class logits [N, K] through a `DiffusionClassifier`."""

    def __init__(
        self,
        classifier: DiffusionClassifier,
        *,
        temperature: float = 1.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (the input normalisation), or neither")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        # A plain object, not a submodule: `.to()` / `.half()` do not reach into the classifier,
        # whose device and dtype were fixed when it was loaded.
        self.classifier = classifier
        self.temperature = float(temperature)
        self.mean = _channel_stats(mean, "mean")
        self.std = _channel_stats(std, "std")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classifier.classes.names

    def to_unit_range(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the input normalisation: float [N, C, H, W] in [0, 1] on the CPU."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor [N, C, H, W], got {shape}")
        pixels = images.detach().float().cpu()
        if self.mean is not None:
            if pixels.shape[1] != self.mean.shape[1]:
                raise ValueError(f"images have {pixels.shape[1]} channels but mean/std have {self.mean.shape[1]}")
            # Round-off of normalise/denormalise can leave values a hair outside [0, 1].
            pixels = (pixels * self.std + self.mean).clamp(0, 1)
        return pixels

    def results(self, images: torch.Tensor) -> list[ImageResult]:
        return self.classifier.classify(self.to_unit_range(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = logits_from_results(self.results(images), self.temperature)
        return torch.from_numpy(logits).float().to(images.device)

    def extra_repr(self) -> str:
        normalised = "mean/std" if self.mean is not None else "[0, 1]"
        return f"classes={len(self.class_names)}, temperature={self.temperature}, inputs={normalised}"
