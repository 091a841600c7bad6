"""`load_backend`: a backend for an adapter's denoiser, exporting or building its file first
when the cache has none. This is where the backends (which run files) meet the export steps
(which make them), so neither of those packages imports the other upward.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from fastgen.backends import BACKENDS, Backend
from fastgen.backends.spec import adapter_spec
from fastgen.export.cache import ExportCache
from fastgen.export.pipeline import ensure_engine, ensure_onnx
from fastgen.optional import require

# Options consumed by the export step rather than the backend itself.
EXPORT_OPTIONS = {"onnxruntime": {"exporter", "verify"}, "tensorrt": {"exporter", "verify", "batch_sizes"}}


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {name!r}")
    return BACKENDS[name]


def _check_options(name: str, cls: type[Backend], options: dict[str, Any]) -> None:
    fixed = {"self", "denoiser", "spec", "onnx_path", "plan_path", "device", "batch_sizes"}
    allowed = {p for p in inspect.signature(cls.__init__).parameters if p not in fixed}
    allowed |= EXPORT_OPTIONS.get(name, set())
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
    cls = backend_class(name)
    _check_options(name, cls, options)
    spec = adapter_spec(adapter)
    if name == "torch":
        return cls(adapter.denoiser, spec, **options)
    export = {k: options.pop(k) for k in ("exporter", "verify") if k in options}
    cache = ExportCache(export_dir)
    if name == "onnxruntime":
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
