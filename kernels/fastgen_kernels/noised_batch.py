"""Noised batch: the denoiser's input rows, gathered and mixed in one pass.

    x_t[r] = sqrt_abar[r] * x0_bank[x0_index[r]] + sqrt_one_minus_abar[r] * eps_bank[eps_index[r]]

written straight into the batch buffer in the denoiser's dtype. Rows are any shape [C, H, W, ...]
(flattened; no power-of-two or block-multiple requirement); the banks may be fp32/fp16/bf16 and
the arithmetic is fp32. A per-image noise bank [I, S, ...] is passed flattened, with
eps_index = image * S + sample.

Why it is fast: eager torch materialises x0_bank[x0_index] and eps_bank[eps_index] (two full
copies of the batch), then three element-wise passes and a cast. Here each output element costs
one read of each operand and one write; the bank rows are shared by many rows of a batch (all
classes of an image, all images of a sample), so most of those reads hit L2.
"""

import torch

from fastgen.kernels._checks import as_rows, check_index, check_per_row, check_same_device
from fastgen.kernels._triton import cdiv, constexpr, jit, launcher, register_op, require_triton, tl
from fastgen.kernels.devices import device_guard

BLOCK = 1024  # elements per program: 4 warps x 32 lanes x 8 contiguous values
NUM_WARPS = 4


def noised_batch_ref(
    x0_bank: torch.Tensor,
    eps_bank: torch.Tensor,
    x0_index: torch.Tensor,
    eps_index: torch.Tensor,
    sqrt_abar: torch.Tensor,
    sqrt_one_minus_abar: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The definition, in plain torch: gather, mix in fp32, cast once at the end."""
    shape = (-1,) + (1,) * (x0_bank.dim() - 1)
    x0 = x0_bank[x0_index].float()
    eps = eps_bank[eps_index].float()
    x_t = sqrt_abar.float().view(shape) * x0 + sqrt_one_minus_abar.float().view(shape) * eps
    return x_t.to(out_dtype)


@jit
def _noised_batch_kernel(
    x0_ptr,
    eps_ptr,
    x0_index_ptr,
    eps_index_ptr,
    c0_ptr,
    c1_ptr,
    out_ptr,
    n_elements,
    x0_row_stride,
    eps_row_stride,
    BLOCK: constexpr,
):
    # One program per (row, block of BLOCK elements); the grid's second axis covers the row.
    row = tl.program_id(0)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    # int64 row offsets: a bank may hold more than 2**31 elements.
    x0_row = tl.load(x0_index_ptr + row).to(tl.int64)
    eps_row = tl.load(eps_index_ptr + row).to(tl.int64)
    c0 = tl.load(c0_ptr + row)
    c1 = tl.load(c1_ptr + row)
    # Bank rows are reused by other rows of the batch: ask the cache to keep them.
    x0 = tl.load(x0_ptr + x0_row * x0_row_stride + offsets, mask=mask, eviction_policy="evict_last")
    eps = tl.load(eps_ptr + eps_row * eps_row_stride + offsets, mask=mask, eviction_policy="evict_last")
    x_t = c0 * x0.to(tl.float32) + c1 * eps.to(tl.float32)
    out = out_ptr + row.to(tl.int64) * n_elements + offsets
    tl.store(out, x_t.to(out_ptr.dtype.element_ty), mask=mask)


def launch_noised_batch(
    x0_bank: torch.Tensor,
    eps_bank: torch.Tensor,
    x0_index: torch.Tensor,
    eps_index: torch.Tensor,
    sqrt_abar: torch.Tensor,
    sqrt_one_minus_abar: torch.Tensor,
    out_dtype: torch.dtype,
    *,
    block: int = BLOCK,
    num_warps: int = NUM_WARPS,
) -> torch.Tensor:
    """Check the arguments and run the kernel; returns x_t [R, *row_shape] in `out_dtype`."""
    require_triton()
    device, row_shape = x0_bank.device, tuple(x0_bank.shape[1:])
    if not out_dtype.is_floating_point:
        raise TypeError(f"out_dtype must be a floating dtype, got {out_dtype}")
    check_same_device(device, eps_bank=eps_bank)
    x0_rows = as_rows(x0_bank, "x0_bank", row_shape)
    eps_rows = as_rows(eps_bank, "eps_bank", row_shape)
    if x0_index.dim() != 1:
        raise ValueError(f"x0_index must be 1-D, one entry per row, got shape {tuple(x0_index.shape)}")
    n_rows = x0_index.shape[0]
    x0_index = check_index(x0_index, "x0_index", n_rows, device)
    eps_index = check_index(eps_index, "eps_index", n_rows, device)
    c0 = check_per_row(sqrt_abar, "sqrt_abar", n_rows, device)
    c1 = check_per_row(sqrt_one_minus_abar, "sqrt_one_minus_abar", n_rows, device)
    out = torch.empty((n_rows, *row_shape), dtype=out_dtype, device=device)
    n_elements = x0_rows.shape[1]
    if n_rows == 0 or n_elements == 0:
        return out
    grid = (n_rows, cdiv(n_elements, block))
    with device_guard(device):  # Triton launches on the current device, whatever the pointers
        launcher(_noised_batch_kernel)[grid](
            x0_rows, eps_rows, x0_index, eps_index, c0, c1, out,
            n_elements, x0_rows.stride(0), eps_rows.stride(0),
            BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    return out


@register_op("fastgen::noised_batch", mutates_args=())
def noised_batch(
    x0_bank: torch.Tensor,
    eps_bank: torch.Tensor,
    x0_index: torch.Tensor,
    eps_index: torch.Tensor,
    sqrt_abar: torch.Tensor,
    sqrt_one_minus_abar: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The fused op (`torch.ops.fastgen.noised_batch`); same arguments as `noised_batch_ref`."""
    return launch_noised_batch(x0_bank, eps_bank, x0_index, eps_index, sqrt_abar, sqrt_one_minus_abar, out_dtype)
