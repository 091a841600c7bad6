"""Denoiser backends behind one interface: `torch`, `onnxruntime`, `tensorrt`.

Each backend is called exactly like `adapter.denoiser` (see `fastgen.engine.denoiser`) and
implements `_run` under `Backend.__call__`. `BACKENDS` is the registry the command line's
choices come from. A backend that runs an exported file takes that file's path; finding or
building it is the export layer's job (`fastgen.export.loading.load_backend`). Optional
dependencies are imported lazily, only when a backend is chosen.
"""

from __future__ import annotations

from fastgen.backends.base import Backend
from fastgen.backends.onnxruntime_backend import OnnxRuntimeBackend
from fastgen.backends.tensorrt_backend import TensorRTBackend
from fastgen.backends.torch_backend import TorchBackend

BACKENDS: dict[str, type[Backend]] = {
    "torch": TorchBackend,
    "onnxruntime": OnnxRuntimeBackend,
    "tensorrt": TensorRTBackend,
}

__all__ = ["BACKENDS", "Backend", "OnnxRuntimeBackend", "TensorRTBackend", "TorchBackend"]
