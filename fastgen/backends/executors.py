"""How the torch backend runs one prepared forward call on a batch: the interchangeable
executors behind `TorchBackend._run`.

* `Direct`: call it (cloning the output when inductor's CUDA graphs own the buffer).
* `GraphReplay`: capture one CUDA graph per input shape, replay it with copied-in inputs.
* `Threads`: split the batch into equal chunks on N threads with one intra-op thread each.

Worker processes (`fastgen.backends.worker_processes`) run the whole model, prefix included, in
other processes, so they take the raw call rather than a prepared forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from fastgen.backends.worker_processes import chunk_bounds
from fastgen.kernels.devices import device_guard

log = logging.getLogger(__name__)

Forward = Callable[..., torch.Tensor]


class Executor:
    """Runs `forward(*inputs)` for one batch and returns an output the caller may keep."""

    def __call__(self, forward: Forward, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError


class Direct(Executor):
    def __init__(self, *, clone_outputs: bool = False):
        self.clone_outputs = clone_outputs

    def __call__(self, forward: Forward, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out = forward(*inputs)
        return out.clone() if self.clone_outputs else out


class GraphReplay(Executor):
    """One captured CUDA graph per (forward, input shapes), sharing one memory pool."""

    def __init__(self):
        self._graphs: dict[tuple, _CapturedGraph] = {}
        self._pool = torch.cuda.graph_pool_handle()

    def __call__(self, forward: Forward, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        key = (id(forward), *(tuple(v.shape) for v in inputs))
        graph = self._graphs.get(key)
        if graph is None:
            log.info("capturing a CUDA graph for batch %d", inputs[0].shape[0])
            graph = self._graphs[key] = _CapturedGraph(forward, inputs, self._pool)
        return graph(*inputs)


class _CapturedGraph:
    """One CUDA graph of the module at one batch size, replayed with copied-in inputs."""

    def __init__(self, module: Forward, inputs: tuple[torch.Tensor, ...], pool: Any):
        # Streams, capture and replay belong to the current device: make it the inputs' device.
        self.device = inputs[0].device
        with device_guard(self.device):
            self.inputs = tuple(v.clone() for v in inputs)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # lazy initialisation and cuDNN autotuning stay out of the graph
                    module(*self.inputs)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.output = module(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with device_guard(self.device):
            for buffer, value in zip(self.inputs, inputs):
                buffer.copy_(value)
            self.graph.replay()
            return self.output.clone()  # the next replay overwrites the static output


class Threads(Executor):
    """`n` threads, each with one intra-op thread, that run equal chunks of a batch at once.

    The first call runs its chunks one after another: a compiled module compiles on its first
    call of each shape, and two threads must not compile the same graph side by side.
    """

    def __init__(self, n: int):
        from concurrent.futures import ThreadPoolExecutor

        self.n = n
        # torch.set_num_threads in a worker sets that thread's own OpenMP team size only.
        self._pool = ThreadPoolExecutor(
            n, thread_name_prefix="fastgen-chunk", initializer=torch.set_num_threads, initargs=(1,)
        )
        self._seen_shapes: set[tuple[int, ...]] = set()

    def __call__(self, forward: Forward, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        bounds = chunk_bounds(inputs[0].shape[0], self.n)

        def run(first: int, end: int) -> torch.Tensor:
            with torch.inference_mode():
                return forward(*(v[first:end] for v in inputs))

        shapes = tuple(end - first for first, end in bounds)
        if shapes not in self._seen_shapes:
            self._seen_shapes.add(shapes)
            return torch.cat([self._pool.submit(run, *b).result() for b in bounds])
        futures = [self._pool.submit(run, *b) for b in bounds]
        return torch.cat([f.result() for f in futures])

    def __del__(self):
        self._pool.shutdown(wait=False)
