"""A CUDA stream of its own for a runtime outside torch (ONNX Runtime, TensorRT).

Such a runtime is given a stream handle. torch's default stream has the handle 0, which ONNX
Runtime reads as "no stream given" (it then runs on streams of its own, not ordered after
torch's writes of the inputs), and on which TensorRT adds synchronisations and warns. So each of
these backends owns a non-default stream, made to wait for torch's current stream before a run
and waited on by it after: inputs are written before the run reads them, and the output is
complete before torch reads it, with no host synchronisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from fastgen.kernels.devices import device_guard


def check_stream_handle(handle: int) -> str:
    """`handle` as the string ONNX Runtime's `user_compute_stream` takes; 0 (the default stream,
    which ORT would ignore) is refused."""
    if int(handle) == 0:
        raise ValueError("the default CUDA stream (handle 0) cannot be handed to another runtime; use a SideStream")
    return str(int(handle))


class SideStream:
    """A dedicated stream on `device`, ordered with torch's current stream around each run."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        with device_guard(self.device):
            self.stream = torch.cuda.Stream(self.device)

    @property
    def handle(self) -> int:
        return self.stream.cuda_stream

    @contextlib.contextmanager
    def ordered(self) -> Iterator[torch.cuda.Stream]:
        """Run the body on this stream, after torch's pending work; torch's stream then waits
        for it. Entered with the device made current (launches go to the current device)."""
        with device_guard(self.device):
            current = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(current)
            try:
                yield self.stream
            finally:
                current.wait_stream(self.stream)
