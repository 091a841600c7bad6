"""The fastest settings fastgen knows for a device, as `from_pretrained` keyword arguments.

`fastest_settings("cpu")` / `fastest_settings("cuda")` return `dtype`, `batch_size`, `backend`
and `backend_options`; `fastgen bench` uses them for the engine side unless told otherwise.
They trade exact fp32 arithmetic for bf16 where the device computes it natively, so per-class
errors move within bf16 tolerance; `fastgen bench` reports the agreement that results.

CPU: bf16 when oneDNN has native bf16 kernels (AVX512-BF16 / AMX), `torch.compile` with frozen
weights, explicit-matmul attention (small attention is faster that way on CPU), channels-last
memory, and one single-threaded worker process per core, each on its own chunk of a 512-row
batch.
CUDA: bf16, `torch.compile` with CUDA graphs, SDPA attention with fused projections,
channels-last memory.
"""

from __future__ import annotations

from typing import Any

import torch


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions and matmuls natively on this CPU."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fastest_settings(device: torch.device | str, *, processes: int | None = None) -> dict[str, Any]:
    """Keyword arguments for `DiffusionClassifier.from_pretrained` on `device`.

    `processes` (CPU only) is the number of chunk worker processes; the default is the number
    of threads torch uses, which is the number of cores it may run on. A script that uses them
    creates the classifier under `if __name__ == "__main__":` (they are spawned).
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
    return {"dtype": dtype, "batch_size": 512, "backend": "torch", "backend_options": options}
