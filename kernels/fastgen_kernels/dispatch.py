"""Which implementation the engine's element-wise steps use: the fused Triton ops or the
plain-torch references.

`FASTGEN_KERNELS=auto|triton|torch` (read on every call, so it can be set at any time) or
`set_kernel_mode(...)` in code, which takes precedence until reset with `None`.

* `auto` (default): Triton for CUDA tensors when Triton is installed, the references otherwise.
* `triton`: always the Triton ops; CPU tensors need `TRITON_INTERPRET=1` set before Triton is
  first imported (that is how CI runs the real kernels without a GPU).
* `torch`: always the references.

Under ONNX or `torch.export` export the references are used whatever the mode, so exported
graphs hold only standard operators and stay loadable by ONNX Runtime and TensorRT.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from fastgen.kernels._triton import has_triton, is_interpreted, require_triton

KERNEL_MODES = ("auto", "triton", "torch")
ENV_VAR = "FASTGEN_KERNELS"
_forced: str | None = None


def _check_mode(mode: str, source: str) -> str:
    if mode not in KERNEL_MODES:
        raise ValueError(f"{source} must be one of {KERNEL_MODES}, got {mode!r}")
    return mode


def set_kernel_mode(mode: str | None) -> str | None:
    """Force `auto`, `triton` or `torch` for this process; `None` goes back to the environment
    variable. Returns the previous forced mode, so callers can restore it."""
    global _forced
    previous = _forced
    _forced = None if mode is None else _check_mode(mode, "kernel mode")
    return previous


@contextlib.contextmanager
def kernel_mode_scope(mode: str | None) -> Iterator[None]:
    """`set_kernel_mode(mode)` for the duration of a `with` block."""
    previous = set_kernel_mode(mode)
    try:
        yield
    finally:
        set_kernel_mode(previous)


def kernel_mode() -> str:
    """The mode in effect: the forced one, else FASTGEN_KERNELS, else `auto`."""
    if _forced is not None:
        return _forced
    return _check_mode(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", ENV_VAR)


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def _kernels_interpreted() -> bool:
    from fastgen.kernels.noised_batch import _noised_batch_kernel

    return is_interpreted(_noised_batch_kernel)


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether an op whose data lives where `tensor` does should run the Triton kernels."""
    mode = kernel_mode()
    if mode == "torch" or _exporting():
        return False
    if mode == "auto":
        return tensor.is_cuda and has_triton()
    require_triton()
    if not tensor.is_cuda and not _kernels_interpreted():
        raise RuntimeError(
            f"kernel mode 'triton' got {tensor.device.type} tensors: Triton runs on CUDA, or on "
            "CPU only with TRITON_INTERPRET=1 set before triton is first imported; set "
            f"{ENV_VAR}=auto to use the plain-torch path off CUDA"
        )
    return True
