"""Build a TensorRT engine from an exported ONNX file with the TensorRT Python API.

One optimization profile spans the batch range (MIN, OPT, MAX) for every input; the precision
flag follows the dtype (the ONNX graph is exported in that dtype too); a timing cache shared by
all builds on one GPU kind and TensorRT version makes rebuilds of similar graphs fast.

Written against the TensorRT 10 API (explicit batch only, INT64 inputs, BF16). It has not been
run: TensorRT could not be installed where this was developed and tested. The cache logic around
it (keys, atomic publishing) and the error when TensorRT is missing are tested.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from fastgen.backends.spec import IOSpec
from fastgen.backends.tensorrt_backend import import_tensorrt
from fastgen.export.cache import atomic_write_bytes

log = logging.getLogger(__name__)

PLAN_FILE = "model.plan"


def precision_flags(trt: Any, dtype: torch.dtype) -> list[Any]:
    """Builder flags for a dtype: fp32 needs none; TensorRT still picks TF32 where allowed."""
    if dtype == torch.float16:
        return [trt.BuilderFlag.FP16]
    if dtype == torch.bfloat16:
        return [trt.BuilderFlag.BF16]
    if dtype == torch.float32:
        return []
    raise ValueError(f"TensorRT engines are built in fp32, fp16 or bf16, not {dtype}")


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    spec: IOSpec,
    *,
    batch_sizes: tuple[int, int, int],
    dtype: torch.dtype,
    timing_cache: str | Path | None = None,
    workspace_bytes: int | None = None,
) -> dict[str, Any]:
    """Parse `onnx_path` (external weights next to it are found by the parser), build with one
    optimization profile over `batch_sizes`, and write the serialized engine to `plan_path`."""
    trt = import_tensorrt("building a TensorRT engine")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: every network is explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    for flag in precision_flags(trt, dtype):
        config.set_flag(flag)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in spec.shape_profile(*batch_sizes).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    log.info("building a TensorRT engine (%s, batch %s); this takes minutes", dtype, batch_sizes)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}; its log above says why")
    Path(plan_path).write_bytes(bytes(plan))
    if cache_path is not None:
        # Written atomically: concurrent builds may share the timing cache file.
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return {"tensorrt": trt.__version__, "plan_bytes": Path(plan_path).stat().st_size}
