"""Triton as an optional dependency.

The kernel files define their `@jit` kernels at import time, but the plain-torch references
beside them must keep working where Triton is not installed (CPU-only or macOS installs). So
Triton is imported here once; without it the kernels stay plain Python functions that are never
launched, and launching one says which extra to install.
"""

from collections.abc import Callable, Iterable
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the references still work; `require_triton` explains what is missing
    triton = None
    tl = None

# Kernel parameters are annotated with the real `tl.constexpr` (the interpreter needs the object,
# not its name); without Triton the annotation is inert.
constexpr = tl.constexpr if tl is not None else "constexpr"

INSTALL_HINT = "pip install fastgen[triton]"


def has_triton() -> bool:
    return triton is not None


def require_triton() -> None:
    if triton is None:
        raise ImportError(
            f"the fused kernels need Triton, which is not installed: {INSTALL_HINT}, "
            "or set FASTGEN_KERNELS=torch to use the plain-torch path"
        )


def jit(fn: Callable) -> Any:
    """`triton.jit` when Triton is there (interpreted under TRITON_INTERPRET=1), else `fn`."""
    return triton.jit(fn) if triton is not None else fn


def register_op(name: str, *, mutates_args: Iterable[str]) -> Callable[[Callable], Callable]:
    """`torch.library.triton_op`, so that `torch.compile` traces into the kernels.

    Without Triton the function is returned as is (calling it then fails in `require_triton`).
    `triton_op` is public from torch 2.6 only; on older torch (2.4/2.5 ship Triton on CUDA) the
    function is returned as is too: the kernels still run, `torch.compile` just does not trace
    into them and there is no `torch.ops.fastgen` entry.
    """

    def decorate(fn: Callable) -> Callable:
        triton_op = getattr(torch.library, "triton_op", None)
        if triton is None or triton_op is None:
            return fn
        return triton_op(name, mutates_args=mutates_args)(fn)

    return decorate


def launcher(kernel: Any) -> Any:
    """What to index with the grid to launch `kernel`: `torch.library.wrap_triton(kernel)` (so
    that a `triton_op` stays traceable) where torch has it (2.6+), else the kernel itself."""
    wrap_triton = getattr(torch.library, "wrap_triton", None)
    return wrap_triton(kernel) if wrap_triton is not None else kernel


def is_interpreted(kernel: Any) -> bool:
    """True when `kernel` was built under TRITON_INTERPRET=1 (runs on CPU tensors)."""
    return type(kernel).__name__ == "InterpretedFunction"


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
