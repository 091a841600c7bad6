"""The ONNX Runtime backend: an exported denoiser run by an `InferenceSession`.

Execution providers are taken in the order TensorRT EP, CUDA EP, CPU EP from what the installed
build offers (`onnxruntime` has CPU only; `onnxruntime-gpu`, the `onnx-gpu` extra, adds CUDA and
TensorRT). On the CPU, torch tensors are handed over as zero-copy numpy views. On a GPU, inputs
and the output are bound in place with IO binding, and ORT runs on a stream of the backend's own
(`SideStream`), ordered after torch's current stream, so no copy and no host synchronisation is
needed. Which path runs is decided from the providers the session really uses: ORT only logs a
GPU provider that fails to load (a missing CUDA or cuDNN library) and falls back to the CPU.

The GPU paths (CUDA / TensorRT EP, IO binding) are written against ONNX Runtime's documented API
but have not been run: no `onnxruntime-gpu` was available where this was developed and tested.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastgen.backends.base import Backend
from fastgen.backends.spec import OUTPUT_NAME, IOSpec
from fastgen.backends.streams import SideStream, check_stream_handle
from fastgen.kernels.devices import device_guard
from fastgen.optional import require

log = logging.getLogger(__name__)

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ONNX_TYPES = {
    "tensor(float)": (torch.float32, np.float32),
    "tensor(float16)": (torch.float16, np.float16),
    "tensor(int64)": (torch.int64, np.int64),
    "tensor(int32)": (torch.int32, np.int32),
}


def choose_providers(device: torch.device | str, available: list[str] | None = None) -> list[str]:
    """TensorRT EP, CUDA EP, CPU EP: those of them the installed onnxruntime offers, in that
    order; the CPU EP alone for a CPU device."""
    device = torch.device(device)
    if available is None:
        available = require("onnxruntime", extra="onnx", purpose="the onnxruntime backend").get_available_providers()
    order = PROVIDER_ORDER if device.type == "cuda" else ("CPUExecutionProvider",)
    chosen = [p for p in order if p in available]
    if not chosen:
        raise RuntimeError(f"onnxruntime offers none of {order} (it has {available}); reinstall onnxruntime")
    if device.type == "cuda" and chosen == ["CPUExecutionProvider"]:
        log.warning(
            "the model is on %s but the installed onnxruntime has no GPU provider: the denoiser "
            "will run on the CPU; for GPU inference: pip install 'fastgen[onnx-gpu]'",
            device,
        )
    return chosen


def uses_io_binding(device: torch.device | str, active_providers: list[str]) -> bool:
    """IO binding on the GPU only when the session really runs on a GPU provider."""
    return (
        torch.device(device).type == "cuda" and bool(active_providers) and active_providers[0] != "CPUExecutionProvider"
    )


def dropped_providers(requested: list[str], active: list[str]) -> list[str]:
    """Providers asked for that the session does not use (ORT fell back without raising)."""
    return [p for p in requested if p not in active]


class OnnxRuntimeBackend(Backend):
    """Runs `onnx_path` with ONNX Runtime; called like the torch denoiser it was exported from."""

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        spec: IOSpec,
        *,
        device: torch.device | str = "cpu",
        providers: list[str] | None = None,
        batch_sizes: tuple[int, int, int] | None = None,
        trt_cache_dir: str | Path | None = None,
        trt_fp16: bool = False,
        threads: int | None = None,
    ):
        ort = require("onnxruntime", extra="onnx", purpose="the onnxruntime backend")
        self.path = Path(onnx_path)
        requested = list(providers) if providers else choose_providers(device)
        gpu_asked = torch.device(device).type == "cuda" and any(p != "CPUExecutionProvider" for p in requested)
        self._side = SideStream(device) if gpu_asked else None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings repeat what the checker said
        # One pool of threads the size torch uses, so OMP_NUM_THREADS caps both.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        trt = {"batch_sizes": batch_sizes, "cache_dir": trt_cache_dir, "fp16": trt_fp16}
        stream = self._side.handle if self._side is not None else None
        provider_options = [self._provider_options(p, device, spec, stream=stream, **trt) for p in requested]
        self.session = ort.InferenceSession(
            str(self.path), options, providers=requested, provider_options=provider_options
        )
        self.requested_providers = requested
        self.providers = list(self.session.get_providers())
        dropped = dropped_providers(requested, self.providers)
        if dropped:
            log.warning(
                "onnxruntime could not use %s for %s (a missing CUDA/cuDNN/TensorRT library is the usual cause; "
                "its own log says which) and runs it with %s instead",
                dropped, self.path.name, self.providers,
            )  # fmt: skip
        self.on_gpu = uses_io_binding(device, self.providers)
        self.io_types = {i.name: _onnx_type(i.type, i.name) for i in self.session.get_inputs()}
        self.out_type = _onnx_type(self.session.get_outputs()[0].type, OUTPUT_NAME)
        super().__init__(spec, device=device, dtype=self.io_types["x_t"][0])
        missing = set(spec.input_names) - set(self.io_types)
        if missing:
            raise ValueError(f"{self.path} has no input(s) {sorted(missing)}; re-export it with fastgen export")

    @staticmethod
    def _provider_options(
        provider, device, spec: IOSpec, *, stream: int | None, batch_sizes, cache_dir, fp16: bool
    ) -> dict[str, Any]:
        device = torch.device(device)
        if provider == "CPUExecutionProvider" or device.type != "cuda":
            return {}
        index = device.index if device.index is not None else torch.cuda.current_device()
        options: dict[str, Any] = {"device_id": index, "user_compute_stream": check_stream_handle(stream or 0)}
        if provider == "CUDAExecutionProvider":
            return options
        if fp16:
            options["trt_fp16_enable"] = True  # fp16 graphs: let TensorRT pick fp16 kernels
        if cache_dir is not None:
            options.update(
                trt_engine_cache_enable=True, trt_timing_cache_enable=True, trt_engine_cache_path=str(cache_dir)
            )
        if batch_sizes is not None:
            profile = spec.shape_profile(*batch_sizes)
            for i, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
                options[key] = ",".join(f"{n}:{'x'.join(map(str, shapes[i]))}" for n, shapes in profile.items())
        return options

    def _run(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        feed = {
            name: value.to(self.io_types[name][0]).contiguous()
            for name, value in zip(self.spec.input_names, (x_t, t, cond))
        }
        if self.on_gpu:
            return self._run_bound(feed)
        arrays = {name: value.detach().cpu().numpy() for name, value in feed.items()}
        out = self.session.run([OUTPUT_NAME], arrays)[0]
        return torch.from_numpy(out).to(self.device)

    def _run_bound(self, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inputs and output bound in place on the GPU (no host round trip), run on the backend's
        own stream after torch's writes, with the model's device current."""
        with device_guard(self.device):
            binding = self.session.io_binding()
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            for name, value in feed.items():
                binding.bind_input(name, "cuda", index, self.io_types[name][1], tuple(value.shape), value.data_ptr())
            batch = feed["x_t"].shape[0]
            out = torch.empty(self.spec.output.full_shape(batch), dtype=self.out_type[0], device=self.device)
            binding.bind_output(OUTPUT_NAME, "cuda", index, self.out_type[1], tuple(out.shape), out.data_ptr())
            with self._side.ordered():
                self.session.run_with_iobinding(binding)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(), "providers": self.providers, "requested_providers": self.requested_providers,
            "io_binding": self.on_gpu,
        }  # fmt: skip


def _onnx_type(type_name: str, tensor: str) -> tuple[torch.dtype, Any]:
    if type_name not in _ONNX_TYPES:
        raise ValueError(
            f"ONNX input/output {tensor!r} has type {type_name}, which the onnxruntime backend does "
            "not take (bfloat16 has few ONNX Runtime kernels); export with dtype fp32 or fp16"
        )
    return _ONNX_TYPES[type_name]
