"""The PyTorch backend: the adapter's own module, prepared for speed.

Preparation happens once, in place (no weight copy, so a 3 GB UNet is not held twice):
PyTorch SDPA attention (or xformers when asked and installed), fused QKV projections, and
channels-last memory on CUDA. Then, optionally, `torch.compile` and CUDA graphs. Both of
those want one batch shape, so the backend asks the engine to pad its last batch
(`wants_fixed_batch`): a recompile or a new graph capture costs far more than a few padded rows.

Precision is the module's dtype, chosen when the model is loaded (`dtype=` of `from_pretrained`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from fastgen.backends.base import Backend
from fastgen.export.spec import IOSpec
from fastgen.optional import require

log = logging.getLogger(__name__)

ATTENTION = ("sdpa", "xformers", "keep")
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


def use_xformers(module: nn.Module) -> int:
    require("xformers", extra="xformers", purpose="attention='xformers'")
    changed = _attention_modules(module)
    for attn in changed:
        attn.set_use_memory_efficient_attention_xformers(True)
    return len(changed)


class _CapturedGraph:
    """One CUDA graph of the module at one batch size, replayed with copied-in inputs."""

    def __init__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], pool: Any):
        self.inputs = tuple(v.clone() for v in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # lazy initialisation and cuDNN autotuning stay out of the graph
                module(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = module(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for buffer, value in zip(self.inputs, inputs):
            buffer.copy_(value)
        self.graph.replay()
        return self.output.clone()  # the next replay overwrites the static output


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
    ):
        param = next(denoiser.parameters())
        super().__init__(spec, device=param.device, dtype=param.dtype)
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, it is on {self.device}")
        self.module = denoiser.eval()
        self.attention, self.fuse_qkv = attention, fuse_qkv and attention == "sdpa"
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        self.compile, self.cuda_graphs = compile, cuda_graphs
        self.compile_mode = self._compile_mode(compile_mode)
        self.compile_backend = compile_backend
        self._prepare()
        self.wants_fixed_batch = compile or cuda_graphs
        self._graphs: dict[tuple, _CapturedGraph] = {}
        self._pool = torch.cuda.graph_pool_handle() if cuda_graphs and not compile else None

    def _compile_mode(self, mode: str | None) -> str | None:
        if not (self.compile and self.cuda_graphs):
            return mode
        # With compile, inductor captures the graphs itself ("reduce-overhead").
        if mode not in (None, "reduce-overhead", "max-autotune"):
            raise ValueError(
                f"cuda_graphs=True with compile=True uses compile_mode 'reduce-overhead' or "
                f"'max-autotune' (inductor captures the graphs); got compile_mode={mode!r}"
            )
        return mode or "reduce-overhead"

    def _prepare(self) -> None:
        if self.attention == "sdpa":
            changed = use_sdpa(self.module, fuse_qkv=self.fuse_qkv)
        elif self.attention == "xformers":
            changed = use_xformers(self.module)
        else:
            changed = 0
        log.debug("attention %s (fused qkv %s) on %d modules", self.attention, self.fuse_qkv, changed)
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self._forward = self.module
        if self.compile:
            self._forward = torch.compile(
                self.module, mode=self.compile_mode, backend=self.compile_backend, dynamic=False
            )

    @torch.inference_mode()
    def _run(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x_t = x_t.to(self.dtype)
        if cond.is_floating_point():
            cond = cond.to(self.dtype)
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        if self.cuda_graphs and not self.compile:
            return self._replay(x_t, t, cond)
        out = self._forward(x_t, t, cond)
        return out.clone() if self.cuda_graphs else out

    def _replay(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = tuple(tuple(v.shape) for v in inputs)
        graph = self._graphs.get(key)
        if graph is None:
            log.info("capturing a CUDA graph for batch %d", inputs[0].shape[0])
            graph = self._graphs[key] = _CapturedGraph(self._forward, inputs, self._pool)
        return graph(*inputs)

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
        }
