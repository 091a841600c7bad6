"""The fastest settings fastgen knows for a device, as `from_pretrained` keyword arguments.

`fastest_settings("cpu")` / `fastest_settings("cuda")` return `dtype`, `batch_size`, `backend`
and `backend_options`; `fastgen bench` uses them for the engine side unless told otherwise.
They trade exact fp32 arithmetic for bf16 where the device computes it natively, so per-class
errors move within bf16 tolerance; `fastgen bench` reports the agreement that results.

CPU: bf16 when oneDNN has native bf16 kernels (AVX512-BF16 / AMX), `torch.compile` with frozen
weights, explicit-matmul attention (small attention is faster that way on CPU), channels-last
memory, and one single-threaded worker process per core, each on its own chunk of a batch
(2048 rows for small models, 256 otherwise).
CUDA: bf16, `torch.compile` with CUDA graphs, SDPA attention with fused projections,
channels-last memory.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions and matmuls natively on this CPU."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


# On CPU, rows per batch for models whose x0 has at most SMALL_X0 elements (the embedded 8x8
# model: each call has a fixed cost, and 2048 rows ran 15% faster than 512), else a size whose
# activations stay modest for a UNet at latent resolution.
SMALL_X0 = 4096
CPU_ROWS_SMALL, CPU_ROWS = 2048, 256


def fastest_settings(
    device: torch.device | str, *, processes: int | None = None, x0_shape: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """Keyword arguments for `DiffusionClassifier.from_pretrained` on `device`.

    `processes` (CPU only) is the number of chunk worker processes; the default is the number
    of threads torch uses, which is the number of cores it may run on. A script that uses them
    creates the classifier under `if __name__ == "__main__":` (they are spawned).
    `x0_shape` (one image's x0, `adapter.x0_shape`) lets a small model take larger CPU batches.
    """
    device = torch.device(device)
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        options = {"compile": True, "cuda_graphs": True, "attention": "sdpa", "channels_last": True}
        return {"dtype": dtype, "batch_size": 128, "backend": "torch", "backend_options": options}
    if device.type != "cpu":
        raise ValueError(f"fastest_settings knows CPU and CUDA devices, not {device.type!r}")
    options = {
        "compile": True,
        "attention": "math",
        "channels_last": True,
        "processes": processes or torch.get_num_threads(),
    }
    dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    small = x0_shape is not None and math.prod(x0_shape) <= SMALL_X0
    rows = CPU_ROWS_SMALL if small else CPU_ROWS
    return {"dtype": dtype, "batch_size": rows, "backend": "torch", "backend_options": options}
