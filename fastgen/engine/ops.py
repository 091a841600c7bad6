"""The two element-wise steps around every UNet call, in plain torch.

Both gather by row index instead of materialising repeated x0 / noise copies. Fused Triton
versions live in `fastgen.kernels` and must match these.
"""

from __future__ import annotations

import torch

from fastgen.engine.losses import row_errors


def noised_batch(
    x0_bank: torch.Tensor,
    eps_bank: torch.Tensor,
    x0_index: torch.Tensor,
    eps_index: torch.Tensor,
    sqrt_abar: torch.Tensor,
    sqrt_one_minus_abar: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """x_t[r] = sqrt(abar_r) * x0_bank[x0_index[r]] + sqrt(1 - abar_r) * eps_bank[eps_index[r]]."""
    shape = (-1,) + (1,) * (x0_bank.dim() - 1)
    x0 = x0_bank[x0_index].float()
    eps = eps_bank[eps_index].float()
    x_t = sqrt_abar.float().view(shape) * x0 + sqrt_one_minus_abar.float().view(shape) * eps
    return x_t.to(out_dtype)


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
) -> torch.Tensor:
    """Per-row weighted error of `prediction` against a * eps + b * x0, in fp32."""
    return row_errors(
        prediction, x0_bank[x0_index], eps_bank[eps_index], target_a, target_b, weight, loss
    )
