"""Prediction errors: the per-row weighted loss of the denoiser output, in one pass over it.

    target[r] = a[r] * eps_bank[eps_index[r]] + b[r] * x0_bank[x0_index[r]]
    errors[r] = weight[r] * mean_{C x H x W} loss(prediction[r], target[r])     (fp32)
    group_sums[group_index[r]] += errors[r]                                   (optional)

`a, b` put the target in the model's prediction space (epsilon: 1, 0; v: sqrt(abar),
-sqrt(1 - abar); sample: 0, 1); loss is l2, l1 or huber (delta 1). The per-row errors feed the
paired-test policy; the group sums are the per-(image, class) running sums. Rows are any shape;
inputs fp32/fp16/bf16; all arithmetic and the reduction are fp32.

Why it is fast: eager torch materialises both gathered banks, the target, the loss and a float
copy of the prediction before reducing. Here the prediction is read once and each element of the
banks once per row (mostly from L2: rows share bank rows); a zero coefficient skips its bank
entirely (epsilon models never read x0). A row is split over several programs when there are too
few rows to fill the GPU; the partial sums are then added in a fixed order by a second, tiny
kernel, so per-row errors are deterministic. The group sums use atomic adds: their last bit may
depend on the order rows finish.
"""

import torch

from fastgen.kernels._checks import as_rows, check_index, check_per_row, check_same_device
from fastgen.kernels._triton import cdiv, constexpr, jit, launcher, next_power_of_2, register_op, require_triton, tl
from fastgen.kernels.devices import device_guard
from fastgen.losses import LOSSES, check_loss, row_errors

BLOCK = 1024
NUM_WARPS = 4
FINISH_ROWS = 16  # rows per program of the finishing kernel
PROGRAMS_PER_SM = 4  # enough programs in flight to cover memory latency


def prediction_errors_ref(
    prediction: torch.Tensor,
    x0_bank: torch.Tensor,
    eps_bank: torch.Tensor,
    x0_index: torch.Tensor,
    eps_index: torch.Tensor,
    target_a: torch.Tensor,
    target_b: torch.Tensor,
    weight: torch.Tensor,
    loss: str,
    group_index: torch.Tensor | None = None,
    group_sums: torch.Tensor | None = None,
) -> torch.Tensor:
    """The definition, in plain torch: the engine's `row_errors` on gathered bank rows, plus
    the optional scatter-add into `group_sums` (fp32, updated in place)."""
    errors = row_errors(prediction, x0_bank[x0_index], eps_bank[eps_index], target_a, target_b, weight, loss)
    if group_sums is not None:
        group_sums.index_add_(0, group_index, errors)
    return errors


@jit
def _loss(diff, LOSS: constexpr):
    if LOSS == 0:  # l2
        return diff * diff
    elif LOSS == 1:  # l1
        return tl.abs(diff)
    else:  # huber with delta 1, as torch.nn.functional.huber_loss
        magnitude = tl.abs(diff)
        return tl.where(magnitude < 1.0, 0.5 * diff * diff, magnitude - 0.5)


