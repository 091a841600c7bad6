"""The two element-wise steps around every UNet call.

Both gather by row index instead of materialising repeated x0 / noise copies. Each dispatches
to the fused Triton op in `fastgen.kernels` for CUDA tensors (or when forced with
FASTGEN_KERNELS / `fastgen.kernels.set_kernel_mode`) and to its plain-torch reference otherwise.
"""

from __future__ import annotations

import torch

from fastgen.kernels import dispatch
from fastgen.kernels.noised_batch import noised_batch as fused_noised_batch
from fastgen.kernels.noised_batch import noised_batch_ref
from fastgen.kernels.prediction_errors import prediction_errors as fused_prediction_errors
from fastgen.kernels.prediction_errors import prediction_errors_ref


def noised_batch(
    x0_bank: torch.Tensor,
    eps_bank: torch.Tensor,
    x0_index: torch.Tensor,
    eps_index: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """x_t[r] = alpha_r * x0_bank[x0_index[r]] + sigma_r * eps_bank[eps_index[r]].

    The kernel names its coefficients sqrt(abar) and sqrt(1 - abar), as for DDPM models; any
    schedule's pair goes through it (a flow model's is (1 - s, s))."""
    impl = fused_noised_batch if dispatch.use_triton(x0_bank) else noised_batch_ref
    return impl(x0_bank, eps_bank, x0_index, eps_index, alpha, sigma, out_dtype)


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
    """Per-row weighted error of `prediction` against a * eps + b * x0, in fp32; optionally
    also adds each row's error into `group_sums[group_index[r]]` (in place)."""
    impl = fused_prediction_errors if dispatch.use_triton(prediction) else prediction_errors_ref
    return impl(
        prediction, x0_bank, eps_bank, x0_index, eps_index, target_a, target_b, weight, loss,
        group_index, group_sums,
    )  # fmt: skip
