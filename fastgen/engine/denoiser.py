"""The one interface the engine calls: `Denoiser`.

`denoiser(x_t [B,C,H,W], t [B] int64, cond [B,...]) -> prediction [B,C,H,W]`, or, for a denoiser
with `shares_prefix`, `denoiser(x_t [D,...], t [D], cond [B,...], rows [B])` where x_t and t hold
each distinct noised input once and output row r belongs to input `rows[r]`. The model adapters'
denoisers, every backend and the engine's own wrappers declare the three flags; `as_denoiser`
gives a bare callable (a user's function, a test double) the plain defaults.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Denoiser(Protocol):
    # Takes `rows` and runs its class-independent prefix once per distinct input.
    shares_prefix: bool
    # Runs best (or only) at one batch shape: the engine pads partial batches up to it.
    wants_fixed_batch: bool
    # Largest batch one call accepts (e.g. a TensorRT profile's max); None means any.
    max_batch: int | None

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor: ...


class PlainDenoiser:
    """A bare callable `(x_t, t, cond) -> prediction` as a `Denoiser` that wants nothing special."""

    shares_prefix = False
    wants_fixed_batch = False
    max_batch = None

    def __init__(self, function):
        self.function = function

    def __call__(self, x_t, t, cond, rows=None):
        if rows is not None:
            x_t, t = x_t[rows], t[rows]
        return self.function(x_t, t, cond)


def as_denoiser(denoise) -> Denoiser:
    """`denoise` itself when it declares the protocol's flags, else wrapped in `PlainDenoiser`."""
    return denoise if isinstance(denoise, Denoiser) else PlainDenoiser(denoise)
