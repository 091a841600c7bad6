"""Host-to-device staging of a batch's small per-row tensors.

Every denoiser batch needs a dozen small index and coefficient vectors on the device. Copied one
by one from pageable memory, each is a synchronous transfer, and those made after the denoiser
launch wait for it: the GPU idles between batches. Here they are packed into one contiguous
buffer per dtype in pinned memory and copied with `non_blocking=True`, all before the launch.
On the CPU nothing is copied.
"""

from __future__ import annotations

import torch


def pins_for(device: torch.device) -> bool:
    """Whether copies to `device` go through pinned host memory (CUDA only: elsewhere pinning
    buys nothing, and without a CUDA runtime it is not available)."""
    return device.type == "cuda" and torch.cuda.is_available()


def stage(tensors: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """`tensors` (host tensors) on `device`, with one copy per dtype; on the CPU they are returned
    as they are. The device tensors are views into one buffer per dtype: read them, never resize."""
    device = torch.device(device)
    if device.type == "cpu":
        return dict(tensors)
    return _packed_copy(tensors, device, pin=pins_for(device))


def _packed_copy(tensors: dict[str, torch.Tensor], device: torch.device, *, pin: bool) -> dict[str, torch.Tensor]:
    by_dtype: dict[torch.dtype, list[str]] = {}
    for name, value in tensors.items():
        by_dtype.setdefault(value.dtype, []).append(name)
    staged: dict[str, torch.Tensor] = {}
    for names in by_dtype.values():
        flat = torch.cat([tensors[n].reshape(-1) for n in names])
        if pin:
            flat = flat.pin_memory()
        on_device = flat.to(device, non_blocking=pin)
        start = 0
        for name in names:
            count = tensors[name].numel()
            staged[name] = on_device[start : start + count].view(tensors[name].shape)
            start += count
    return staged
