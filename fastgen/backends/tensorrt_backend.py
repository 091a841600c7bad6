"""The TensorRT backend: a serialized engine run with torch tensors as its buffers.

Inputs are cast to the engine's I/O dtypes and made contiguous, their device pointers are set as
tensor addresses, the output is allocated by torch, and the engine runs on a stream of the
backend's own (`SideStream`: TensorRT adds synchronisations on the default stream), ordered after
torch's current stream and waited on by it, with the model's device made current, so the result
is ordered with torch's work without any host synchronisation.
Batches above the profile's max are split by the base class; batches below its min are padded.

Written against the TensorRT 10 API; not run here (no TensorRT where this was developed and
tested). What can run without TensorRT is tested: the cache, and the error when it is missing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from fastgen.backends.base import Backend
from fastgen.backends.spec import OUTPUT_NAME, IOSpec
from fastgen.backends.streams import SideStream
from fastgen.kernels.devices import device_guard
from fastgen.optional import require

log = logging.getLogger(__name__)


def _torch_dtype(trt: Any, trt_dtype: Any) -> torch.dtype:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
    }
    if trt_dtype not in table:
        raise ValueError(f"engine tensor type {trt_dtype} is not one fastgen binds; rebuild with fastgen export")
    return table[trt_dtype]


def import_tensorrt(purpose: str = "the tensorrt backend") -> Any:
    return require("tensorrt", extra="tensorrt", purpose=purpose)


class TensorRTBackend(Backend):
    """Runs a TensorRT engine (`model.plan`) built by `fastgen export --format tensorrt`."""

    name = "tensorrt"

    def __init__(
        self,
        plan_path: str | Path,
        spec: IOSpec,
        *,
        device: torch.device | str,
        batch_sizes: tuple[int, int, int],
    ):
        trt = import_tensorrt()
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(
                f"the tensorrt backend runs on a CUDA device, not {device}; use backend='onnxruntime' or 'torch'"
            )
        self.path = Path(plan_path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(device):
            # The runtime is kept: engines must not outlive the runtime that made them.
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise RuntimeError(
                    f"TensorRT could not load {self.path}: it was built for another GPU or TensorRT "
                    "version, or is damaged; delete its folder and run fastgen export again"
                )
            self.context = self.engine.create_execution_context()
        self.io_dtypes = {
            name: _torch_dtype(trt, self.engine.get_tensor_dtype(name)) for name in (*spec.input_names, OUTPUT_NAME)
        }
        super().__init__(spec, device=device, dtype=self.io_dtypes["x_t"])
        self.batch_sizes = batch_sizes
        self.max_batch = batch_sizes[2]
        self._side = SideStream(device)

    def _run(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        with device_guard(self.device):  # the context and its stream belong to the model's GPU
            return self._run_on_device(x_t, t, cond)

    def _run_on_device(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        batch, low = x_t.shape[0], self.batch_sizes[0]
        inputs = (x_t, t, cond)
        if batch < low:  # below the profile: pad with copies of the last row, drop them after
            inputs = tuple(torch.cat([v, v[-1:].expand(low - batch, *v.shape[1:])]) for v in inputs)
        # Kept referenced until the call returns: the engine reads these addresses.
        bound = [v.to(self.io_dtypes[n]).contiguous() for n, v in zip(self.spec.input_names, inputs)]
        for name, value in zip(self.spec.input_names, bound):
            self.context.set_input_shape(name, tuple(value.shape))
            self.context.set_tensor_address(name, value.data_ptr())
        out_shape = tuple(self.context.get_tensor_shape(OUTPUT_NAME))
        out = torch.empty(out_shape, dtype=self.io_dtypes[OUTPUT_NAME], device=self.device)
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        with self._side.ordered() as stream:
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run {self.path} at batch {bound[0].shape[0]}")
        return out[:batch]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "batch_sizes": self.batch_sizes, "engine": str(self.path)}
