"""Denoiser backends behind one interface: `torch`, `onnxruntime`, `tensorrt`.

`load_backend(name, adapter, ...)` returns a callable with the signature of `adapter.denoiser`;
`DiffusionClassifier.from_pretrained(..., backend=...)` makes it the classifier's `denoise`.
The onnxruntime and tensorrt backends find their ONNX file / engine in the export cache
(`export_dir`, default `~/.cache/fastgen/exports`) and export or build only on a miss.
Their dependencies are imported lazily, only when chosen.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from fastgen.backends.base import Backend
from fastgen.choices import BACKENDS

# Options consumed by the export step rather than the backend itself.
_EXPORT_OPTIONS = {"onnxruntime": {"exporter", "verify"}, "tensorrt": {"exporter", "verify", "batch_sizes"}}

__all__ = ["BACKENDS", "Backend", "load_backend"]


def _backend_class(name: str) -> type[Backend]:
    if name == "torch":
        from fastgen.backends.torch_backend import TorchBackend

        return TorchBackend
    if name == "onnxruntime":
        from fastgen.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    if name == "tensorrt":
        from fastgen.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def _check_options(name: str, cls: type[Backend], options: dict[str, Any]) -> None:
    fixed = {"self", "denoiser", "spec", "onnx_path", "plan_path", "device", "batch_sizes"}
    allowed = {p for p in inspect.signature(cls.__init__).parameters if p not in fixed}
    allowed |= _EXPORT_OPTIONS.get(name, set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"backend_options {unknown} are not options of the {name} backend; it takes {sorted(allowed)}")


def load_backend(
    name: str,
    adapter: Any,
    *,
    batch_size: int = 64,
    export_dir: str | Path | None = None,
    **options: Any,
) -> Backend:
    """The `name` backend for `adapter`'s denoiser, on the adapter's device and in its dtype.

    `batch_size` is the engine's batch size: a TensorRT engine built here gets the profile
    (1, batch_size, batch_size) unless `batch_sizes=(MIN, OPT, MAX)` is given.
    """
    from fastgen.export.cache import ExportCache
    from fastgen.export.pipeline import ensure_engine, ensure_onnx
    from fastgen.export.spec import adapter_spec

    cls = _backend_class(name)
    _check_options(name, cls, options)
    spec = adapter_spec(adapter)
    if name == "torch":
        return cls(adapter.denoiser, spec, **options)
    export = {k: options.pop(k) for k in ("exporter", "verify") if k in options}
    cache = ExportCache(export_dir)
    if name == "onnxruntime":
        from fastgen.optional import require

        require("onnxruntime", extra="onnx", purpose="the onnxruntime backend")  # before exporting
        result = ensure_onnx(adapter.denoiser, spec, model=adapter.name, cache=cache, **export)
        options.setdefault("trt_cache_dir", cache.root / "onnxruntime-tensorrt")  # TensorRT EP only
        options.setdefault("trt_fp16", adapter.dtype == torch.float16)
        sizes = (1, batch_size, batch_size)
        return cls(result.path, spec, device=adapter.device, batch_sizes=sizes, **options)
    asked = options.pop("batch_sizes", None)
    sizes = tuple(asked) if asked is not None else (1, batch_size, batch_size)
    result = ensure_engine(
        adapter.denoiser, spec, model=adapter.name, cache=cache, batch_sizes=sizes,
        any_covering_profile=asked is None, **export,
    )  # fmt: skip
    return cls(result.path, spec, device=adapter.device, batch_sizes=result.key.batch_sizes, **options)
