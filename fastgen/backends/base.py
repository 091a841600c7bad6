"""The one interface the engine calls for the denoiser, whatever runs underneath.

A backend is called exactly like `adapter.denoiser`:
`backend(x_t [B,C,H,W], t [B] int64, cond [B,...]) -> prediction [B,C,H,W]` on the adapter's
device, or with `rows` [B] when x_t and t hold each distinct noised input once. `__call__`
checks the inputs against the model's I/O spec once per call and splits calls larger than what
the backend was built for; subclasses implement `_run` only.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from fastgen.backends.spec import IOSpec

log = logging.getLogger(__name__)


class Backend(ABC):
    """A denoiser behind one call signature; see the module docstring."""

    name: ClassVar[str]
    # True when the backend runs best (or only) at one batch size: the engine then pads its
    # last, partial batch up to the batch size and drops the padded rows' outputs.
    wants_fixed_batch: bool = False
    # Largest batch one `_run` accepts (a TensorRT profile's max); None means any.
    max_batch: int | None = None

    def __init__(self, spec: IOSpec, *, device: torch.device | str, dtype: torch.dtype):
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = dtype

    # True when `_run` takes `rows` and runs the class-independent prefix once per distinct
    # input (see fastgen.models.unet_prefix); other backends get the rows gathered for them.
    shares_prefix: bool = False

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = self.spec.check(x_t, t, cond, rows)
        if rows is not None:
            if self.shares_prefix:
                return self._run(x_t, t, cond, rows)
            x_t, t = x_t[rows], t[rows]
        step = self.max_batch or batch
        if batch <= step:
            return self._run(x_t, t, cond)
        pieces = [self._run(x_t[i : i + step], t[i : i + step], cond[i : i + step]) for i in range(0, batch, step)]
        return torch.cat(pieces)

    @abstractmethod
    def _run(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One call with a batch the backend accepts; returns the prediction on `self.device`."""

    def describe(self) -> dict[str, Any]:
        """Settings worth recording next to a measurement."""
        return {"backend": self.name, "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.describe().items() if k != "backend")
        return f"{type(self).__name__}({settings})"
