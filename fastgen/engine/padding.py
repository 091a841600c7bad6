"""Fixed batch shapes for backends that want them (CUDA graphs, static torch.compile).

Such a backend sets `wants_fixed_batch = True`; the engine then calls it through `FixedBatch`,
which pads a partial batch (the last one of a run, or a round's tail) up to the batch size with
copies of its last row and drops the padded rows' outputs. Rows are independent of their batch
neighbours, so the real rows' values do not change; a recompile or a new graph capture per
distinct batch size would cost far more than the padded rows.

Out of memory at the fixed size, the size itself is halved (one recompile or capture at the new
size): splitting the rows, as `DenoiseGuard` does for other denoisers, cannot help here, since
every piece would be padded back to the size that did not fit.
"""

from __future__ import annotations

import logging

import torch

from fastgen.engine.denoiser import Denoiser
from fastgen.engine.faults import DenoiseGuard, OutOfMemoryError, call_rows, release_cached_memory

log = logging.getLogger(__name__)


class FixedBatch:
    """Calls `denoise` with exactly `batch_size` rows, whatever it is given."""

    wants_fixed_batch = False  # already fixed here

    def __init__(self, denoise: Denoiser, batch_size: int, guard: DenoiseGuard | None = None):
        self.denoise = denoise
        # The guard outlives one run: a size that ran out of memory is not tried again.
        self.guard = guard
        if guard is not None and guard.fixed_batch_limit is not None:
            batch_size = min(batch_size, guard.fixed_batch_limit)
        self.batch_size = batch_size
        self.shares_prefix = denoise.shares_prefix
        self.max_batch = batch_size

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        while True:
            size = self.batch_size
            try:
                return self._call_fixed(x_t, t, cond, rows)
            except OutOfMemoryError as error:
                if size == 1:
                    raise OutOfMemoryError(
                        f"the denoiser ran out of memory on a single row ({error}); free GPU "
                        "memory, use a lower-precision dtype, or a smaller model"
                    ) from error
            # Outside the except block, so the failed call's tensors are already released.
            if self.batch_size == size:  # an inner call may have shrunk it already
                self.batch_size = self.max_batch = max(1, size // 2)
                if self.guard is not None:
                    self.guard.fixed_batch_limit = self.batch_size
                release_cached_memory()
                log.warning(
                    "out of memory at the fixed batch size %d; running batches of %d from now on "
                    "(one recompile or CUDA-graph capture at the new size)", size, self.batch_size,
                )  # fmt: skip

    def _call_fixed(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, rows: torch.Tensor | None
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


def fixed_batch_if_wanted(denoise: Denoiser, batch_size: int, guard: DenoiseGuard | None = None) -> Denoiser:
    """`denoise` itself, or wrapped in `FixedBatch` when it asks for one batch shape."""
    return FixedBatch(denoise, batch_size, guard) if denoise.wants_fixed_batch else denoise
