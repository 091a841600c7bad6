"""Export, engine build and cache lookup, chained: what `fastgen export` and the onnxruntime /
tensorrt backends call. Each step finds its output in the cache first and builds only on a miss.

The ONNX graph is exported in the denoiser's dtype (the `dtype` the model was loaded with); an
ONNX file does not depend on batch sizes (its batch axis is dynamic) or on the GPU. An engine is
built from that ONNX file with the matching precision flag, one shape profile, for one GPU kind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from fastgen.backends.spec import IOSpec, check_batch_sizes
from fastgen.export.cache import (
    ExportCache,
    ExportKey,
    _sha,
    compute_capability,
    config_hash,
    library_versions,
    weights_fingerprint,
)
from fastgen.export.onnx_export import (
    DEFAULT_OPSET,
    ONNX_FILE,
    export_onnx,
    max_relative_difference,
    module_dtype,
    parity_tolerance,
    verify_onnx,
)
from fastgen.export.settings import denoiser_settings
from fastgen.export.tensorrt_build import PLAN_FILE, build_engine, import_tensorrt

log = logging.getLogger(__name__)

FORMATS = ("onnx", "tensorrt")


@dataclass(frozen=True)
class ExportResult:
    path: Path  # model.onnx or model.plan
    key: ExportKey
    built: bool  # False: found in the cache


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def onnx_key(denoiser: nn.Module, spec: IOSpec, *, model: str, exporter: str) -> ExportKey:
    """Everything the ONNX export of `denoiser` depends on. The export itself takes its opset
    from the key, so the two cannot disagree."""
    packages = ("onnx", "onnxscript") if exporter == "dynamo" else ("onnx",)
    return ExportKey(
        model=_model_id(model),
        format="onnx",
        family=spec.family,
        config_hash=config_hash(denoiser),
        weights=weights_fingerprint(denoiser),
        dtype=_dtype_name(module_dtype(denoiser)),
        io_spec=_sha(spec.as_dict())[:16],
        exporter=exporter,
        versions=library_versions(*packages),
        settings=denoiser_settings(denoiser),
        opset=DEFAULT_OPSET,
    )


def engine_key(source: ExportKey, *, batch_sizes: tuple[int, int, int], device: torch.device | str) -> ExportKey:
    versions = {**source.versions, **library_versions("tensorrt")}
    return replace(
        source, format="tensorrt", versions=versions, batch_sizes=check_batch_sizes(batch_sizes),
        compute_capability=compute_capability(device),
    )  # fmt: skip


def _model_id(model: str | Path) -> str:
    """Local folders by absolute path (two folders named `unet` differ); hub ids as given."""
    path = Path(model)
    return str(path.resolve()) if path.is_dir() else str(model)


def ensure_onnx(
    denoiser: nn.Module,
    spec: IOSpec,
    *,
    model: str | Path,
    cache: ExportCache,
    exporter: str = "dynamo",
    verify: bool = True,
) -> ExportResult:
    """The cached ONNX export of `denoiser`, exported on a miss and, with `verify`, checked
    against torch with ONNX Runtime. An export cached unverified (made for a TensorRT engine,
    which is verified itself and needs no ONNX Runtime) is verified when first asked for."""
    key = onnx_key(denoiser, spec, model=str(model), exporter=exporter)
    found = cache.lookup(key)
    if found is not None:
        log.info("ONNX export found in the cache: %s", found)
        if verify and not _verified(found):
            cache.record(found, parity_max_rel_diff=verify_onnx(found / ONNX_FILE, denoiser, spec))
        return ExportResult(found / ONNX_FILE, key, built=False)

    def build(folder: Path) -> dict:
        facts = export_onnx(denoiser, spec, folder / ONNX_FILE, exporter=exporter, opset=key.opset)
        if verify:
            facts["parity_max_rel_diff"] = verify_onnx(folder / ONNX_FILE, denoiser, spec)
        return facts

    log.info("exporting %s to ONNX (%s exporter)", model, exporter)
    folder = cache.build(key, build)
    return ExportResult(folder / ONNX_FILE, key, built=True)


def engine_source(denoiser: nn.Module, spec: IOSpec, *, model: str | Path, cache: ExportCache, exporter: str):
    """The ONNX export an engine is built from, unverified: the engine itself is verified against
    torch, so this step needs no ONNX Runtime (the `tensorrt` extra does not install it) and
    takes any dtype TensorRT builds, bf16 included, which ONNX Runtime would refuse. A failure
    after it (engine build or verification) leaves the export cached for the next try."""
    return ensure_onnx(denoiser, spec, model=model, cache=cache, exporter=exporter, verify=False)


def engine_device(denoiser: nn.Module) -> torch.device:
    """The CUDA device an engine for `denoiser` is built on; refuses any other."""
    device = next(denoiser.parameters()).device
    if device.type != "cuda":
        raise ValueError(f"TensorRT engines are built for a CUDA device; the model is on {device} (use device='cuda')")
    return device


def ensure_engine(
    denoiser: nn.Module,
    spec: IOSpec,
    *,
    model: str | Path,
    cache: ExportCache,
    batch_sizes: tuple[int, int, int],
    exporter: str = "dynamo",
    any_covering_profile: bool = False,
    verify: bool = True,
) -> ExportResult:
    """The cached TensorRT engine of `denoiser` for `batch_sizes`, built on a miss (from the
    cached ONNX export, made first if needed). With `any_covering_profile`, any cached engine
    whose profile covers the optimum batch size is reused."""
    import_tensorrt("building a TensorRT engine")  # fail before a long ONNX export
    device = engine_device(denoiser)
    source = onnx_key(denoiser, spec, model=str(model), exporter=exporter)
    key = engine_key(source, batch_sizes=batch_sizes, device=device)
    found = cache.lookup(key) or (cache.find_engine(key, batch_sizes[1]) if any_covering_profile else None)
    found_key = None if found is None else cache.key_of(found)
    if found_key is not None:
        log.info("TensorRT engine found in the cache: %s", found)
        if verify and not _verified(found):
            # built with verify=False: checked now, once, before it is ever used verified
            worst = verify_engine(found / PLAN_FILE, denoiser, spec, found_key.batch_sizes, cached=True)
            cache.record(found, parity_max_rel_diff=worst)
        return ExportResult(found / PLAN_FILE, found_key, built=False)
    onnx = engine_source(denoiser, spec, model=model, cache=cache, exporter=exporter)
    timing = cache.root / f"timing-{key.compute_capability}-trt{key.versions['tensorrt']}.cache"

    def build(folder: Path) -> dict:
        facts = build_engine(
            onnx.path,
            folder / PLAN_FILE,
            spec,
            batch_sizes=key.batch_sizes,
            dtype=module_dtype(denoiser),
            timing_cache=timing,
        )
        if verify:
            facts["parity_max_rel_diff"] = verify_engine(folder / PLAN_FILE, denoiser, spec, key.batch_sizes)
        return facts

    folder = cache.build(key, build)
    return ExportResult(folder / PLAN_FILE, key, built=True)


def _verified(folder: Path) -> bool:
    """Whether the export in `folder` was checked against torch (at build, or on a later hit)."""
    return "parity_max_rel_diff" in _read_meta(folder)


def _read_meta(folder: Path) -> dict:
    """An export's meta.json; empty when missing or unreadable."""
    return ExportCache.meta(folder) or {}


