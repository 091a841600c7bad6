"""Running work on the device its tensors live on.

CUDA launches (Triton kernels, CUDA graphs, TensorRT contexts) go to the *current* device, not
to the device of the pointers they are given. With a model on `cuda:1` while the current device
is `cuda:0`, a launch would read another GPU's addresses. Every launch site enters
`device_guard(device)` first.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def device_guard(device: torch.device | str) -> Any:
    """A context that makes `device` the current CUDA device; does nothing for other devices."""
    device = torch.device(device)
    if device.type != "cuda":
        return contextlib.nullcontext()
    # `torch.cuda.device(None)` would keep whatever is current; an index-less "cuda" means the
    # current device too, which is what a tensor created on "cuda" is on.
    return torch.cuda.device(device) if device.index is not None else contextlib.nullcontext()
