"""Triton kernels for the work around the denoiser, installed as `fastgen.kernels`.

One op per module, each with its plain-torch reference (`<op>_ref`) beside it:
`noised_batch` builds the denoiser's input rows, `prediction_errors` reduces its output to
per-row errors. `fastgen.engine.ops` picks one or the other (see `dispatch`). Triton itself is
optional: the references and the dispatch work without it.
"""

from fastgen.kernels.dispatch import (
    KERNEL_MODES,
    kernel_mode,
    kernel_mode_scope,
    set_kernel_mode,
    use_triton,
)
from fastgen.kernels.noised_batch import noised_batch, noised_batch_ref
from fastgen.kernels.prediction_errors import prediction_errors, prediction_errors_ref

__all__ = [
    "KERNEL_MODES",
    "kernel_mode",
    "kernel_mode_scope",
    "noised_batch",
    "noised_batch_ref",
    "prediction_errors",
    "prediction_errors_ref",
    "set_kernel_mode",
    "use_triton",
]