@jit
def _row_error_kernel(
    pred_ptr, x0_ptr, eps_ptr, x0_index_ptr, eps_index_ptr, a_ptr, b_ptr, weight_ptr,
    partial_ptr, errors_ptr, group_ptr, sums_ptr,
    n_elements, pred_row_stride, x0_row_stride, eps_row_stride, chunk, n_split,
    LOSS: constexpr, BLOCK: constexpr, FINAL: constexpr, HAS_GROUPS: constexpr,
):  # fmt: skip
    # Program (row, part) sums the loss over elements [part * chunk, (part + 1) * chunk).
    row = tl.program_id(0)
    part = tl.program_id(1)
    pred_base = pred_ptr + row.to(tl.int64) * pred_row_stride
    x0_base = x0_ptr + tl.load(x0_index_ptr + row).to(tl.int64) * x0_row_stride
    eps_base = eps_ptr + tl.load(eps_index_ptr + row).to(tl.int64) * eps_row_stride
    a = tl.load(a_ptr + row)
    b = tl.load(b_ptr + row)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    start = part * chunk
    for offset in range(start, start + chunk, BLOCK):
        offsets = offset + tl.arange(0, BLOCK)
        mask = offsets < n_elements
        # Masked lanes read 0 everywhere, so their diff and loss are 0.
        pred = tl.load(pred_base + offsets, mask=mask, other=0.0, eviction_policy="evict_first")
        target = tl.zeros([BLOCK], dtype=tl.float32)
        if a != 0.0:
            eps = tl.load(eps_base + offsets, mask=mask, other=0.0, eviction_policy="evict_last")
            target += a * eps.to(tl.float32)
        if b != 0.0:
            x0 = tl.load(x0_base + offsets, mask=mask, other=0.0, eviction_policy="evict_last")
            target += b * x0.to(tl.float32)
        acc += _loss(pred.to(tl.float32) - target, LOSS)
    total = tl.sum(acc, axis=0)
    if FINAL:
        error = tl.load(weight_ptr + row) * (total / n_elements)
        tl.store(errors_ptr + row, error)
        if HAS_GROUPS:
            tl.atomic_add(sums_ptr + tl.load(group_ptr + row), error)
    else:
        tl.store(partial_ptr + row * n_split + part, total)


@jit
def _finish_kernel(
    partial_ptr, weight_ptr, errors_ptr, group_ptr, sums_ptr, n_rows, n_split, n_elements,
    ROWS: constexpr, SPLIT: constexpr, HAS_GROUPS: constexpr,
):  # fmt: skip
    # Adds each row's partial sums in a fixed order, then scales like the single-part path.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    parts = tl.arange(0, SPLIT)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (parts[None, :] < n_split)
    partial = tl.load(partial_ptr + rows[:, None] * n_split + parts[None, :], mask=mask, other=0.0)
    total = tl.sum(partial, axis=1)
    error = tl.load(weight_ptr + rows, mask=row_mask, other=0.0) * (total / n_elements)
    tl.store(errors_ptr + rows, error, mask=row_mask)
    if HAS_GROUPS:
        groups = tl.load(group_ptr + rows, mask=row_mask, other=0)
        tl.atomic_add(sums_ptr + groups, error, mask=row_mask)


def _choose_split(n_rows: int, n_elements: int, block: int, device: torch.device) -> tuple[int, int]:
    """(parts per row, elements per part): enough programs to fill every SM, no empty part."""
    n_blocks = cdiv(n_elements, block)
    programs = 1  # the interpreter runs programs one after another: fewest is fastest
    if device.type == "cuda":
        programs = PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    split = max(1, min(n_blocks, cdiv(programs, n_rows)))
    chunk = cdiv(n_blocks, split) * block
    return cdiv(n_elements, chunk), chunk


def _check_groups(group_index, group_sums, n_rows: int, device: torch.device):
    if (group_index is None) != (group_sums is None):
        raise ValueError("group_index and group_sums go together: pass both or neither")
    if group_sums is None:
        return None, None
    if group_sums.dim() != 1 or group_sums.dtype != torch.float32 or not group_sums.is_contiguous():
        raise ValueError(
            f"group_sums must be a contiguous 1-D float32 tensor (it is accumulated in place), "
            f"got shape {tuple(group_sums.shape)} {group_sums.dtype}"
        )
    check_same_device(device, group_sums=group_sums)
    return check_index(group_index, "group_index", n_rows, device), group_sums


