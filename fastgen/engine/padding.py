"""Fixed batch shapes for backends that want them (CUDA graphs, static torch.compile).

Such a backend sets `wants_fixed_batch = True`; the engine then calls it through `FixedBatch`,
which pads a partial batch (the last one of a run, or a round's tail) up to the batch size with
copies of its last row and drops the padded rows' outputs. Rows are independent of their batch
neighbours, so the real rows' values do not change; a recompile or a new graph capture per
distinct batch size would cost far more than the padded rows.
"""

from __future__ import annotations

import torch

from fastgen.engine.denoiser import Denoiser
from fastgen.engine.faults import call_rows


class FixedBatch:
    """Calls `denoise` with exactly `batch_size` rows, whatever it is given."""

    wants_fixed_batch = False  # already fixed here

    def __init__(self, denoise: Denoiser, batch_size: int):
        self.denoise = denoise
        self.batch_size = batch_size
        self.shares_prefix = denoise.shares_prefix
        self.max_batch = batch_size

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        # With `rows`, the fixed shape is that of the per-row part (cond, rows); the distinct
        # inputs x_t, t stay as they are.
        n, size = cond.shape[0], self.batch_size
        if n == size:
            return call_rows(self.denoise, x_t, t, cond, rows, 0, n)
        if n > size:
            return torch.cat([call_rows(self, x_t, t, cond, rows, i, min(n, i + size)) for i in range(0, n, size)])
        pad = lambda v: torch.cat([v, v[-1:].expand(size - n, *v.shape[1:])])
        if rows is None:
            return self.denoise(pad(x_t), pad(t), pad(cond))[:n]
        return self.denoise(x_t, t, pad(cond), pad(rows))[:n]


def fixed_batch_if_wanted(denoise: Denoiser, batch_size: int) -> Denoiser:
    """`denoise` itself, or wrapped in `FixedBatch` when it asks for one batch shape."""
    return FixedBatch(denoise, batch_size) if denoise.wants_fixed_batch else denoise
