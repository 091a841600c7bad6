"""Chunks of a batch on worker processes, one CPU core each.

The torch backend's `threads` option runs chunks on threads of this process, and a compiled
graph takes the GIL back after every kernel, so the threads wait on each other.
`processes=N` sends each chunk to one of N processes instead: on the embedded model, 2 workers
ran 5,485 whole evaluations/s against 4,993 for 2 threads (`bench/results/cpu_chunks.jsonl`).

Each worker gets the prepared module once, at start (its weights travel through shared
memory), and builds the callables it serves, compiled when the backend compiles. After that a
call moves only tensors, through shared-memory buffers that are allocated once and grown when
a larger chunk comes: the parent copies a chunk's inputs in, the worker writes its output back.

With a shared prefix (`rows`), the rows are visited in order of their distinct input, so every
worker needs one contiguous range of distinct inputs: it runs the prefix on that range itself,
gathers per row and runs the suffix. Only the distinct inputs travel, not the gathered state.

Workers are started with `spawn` (a forked copy of a process that has run torch kernels can
deadlock on their thread pools); so, as for any `multiprocessing` code, a script that uses
`processes=` must create the classifier under `if __name__ == "__main__":`. Workers stop when
the backend is closed or collected, and when the parent process dies however it dies (on Linux the
kernel signals them; everywhere they notice their parent is gone within `_PARENT_POLL_SECONDS`
while idle). Ctrl-C is the parent's to handle: workers ignore SIGINT, so one message is printed.

A call returns or raises only once every worker has answered it, so a failed chunk leaves the
pool idle and its shared buffers in step for the next call.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import queue
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

log = logging.getLogger(__name__)

# How long to wait for a worker's answer before checking that every worker is still alive.
_POLL_SECONDS = 1.0
# How long an idle worker waits for a request before checking that its parent is still alive.
_PARENT_POLL_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def chunk_bounds(rows: int, n: int) -> list[tuple[int, int]]:
    """(first, end) of up to `n` equal consecutive chunks of `rows` rows."""
    size = -(-rows // n)
    return [(i, min(rows, i + size)) for i in range(0, rows, size)]


class _SharedBuffers:
    """Named shared-memory byte buffers; `put` copies a tensor in, growing its buffer (and
    returning the new one, to be sent to the other side) when it is too small."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}

    def put(self, name: str, value: torch.Tensor) -> tuple[str, torch.dtype, tuple[int, ...], torch.Tensor | None]:
        value = value.contiguous()
        nbytes = value.numel() * value.element_size()
        grown = None
        if name not in self.buffers or self.buffers[name].numel() < nbytes:
            grown = self.buffers[name] = torch.empty(max(nbytes, 1), dtype=torch.uint8).share_memory_()
        self.view(name, value.dtype, tuple(value.shape)).copy_(value)
        return name, value.dtype, tuple(value.shape), grown

    def take(self, name: str, dtype: torch.dtype, shape: tuple[int, ...], grown: torch.Tensor | None) -> torch.Tensor:
        if grown is not None:
            self.buffers[name] = grown
        return self.view(name, dtype, shape)

    def view(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        count = 1
        for side in shape:
            count *= side
        nbytes = count * torch.empty((), dtype=dtype).element_size()
        return self.buffers[name][:nbytes].view(dtype).view(shape)


def _entries(module: nn.Module, compile_kwargs: dict[str, Any] | None) -> dict[str, Callable]:
    """What a worker serves: the whole denoiser, and prefix + gather + suffix when the module
    splits off a shared prefix."""
    forward: Callable = module
    split = module.split if module.shares_prefix else None
    if compile_kwargs is not None:
        forward = torch.compile(module, **compile_kwargs)
    entries = {"forward": forward}
    if split is not None:
        prefix, suffix = split.prefix, split.suffix
        if compile_kwargs is not None:
            suffix = torch.compile(suffix, **compile_kwargs)
            # the number of distinct inputs changes from call to call: a symbolic size
            prefix = torch.compile(prefix, **{**compile_kwargs, "dynamic": True})

        def shared(x_t, t, cond, rows):
            return suffix(cond, *prefix(x_t, t).take(rows).flat())

        entries["shared"] = shared
    return entries


def _die_with_parent(parent_pid: int, use_signal: bool) -> None:
    """Have Linux send this worker SIGTERM when its parent dies. The signal comes when the parent
    *thread* that started the worker ends, so it is asked for only when that was the main thread;
    the parent-pid poll in `_next_request` covers the rest (and other systems)."""
    if use_signal and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # no usable libc: the poll still applies
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was asked for
        os._exit(0)


def _next_request(requests, parent_pid: int):
    """The next request; the worker exits once its parent is gone (reparented workers would
    otherwise wait on their queue forever)."""
    while True:
        try:
            return requests.get(timeout=_PARENT_POLL_SECONDS)
        except queue.Empty:
            if os.getppid() != parent_pid:
                os._exit(0)  # no cleanup to wait for: nobody reads the answers any more


def _serve(
    index: int,
    module: nn.Module,
    compile_kwargs: dict[str, Any] | None,
    requests,
    responses,
    parent_pid: int,
    death_signal: bool,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to report
    _die_with_parent(parent_pid, death_signal)
    torch.set_num_threads(1)
    entries = _entries(module.eval(), compile_kwargs)
    inputs, outputs = _SharedBuffers(), _SharedBuffers()
    while True:
        request = _next_request(requests, parent_pid)
        if request is None:
            return
        call, entry, described = request
        try:
            values = [inputs.take(*d) for d in described]
            with torch.inference_mode():
                output = entries[entry](*values)
            responses.put((call, index, outputs.put("out", output)))
        except Exception as error:  # sent back and raised by the caller
            responses.put((call, index, RuntimeError(f"worker process {index}: {type(error).__name__}: {error}")))


class WorkerProcesses:
    """N single-threaded worker processes, each serving `module` on chunks of a batch."""

    def __init__(self, n: int, module: nn.Module, *, compile_kwargs: dict[str, Any] | None = None):
        context = mp.get_context("spawn")
        self.n = n
        self._responses = context.Queue()
        self._requests = [context.Queue() for _ in range(n)]
        # The parent's pid and whether the kernel may signal its death (see `_die_with_parent`).
        parent = (os.getpid(), threading.current_thread() is threading.main_thread())
        self._processes = [
            context.Process(
                target=_serve, args=(i, module, compile_kwargs, self._requests[i], self._responses, *parent),
                name=f"fastgen-worker-{i}", daemon=True,
            )
            for i in range(n)
        ]  # fmt: skip
        with _sigint_ignored():
            for process in self._processes:
                process.start()
        self._inputs = [_SharedBuffers() for _ in range(n)]
        self._outputs = [_SharedBuffers() for _ in range(n)]
        self._calls = itertools.count()
        self._finalizer = weakref.finalize(self, _stop, self._requests, self._processes)

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in self._processes if p.pid is not None)

    def _call(self, entry: str, chunks: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
        """Each chunk on its worker; waits for every answer, then raises the first error if any."""
        call = next(self._calls)
        for worker, chunk in enumerate(chunks):
            described = [self._inputs[worker].put(f"in{i}", v) for i, v in enumerate(chunk)]
            self._requests[worker].put((call, entry, described))
        outputs: dict[int, torch.Tensor] = {}
        errors: dict[int, Exception] = {}
        while len(outputs) + len(errors) < len(chunks):
            answer_call, worker, answer = self._next_answer()
            if isinstance(answer, Exception):
                if answer_call == call:
                    errors[worker] = answer
                continue
            # Even an answer to an abandoned call (one interrupted by Ctrl-C) may carry the
            # worker's grown output buffer, which every later answer refers to.
            output = self._outputs[worker].take(*answer)
            if answer_call == call:
                outputs[worker] = output.clone()
        if errors:
            raise errors[min(errors)]
        return [outputs[i] for i in range(len(chunks))]

    def _next_answer(self) -> tuple[int, int, Any]:
        """The next (call, worker, answer); raises once a worker has died, which would never answer."""
        while True:
            try:
                return self._responses.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                dead = [p.name for p in self._processes if not p.is_alive()]
                if dead:
                    codes = [p.exitcode for p in self._processes]
                    raise RuntimeError(
                        f"{', '.join(dead)} stopped (exit codes {codes}); the batch cannot finish. Rerun, "
                        "or split batches with threads= instead of processes="
                    ) from None

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`forward` for whole rows, `shared` for distinct inputs and their `rows`."""
        return self.forward(x_t, t, cond) if rows is None else self.shared(x_t, t, cond, rows)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The whole denoiser on equal row chunks, one per worker."""
        chunks = [(x_t[a:b], t[a:b], cond[a:b]) for a, b in chunk_bounds(x_t.shape[0], self.n)]
        return torch.cat(self._call("forward", chunks))

    def shared(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Output row r = the denoiser on (x_t[rows[r]], t[rows[r]], cond[r]); each worker runs
        the prefix on its own contiguous range of distinct inputs."""
        order = torch.argsort(rows, stable=True)
        sorted_rows = rows[order]
        chunks = []
        for a, b in chunk_bounds(rows.shape[0], self.n):
            low, high = int(sorted_rows[a]), int(sorted_rows[b - 1]) + 1
            # One distinct input would be a size the compiled prefix specialises on (a second
            # compile): send it twice.
            span = [low, low] if high - low == 1 else slice(low, high)
            chunks.append((x_t[span], t[span], cond[order[a:b]], sorted_rows[a:b] - low))
        out = torch.cat(self._call("shared", chunks))
        return torch.empty_like(out).index_copy_(0, order, out)

    def close(self) -> None:
        self._finalizer()


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while workers start: an ignored signal stays ignored across exec, so a
    Ctrl-C while they import torch (seconds) does not print a traceback from each of them. Only
    the main thread may set handlers; elsewhere the workers ignore SIGINT once started."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop(requests, processes) -> None:
    for request_queue, process in zip(requests, processes):
        if process.is_alive():
            request_queue.put(None)
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
