"""Recovering from the two faults a long GPU run meets: out-of-memory and fp16 overflow.

* A CUDA out-of-memory error in a denoiser call splits the rows in halves and retries. The
  smallest size that had to be used is remembered (per dtype), so later batches go straight to
  chunks that fit instead of failing again.
* Rows of a batch that come back non-finite (fp16 overflow) are recomputed by the engine in fp32
  through `DenoiseGuard.fp32_denoiser()`, an fp32 copy of the plain torch denoiser made the first
  time it is needed. Only those rows: the finite rows of the batch, other images' included, keep
  their values. Non-finite rows are never averaged into a score.

Neither changes a row's value: each row depends only on its own (image, prompt, sample), so
running a batch in pieces gives the same errors as running it whole.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
from torch import nn

from fastgen.engine.denoiser import Denoiser

# OutOfMemoryError is public from torch 2.5; torch.cuda.OutOfMemoryError (the same class
# there) exists on every torch fastgen supports.
OutOfMemoryError: type[Exception] = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError

log = logging.getLogger(__name__)


def fp32_copy(module: nn.Module) -> nn.Module:
    """The module itself when it is already fp32, else an fp32 deep copy (the original stays)."""
    floating = [p for p in list(module.parameters()) + list(module.buffers()) if p.is_floating_point()]
    if all(p.dtype == torch.float32 for p in floating):
        return module
    return copy.deepcopy(module).float()


def _default_fp32_source(denoise: Denoiser) -> Callable[[], Denoiser] | None:
    if isinstance(denoise, nn.Module):
        return lambda: fp32_copy(denoise)
    return None


def release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def call_rows(
    denoise: Denoiser,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    rows: torch.Tensor | None,
    start: int,
    end: int,
) -> torch.Tensor:
    """The denoiser on rows start:end of a batch. With `rows` (row -> distinct input), only the
    distinct inputs those rows use are passed on, re-indexed."""
    if rows is None:
        return denoise(x_t[start:end], t[start:end], cond[start:end])
    if start == 0 and end == cond.shape[0]:
        return denoise(x_t, t, cond, rows)
    used, local = torch.unique(rows[start:end], return_inverse=True)
    return denoise(x_t[used], t[used], cond[start:end], local)


class DenoiseGuard:
    """Runs denoiser calls through out-of-memory splitting; holds the lazy fp32 fallback.

    `fp32_source` builds the fp32 denoiser on first use (for a classifier: an fp32 copy of the
    adapter's torch module, whatever fast path `denoise` is).
    """

    def __init__(self, fp32_source: Callable[[], Denoiser] | None = None):
        self._fp32_source = fp32_source
        self._fp32: Denoiser | None = None
        self.max_rows: dict[torch.dtype, int] = {}  # largest chunk known to fit, per input dtype
        self.fixed_batch_limit: int | None = None  # a fixed-batch denoiser's size known to fit
        self.oom_splits = 0

    @classmethod
    def for_denoiser(cls, denoise: Denoiser) -> DenoiseGuard:
        return cls(_default_fp32_source(denoise))

    @property
    def has_fp32(self) -> bool:
        """Whether the fp32 fallback has been built (it is built only when a batch needs it)."""
        return self._fp32 is not None

    def fp32_denoiser(self) -> Denoiser:
        if self._fp32 is None:
            if self._fp32_source is None:
                raise FloatingPointError(
                    "the denoiser returned non-finite values and no fp32 fallback is available "
                    "for this denoiser; run with dtype=torch.float32 or bfloat16"
                )
            # Built outside inference mode: its weights must stay ordinary tensors, usable by
            # any later caller, not inference tensors of the batch that needed them.
            with torch.inference_mode(False):
                self._fp32 = self._fp32_source()
            log.info("built the fp32 fallback denoiser")
        return self._fp32

    def __call__(
        self,
        denoise: Denoiser,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """denoise(x_t, t, cond[, rows]), in chunks of rows small enough to fit in memory."""
        n = cond.shape[0]
        size = min(n, self.max_rows.get(x_t.dtype, n))
        outputs: list[torch.Tensor] = []
        start = 0
        while start < n:
            end = min(n, start + size)
            try:
                outputs.append(call_rows(denoise, x_t, t, cond, rows, start, end))
                start = end
                continue
            except OutOfMemoryError as error:
                if end - start == 1:
                    raise OutOfMemoryError(
                        f"the denoiser ran out of memory on a single row ({error}); free GPU "
                        "memory, use a lower-precision dtype, or a smaller model"
                    ) from error
            # Outside the except block, so the failed call's tensors are already released.
            size = max(1, (end - start) // 2)
            self.max_rows[x_t.dtype] = size
            self.oom_splits += 1
            release_cached_memory()
            log.warning("out of memory on %d denoiser rows; retrying in chunks of %d", end - start, size)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
