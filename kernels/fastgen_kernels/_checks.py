"""Argument checks shared by the kernel launchers: a kernel reads raw pointers, so every shape,
device and layout assumption is checked here, with a message that names the argument."""

import torch


def as_rows(tensor: torch.Tensor, name: str, row_shape: tuple[int, ...]) -> torch.Tensor:
    """`tensor` [n, *row_shape] viewed as [n, prod(row_shape)] with unit element stride.

    A view when the rows are contiguous (the engine's banks and UNet outputs are); otherwise,
    e.g. channels_last, a contiguous copy so that element order matches the other operands.
    """
    if tensor.dim() < 1 or tuple(tensor.shape[1:]) != tuple(row_shape):
        raise ValueError(f"{name} must have shape [n, {', '.join(map(str, row_shape))}], got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {tensor.dtype}")
    rows = tensor.reshape(tensor.shape[0], -1)
    return rows if rows.stride(-1) == 1 or rows.shape[1] <= 1 else rows.contiguous()


def check_index(index: torch.Tensor, name: str, n_rows: int, device: torch.device) -> torch.Tensor:
    """A 1-D int32/int64 row index of length n_rows on `device`, made contiguous.

    Values are not range-checked: that would synchronise the device on every batch."""
    if index.dim() != 1 or index.shape[0] != n_rows:
        raise ValueError(f"{name} must have shape [{n_rows}], got {tuple(index.shape)}")
    if index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int32 or int64, got {index.dtype}")
    if index.device != device:
        raise ValueError(f"{name} is on {index.device} but the data is on {device}; move it there")
    return index.contiguous()


def check_per_row(values: torch.Tensor, name: str, n_rows: int, device: torch.device) -> torch.Tensor:
    """A 1-D per-row coefficient of length n_rows on `device`, as contiguous fp32."""
    if values.dim() != 1 or values.shape[0] != n_rows:
        raise ValueError(f"{name} must have shape [{n_rows}], got {tuple(values.shape)}")
    if values.device != device:
        raise ValueError(f"{name} is on {values.device} but the data is on {device}; move it there")
    return values.to(torch.float32).contiguous()


def check_same_device(device: torch.device, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device} but the data is on {device}; move it there")
