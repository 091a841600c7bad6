"""Fixed batch shapes for backends that want them (CUDA graphs, static torch.compile).

Such a backend sets `wants_fixed_batch = True`; the engine then calls it through `FixedBatch`,
which pads a partial batch (the last one of a run, or a round's tail) up to the batch size with
copies of its last row and drops the padded rows' outputs. Rows are independent of their batch
neighbours, so the real rows' values do not change; a recompile or a new graph capture per
distinct batch size would cost far more than the padded rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class FixedBatch:
    """Calls `denoise` with exactly `batch_size` rows, whatever it is given."""

    def __init__(self, denoise: Denoise, batch_size: int):
        self.denoise = denoise
        self.batch_size = batch_size

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        n, size = x_t.shape[0], self.batch_size
        if n == size:
            return self.denoise(x_t, t, cond)
        if n > size:
            return torch.cat([self(x_t[i : i + size], t[i : i + size], cond[i : i + size]) for i in range(0, n, size)])
        pad = lambda v: torch.cat([v, v[-1:].expand(size - n, *v.shape[1:])])  # noqa: E731
        return self.denoise(pad(x_t), pad(t), pad(cond))[:n]


def fixed_batch_if_wanted(denoise: Denoise, batch_size: int) -> Denoise:
    """`denoise` itself, or wrapped in `FixedBatch` when it asks for one batch shape."""
    return FixedBatch(denoise, batch_size) if getattr(denoise, "wants_fixed_batch", False) else denoise