def verify_engine(
    plan: Path, denoiser: nn.Module, spec: IOSpec, batch_sizes: tuple[int, int, int], *, cached: bool = False
) -> float:
    """Engine vs torch on seeded inputs at the profile's min and max batch sizes. `cached`: the
    engine is already in the cache (built unverified), where a failure leaves it."""
    from fastgen.backends.tensorrt_backend import TensorRTBackend

    device, dtype = next(denoiser.parameters()).device, module_dtype(denoiser)
    backend = TensorRTBackend(plan, spec, device=device, batch_sizes=batch_sizes)
    worst = 0.0
    for seed, batch in enumerate(sorted({batch_sizes[0], batch_sizes[2]})):
        inputs = spec.dummy_inputs(batch, dtype=dtype, device=device, seed=200 + seed)
        with torch.no_grad():
            want = denoiser(*inputs).float()
        worst = max(worst, max_relative_difference(backend(*inputs), want))  # inf on NaN output
    tolerance = parity_tolerance(dtype, gpu=True)
    if not worst <= tolerance:
        fate = (
            f"it was built unverified and is not used; delete {plan.parent} to rebuild it"
            if cached
            else "the engine was not cached"
        )
        raise RuntimeError(
            f"TensorRT engine {plan} differs from torch: max relative difference {worst:.3g} > "
            f"{tolerance:.3g}; {fate}. Try dtype fp32, or report the model"
        )
    return worst


def export_model(
    adapter,
    *,
    format: str,
    batch_sizes: tuple[int, int, int] = (1, 64, 64),
    out: str | Path | None = None,
    exporter: str = "dynamo",
    verify: bool = True,
) -> ExportResult:
    """Export an adapter's denoiser as `onnx` or as a `tensorrt` engine into the cache at `out`
    (default cache folder when None); a second call with the same inputs builds nothing."""
    from fastgen.backends.spec import adapter_spec

    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    spec, cache = adapter_spec(adapter), ExportCache(out)
    common = {"model": adapter.name, "cache": cache, "exporter": exporter, "verify": verify}
    if format == "onnx":
        return ensure_onnx(adapter.denoiser, spec, **common)
    return ensure_engine(adapter.denoiser, spec, batch_sizes=check_batch_sizes(batch_sizes), **common)
