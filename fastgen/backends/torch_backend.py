"""The PyTorch backend: the adapter's own module, prepared for speed.

Preparation happens once, in place (no weight copy, so a 3 GB UNet is not held twice):
PyTorch SDPA attention (or xformers when asked and installed, or plain matmul-softmax-matmul
"math" attention), fused QKV projections, and channels-last memory on CUDA. Then, optionally,
`torch.compile` and CUDA graphs. Both of those want one batch shape, so the backend asks the
engine to pad its last batch (`wants_fixed_batch`): a recompile or a new graph capture costs far
more than a few padded rows.

On CPU, `threads=N` splits every batch into N equal chunks run side by side on N worker threads
with one intra-op thread each, and `processes=N` sends them to N worker processes instead
(`fastgen.backends.worker_processes`: no GIL between them). A small model's operators are too
small to keep several cores busy from inside one operator; whole chunks on separate cores do.

Precision is the module's dtype, chosen when the model is loaded (`dtype=` of `from_pretrained`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from fastgen.backends.base import Backend
from fastgen.backends.executors import Direct, Executor, GraphReplay, Threads
from fastgen.backends.spec import IOSpec
from fastgen.optional import require

log = logging.getLogger(__name__)

ATTENTION = ("sdpa", "math", "xformers", "keep")
# Processors whose math the SDPA / fused processors reproduce exactly; others (added-KV,
# IP-adapter ...) are left alone.
_PLAIN_PROCESSORS = ("AttnProcessor", "AttnProcessor2_0", "FusedAttnProcessor2_0")


def _attention_modules(module: nn.Module) -> list[nn.Module]:
    from diffusers.models.attention_processor import Attention

    found = [m for m in module.modules() if isinstance(m, Attention)]
    return [m for m in found if type(m.processor).__name__ in _PLAIN_PROCESSORS]


def use_sdpa(module: nn.Module, *, fuse_qkv: bool) -> int:
    """Set PyTorch SDPA attention, with fused QKV (self-attention) / KV (cross-attention)
    projections when `fuse_qkv`; one matmul instead of three. Returns the modules changed."""
    from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

    changed = _attention_modules(module)
    for attn in changed:
        if fuse_qkv:
            if not getattr(attn, "fused_projections", False):
                attn.fuse_projections(fuse=True)
            attn.set_processor(FusedAttnProcessor2_0())
        else:
            attn.set_processor(AttnProcessor2_0())
    return len(changed)


def use_math_attention(module: nn.Module) -> int:
    """Diffusers' explicit attention (batched matmul, softmax, batched matmul). For sequences of a
    few dozen tokens with small heads it beats the fused SDPA kernels on CPU, and under
    `torch.compile` its softmax fuses with the surrounding elementwise work."""
    from diffusers.models.attention_processor import AttnProcessor

    changed = _attention_modules(module)
    for attn in changed:
        attn.set_processor(AttnProcessor())
    return len(changed)


def use_xformers(module: nn.Module) -> int:
    require("xformers", extra="xformers", purpose="attention='xformers'")
    changed = _attention_modules(module)
    for attn in changed:
        attn.set_use_memory_efficient_attention_xformers(True)
    return len(changed)


# Compile modes in which inductor captures CUDA graphs itself, on a CUDA device.
INDUCTOR_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_settings(
    *, compile: bool, cuda_graphs: bool, mode: str | None, backend: str, device: torch.device
) -> tuple[str | None, bool]:
    """(the compile mode to use, whether compiled outputs live in CUDA-graph buffers that the
    next call overwrites). `cuda_graphs=True` with compile means inductor's graphs, so it needs
    the inductor backend; a graph mode asked for without `cuda_graphs` still captures graphs."""
    if not compile:
        return mode, False
    if backend != "inductor":
        if cuda_graphs:
            raise ValueError(
                f"cuda_graphs=True with compile=True captures the graphs through inductor's compile modes, "
                f"and compile_backend={backend!r} takes no mode: use compile_backend='inductor', or "
                "compile=False with cuda_graphs=True (fastgen captures the graphs itself)"
            )
        if mode is not None:
            raise ValueError(f"compile_mode={mode!r} is an inductor setting; compile_backend={backend!r} takes none")
        return None, False
    if cuda_graphs:
        if mode not in (None, *INDUCTOR_GRAPH_MODES):
            raise ValueError(
                f"cuda_graphs=True with compile=True uses compile_mode 'reduce-overhead' or "
                f"'max-autotune' (inductor captures the graphs); got compile_mode={mode!r}"
            )
        mode = mode or "reduce-overhead"
    return mode, torch.device(device).type == "cuda" and mode in INDUCTOR_GRAPH_MODES


class TorchBackend(Backend):
    """`denoiser` (an adapter's module) in eager mode, compiled, and/or as CUDA graphs."""

    name = "torch"

    def __init__(
        self,
        denoiser: nn.Module,
        spec: IOSpec,
        *,
        attention: str = "sdpa",
        fuse_qkv: bool = True,
        channels_last: bool | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
        cuda_graphs: bool = False,
        freezing: bool | None = None,
        threads: int | None = None,
        processes: int | None = None,
        share_prefix: bool = True,
    ):
        param = next(denoiser.parameters())
        super().__init__(spec, device=param.device, dtype=param.dtype)
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, it is on {self.device}")
        for name, count in (("threads", threads), ("processes", processes)):
            if count is not None and (self.device.type != "cpu" or int(count) < 1):
                raise ValueError(
                    f"{name}={count!r} splits batches across CPU cores: it needs a CPU model and {name} >= 1"
                )
        if threads and processes:
            raise ValueError("threads= and processes= are two ways to split a batch across cores: pass one")
        self.module = denoiser.eval()
        self.attention, self.fuse_qkv = attention, fuse_qkv and attention == "sdpa"
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        self.compile, self.cuda_graphs = compile, cuda_graphs
        self.compile_mode, self.inductor_graphs = compile_settings(
            compile=compile, cuda_graphs=cuda_graphs, mode=compile_mode, backend=compile_backend, device=self.device
        )
        self.compile_backend = compile_backend
        # Freezing folds the weights into the compiled graph as constants, which lets inductor
        # pre-pack them for oneDNN on CPU; the weights must then not change, as in inference.
        self.freezing = (self.device.type == "cpu") if freezing is None else freezing
        self.threads = int(threads) if threads else None
        # The class-independent prefix runs eagerly, once per distinct input (a few rows per
        # batch); only the per-row suffix is compiled, captured or split across threads.
        self.shares_prefix = bool(share_prefix and self.module.shares_prefix)
        self.processes = int(processes) if processes else None
        self._prepare()
        self._worker_processes = None
        if self.processes:
            from fastgen.backends.worker_processes import WorkerProcesses

            self._worker_processes = WorkerProcesses(self.processes, self.module, compile_kwargs=self._compile_kwargs)
        self.wants_fixed_batch = compile or cuda_graphs
        self._executor = self._choose_executor()

    def _choose_executor(self) -> Executor:
        """How one prepared forward call runs: replayed from our own CUDA graphs (eager +
        cuda_graphs), split over chunk threads, or called directly."""
        if self.cuda_graphs and not self.compile:
            return GraphReplay()
        if self.threads and self.threads > 1:
            return Threads(self.threads)
        # Compiled with CUDA graphs, inductor owns the output buffers and the next replay
        # overwrites them: clone before handing them on.
        return Direct(clone_outputs=self.inductor_graphs)

    def _prepare(self) -> None:
        if self.attention == "sdpa":
            changed = use_sdpa(self.module, fuse_qkv=self.fuse_qkv)
        elif self.attention == "math":
            changed = use_math_attention(self.module)
        elif self.attention == "xformers":
            changed = use_xformers(self.module)
        else:
            changed = 0
        log.debug("attention %s (fused qkv %s) on %d modules", self.attention, self.fuse_qkv, changed)
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self._forward = self.module
        self._suffix = self.module.split.suffix if self.shares_prefix else None
        self._compile_kwargs = None
        if self.compile:
            mode, options = self.compile_mode, None
            if self.freezing and self.compile_backend == "inductor":
                # torch.compile takes a mode or options, not both: spell the mode out as options.
                from torch._inductor import list_mode_options

                options, mode = {**(list_mode_options(mode) if mode else {}), "freezing": True}, None
            self._compile_kwargs = {"backend": self.compile_backend, "dynamic": False}
            if self.compile_backend == "inductor":  # other backends reject inductor's mode/options
                self._compile_kwargs.update(mode=mode, options=options)
            self._forward = torch.compile(self.module, **self._compile_kwargs)
            if self.shares_prefix:
                self._suffix = torch.compile(self.module.split.suffix, **self._compile_kwargs)

    @torch.inference_mode()
    def _run(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        x_t = x_t.to(self.dtype)
        if cond.is_floating_point():
            cond = cond.to(self.dtype)
        if self._worker_processes is not None:  # they copy their chunks into shared buffers as they are
            return self._worker_processes(x_t, t, cond, rows)
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        if rows is None:
            return self._executor(self._forward, (x_t, t, cond))
        state = self.module.split.prefix(x_t, t).take(rows)
        return self._executor(self._suffix, (cond, *state.flat()))

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """Process ids of the worker processes (empty without `processes`)."""
        if self._worker_processes is None:
            return ()
        return self._worker_processes.pids

    def close(self) -> None:
        """Stops the worker processes, if any (they also stop when the backend is collected)."""
        if self._worker_processes is not None:
            self._worker_processes.close()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "attention": self.attention,
            "fuse_qkv": self.fuse_qkv,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "compile_mode": self.compile_mode,
            "compile_backend": self.compile_backend if self.compile else None,
            "cuda_graphs": self.cuda_graphs,
            "freezing": self.freezing if self.compile else None,
            "threads": self.threads,
            "processes": self.processes,
            "shares_prefix": self.shares_prefix,
        }