def launch_prediction_errors(
    prediction: torch.Tensor,
    x0_bank: torch.Tensor,
    eps_bank: torch.Tensor,
    x0_index: torch.Tensor,
    eps_index: torch.Tensor,
    target_a: torch.Tensor,
    target_b: torch.Tensor,
    weight: torch.Tensor,
    loss: str,
    group_index: torch.Tensor | None = None,
    group_sums: torch.Tensor | None = None,
    *,
    block: int = BLOCK,
    num_warps: int = NUM_WARPS,
    split: int | None = None,
) -> torch.Tensor:
    """Check the arguments and run the kernel(s); returns errors [R] fp32. `split` forces the
    number of parts per row (tests use it to cover both paths on small shapes)."""
    require_triton()
    loss_code = LOSSES[check_loss(loss)].kernel_code
    device, row_shape = prediction.device, tuple(prediction.shape[1:])
    check_same_device(device, x0_bank=x0_bank, eps_bank=eps_bank)
    pred_rows = as_rows(prediction, "prediction", row_shape)
    x0_rows = as_rows(x0_bank, "x0_bank", row_shape)
    eps_rows = as_rows(eps_bank, "eps_bank", row_shape)
    n_rows, n_elements = pred_rows.shape
    x0_index = check_index(x0_index, "x0_index", n_rows, device)
    eps_index = check_index(eps_index, "eps_index", n_rows, device)
    a = check_per_row(target_a, "target_a", n_rows, device)
    b = check_per_row(target_b, "target_b", n_rows, device)
    weight = check_per_row(weight, "weight", n_rows, device)
    group_index, group_sums = _check_groups(group_index, group_sums, n_rows, device)
    errors = torch.empty(n_rows, dtype=torch.float32, device=device)
    if n_rows == 0:
        return errors
    if n_elements == 0:
        raise ValueError("prediction rows are empty: there is nothing to average")
    n_split, chunk = _choose_split(n_rows, n_elements, block, device)
    if split is not None:
        if split < 1:
            raise ValueError(f"split must be >= 1 parts per row, got {split}")
        n_split, chunk = split, cdiv(cdiv(n_elements, block), split) * block
    has_groups = group_sums is not None
    partial = torch.empty((n_rows, n_split) if n_split > 1 else (1,), dtype=torch.float32, device=device)
    # Without groups the kernels never touch these pointers; any tensor on the device will do.
    group_ptr = group_index if has_groups else x0_index
    sums_ptr = group_sums if has_groups else errors
    with device_guard(device):  # Triton launches on the current device, whatever the pointers
        launcher(_row_error_kernel)[(n_rows, n_split)](
            pred_rows, x0_rows, eps_rows, x0_index, eps_index, a, b, weight,
            partial, errors, group_ptr, sums_ptr,
            n_elements, pred_rows.stride(0), x0_rows.stride(0), eps_rows.stride(0), chunk, n_split,
            LOSS=loss_code, BLOCK=block, FINAL=n_split == 1, HAS_GROUPS=has_groups, num_warps=num_warps,
        )  # fmt: skip
        if n_split > 1:
            launcher(_finish_kernel)[(cdiv(n_rows, FINISH_ROWS),)](
                partial, weight, errors, group_ptr, sums_ptr, n_rows, n_split, n_elements,
                ROWS=FINISH_ROWS, SPLIT=next_power_of_2(n_split), HAS_GROUPS=has_groups, num_warps=1,
            )  # fmt: skip
    return errors


@register_op("fastgen::prediction_errors", mutates_args={"group_sums"})
def prediction_errors(
    prediction: torch.Tensor,
    x0_bank: torch.Tensor,
    eps_bank: torch.Tensor,
    x0_index: torch.Tensor,
    eps_index: torch.Tensor,
    target_a: torch.Tensor,
    target_b: torch.Tensor,
    weight: torch.Tensor,
    loss: str,
    group_index: torch.Tensor | None = None,
    group_sums: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fused op (`torch.ops.fastgen.prediction_errors`); same arguments as the reference."""
    return launch_prediction_errors(
        prediction, x0_bank, eps_bank, x0_index, eps_index, target_a, target_b, weight, loss,
        group_index, group_sums,
    )  # fmt: skip
