"""The Triton kernels against their plain-torch references, on odd shapes, every loss and
prediction type, fp32 and fp16. Without a GPU they run in the Triton interpreter (conftest sets
TRITON_INTERPRET=1), so the shapes are small but never a multiple of the block."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fastgen.kernels._triton import has_triton, is_interpreted
from fastgen.losses import LOSSES, PREDICTION_TYPES, target_coefficients

pytestmark = pytest.mark.skipif(not has_triton(), reason="triton is not installed")

if has_triton():
    from fastgen.kernels.noised_batch import _noised_batch_kernel, launch_noised_batch, noised_batch_ref
    from fastgen.kernels.prediction_errors import launch_prediction_errors, prediction_errors_ref

    DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    if DEVICE == "cpu" and not is_interpreted(_noised_batch_kernel):
        pytestmark = pytest.mark.skip(reason="no GPU and triton was imported before TRITON_INTERPRET=1")

# (row shape, block): C x H x W never a power of two and never a multiple of the block.
SHAPES = [((3, 5, 7), 32), ((4, 3, 3), 16), ((1, 9, 11), 64)]
SCHEDULE = torch.linspace(0.9991, 0.0047, 1000, dtype=torch.float64)  # abar, high to low


def _inputs(shape, bank_dtype, n_rows=11, seed=0):
    """Seeded banks, row indices with repeats, real schedule coefficients."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(4, *shape, generator=g) * 0.8 + 0.1
    eps = torch.randn(6, *shape, generator=g)
    x0_index = torch.randint(0, 4, (n_rows,), generator=g)
    eps_index = torch.randint(0, 6, (n_rows,), generator=g)
    t = torch.randint(0, 1000, (n_rows,), generator=g)
    dev = lambda v: v.to(DEVICE)
    return dev(x0.to(bank_dtype)), dev(eps.to(bank_dtype)), dev(x0_index), dev(eps_index), t, g


def _assert_as_close_as_torch(kernel, same_dtype_ref, exact):
    """The kernel may be at most about twice as far from the exact value as torch's own rounding."""
    kernel_err = (kernel.double().cpu() - exact).abs().max().item()
    torch_err = (same_dtype_ref.double().cpu() - exact).abs().max().item()
    slack = 4 * torch.finfo(torch.float32).eps * exact.abs().max().item()
    assert kernel_err <= 2 * torch_err + slack, (kernel_err, torch_err)


# -- noised batch -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, block", SHAPES)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.float16])
def test_noised_batch_matches_reference(shape, block, out_dtype, bank_dtype):
    x0, eps, x0_index, eps_index, t, _ = _inputs(shape, bank_dtype)
    abar = SCHEDULE[t]
    c0, c1 = abar.sqrt().float().to(DEVICE), (1 - abar).sqrt().float().to(DEVICE)
    got = launch_noised_batch(x0, eps, x0_index, eps_index, c0, c1, out_dtype, block=block)
    assert got.dtype == out_dtype and got.shape == (11, *shape)
    same_dtype = noised_batch_ref(x0, eps, x0_index, eps_index, c0, c1, out_dtype)
    gather = lambda bank, index: bank.double().cpu()[index.cpu()]
    view = (-1,) + (1,) * len(shape)
    exact = c0.double().cpu().view(view) * gather(x0, x0_index) + c1.double().cpu().view(view) * gather(eps, eps_index)
    _assert_as_close_as_torch(got, same_dtype, exact)
    # and it is the reference up to one rounding of the output
    ulp = torch.finfo(out_dtype).eps * same_dtype.float().abs().max().item()
    assert (got.float() - same_dtype.float()).abs().max().item() <= ulp


def test_noised_batch_reads_strided_banks_and_int32_indices():
    x0, eps, x0_index, eps_index, t, _ = _inputs((3, 5, 7), torch.float32)
    c0, c1 = [c.float().to(DEVICE) for c in (SCHEDULE[t].sqrt(), (1 - SCHEDULE[t]).sqrt())]
    wide = torch.cat([eps, eps.flip(1)], dim=1)[:, :3]  # rows 6 channels apart: strided view
    got = launch_noised_batch(x0, wide, x0_index.int(), eps_index.int(), c0, c1, torch.float32, block=32)
    want = noised_batch_ref(x0, wide, x0_index, eps_index, c0, c1, torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# -- prediction errors --------------------------------------------------------------------------
def _exact_errors(prediction, x0, eps, x0_index, eps_index, a, b, weight, loss):
    """The definition evaluated in float64 on the same (rounded) inputs."""
    cpu = lambda v: v.double().cpu()
    view = (-1,) + (1,) * (prediction.dim() - 1)
    target = cpu(a).view(view) * cpu(eps)[eps_index.cpu()] + cpu(b).view(view) * cpu(x0)[x0_index.cpu()]
    diff = cpu(prediction) - target
    per = {"l2": diff**2, "l1": diff.abs(), "huber": torch.where(diff.abs() < 1, 0.5 * diff**2, diff.abs() - 0.5)}
    return cpu(weight) * per[loss].flatten(1).mean(dim=1), diff


def _error_case(shape, loss, prediction_type, dtype, seed=0):
    x0, eps, x0_index, eps_index, t, g = _inputs(shape, torch.float32, seed=seed)
    a, b = [c.to(DEVICE) for c in target_coefficients(prediction_type, SCHEDULE[t])]
    weight = torch.exp(-7.0 * t.double() / 1000).float().to(DEVICE)
    # a prediction near the target, as a trained model gives: the huber loss sees both regimes
    target = a.view(-1, 1, 1, 1) * eps[eps_index] + b.view(-1, 1, 1, 1) * x0[x0_index]
    prediction = (target + 1.2 * torch.randn(target.shape, generator=g).to(DEVICE)).to(dtype)
    return prediction, x0, eps, x0_index, eps_index, a, b, weight, loss


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_prediction_errors_match_reference(loss, prediction_type, dtype):
    args = _error_case((3, 5, 7), loss, prediction_type, dtype)
    same_dtype = prediction_errors_ref(*args)
    exact, diff = _exact_errors(*args)
    assert exact.std() > 0 and (exact > 0).all()
    if loss == "huber":
        assert 0.2 < (diff.abs() < 1).double().mean() < 0.8  # both branches are exercised
    for split in (None, 1, 3):  # one part per row, and rows split over a second kernel
        got = launch_prediction_errors(*args, block=16, split=split)
        assert got.dtype == torch.float32 and got.shape == (11,)
        _assert_as_close_as_torch(got, same_dtype, exact)


@pytest.mark.parametrize("shape, block", SHAPES)
@pytest.mark.parametrize("split", [1, 2])
def test_group_sums_accumulate_in_place(shape, block, split):
    args = _error_case(shape, "l2", "v_prediction", torch.float16, seed=5)
    group_index = torch.tensor([0, 2, 2, 1, 0, 2, 3, 3, 0, 1, 2], device=DEVICE)  # repeats
    start = torch.tensor([0.5, -1.0, 2.0, 0.25, 7.0], device=DEVICE)  # group 4 gets no row
    sums, want_sums = start.clone(), start.clone()
    got = launch_prediction_errors(*args, group_index, sums, block=block, split=split)
    want = prediction_errors_ref(*args, group_index, want_sums)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(sums, want_sums, rtol=2e-6, atol=1e-6)
    assert sums[4] == start[4] and not torch.equal(sums[:4], start[:4])


def test_prediction_errors_read_a_channel_slice_and_channels_last():
    # DiT predicts [eps, variance]; the engine scores the eps half, a strided view.
    prediction, *rest = _error_case((3, 5, 7), "l1", "epsilon", torch.float32, seed=2)
    both = torch.cat([prediction, -prediction], dim=1)
    want = prediction_errors_ref(prediction, *rest)
    got_slice = launch_prediction_errors(both[:, :3], *rest, block=32)
    got_channels_last = launch_prediction_errors(prediction.to(memory_format=torch.channels_last), *rest, block=32)
    torch.testing.assert_close(got_slice, want, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(got_channels_last, want, rtol=2e-6, atol=1e-7)


def test_launchers_name_the_bad_argument():
    prediction, x0, eps, x0_index, eps_index, a, b, weight, loss = _error_case(
        (3, 5, 7), "l2", "epsilon", torch.float32
    )
    with pytest.raises(ValueError, match="eps_bank must have shape"):
        launch_prediction_errors(prediction, x0, eps[:, :2], x0_index, eps_index, a, b, weight, loss)
    with pytest.raises(ValueError, match=r"weight must have shape \[11\]"):
        launch_prediction_errors(prediction, x0, eps, x0_index, eps_index, a, b, weight[:3], loss)
    with pytest.raises(ValueError, match="loss must be one of"):
        launch_prediction_errors(prediction, x0, eps, x0_index, eps_index, a, b, weight, "l3")
    with pytest.raises(ValueError, match="pass both or neither"):
        launch_prediction_errors(prediction, x0, eps, x0_index, eps_index, a, b, weight, loss, x0_index, None)
    with pytest.raises(TypeError, match="x0_index must be int32 or int64"):
        launch_noised_batch(x0, eps, x0_index.float(), eps_index, a, a, torch.float16)


def test_ops_are_registered_for_torch_compile():
    errors_op = torch.ops.fastgen.prediction_errors.default
    sums_arg = errors_op._schema.arguments[-1]
    assert sums_arg.name == "group_sums" and sums_arg.alias_info.is_write  # accumulated in place
    args = _error_case((4, 3, 3), "huber", "sample", torch.float16, seed=3)
    torch.testing.assert_close(errors_op(*args), prediction_errors_ref(*args), rtol=2e-6, atol=1e-7)
    x0, eps, x0_index, eps_index, t, _ = _inputs((4, 3, 3), torch.float32, seed=4)
    c0, c1 = [c.float().to(DEVICE) for c in (SCHEDULE[t].sqrt(), (1 - SCHEDULE[t]).sqrt())]
    got = torch.ops.fastgen.noised_batch.default(x0, eps, x0_index, eps_index, c0, c1, torch.float16)
    want = noised_batch_ref(x0, eps, x0_index, eps_index, c0, c1, torch.float16)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile traces Triton kernels on CUDA only")
def test_torch_compile_traces_through_the_ops():
    from fastgen.kernels.noised_batch import noised_batch
    from fastgen.kernels.prediction_errors import prediction_errors

    args = _error_case((4, 64, 64), "l2", "v_prediction", torch.float16)
    _, x0, eps, x0_index, eps_index, a, b, _, loss = args

    def step(prediction, x0, eps, x0_index, eps_index, a, b, weight):
        x_t = noised_batch(x0, eps, x0_index, eps_index, a, -b, torch.float16)
        return x_t, prediction_errors(prediction, x0, eps, x0_index, eps_index, a, b, weight, loss)

    compiled = torch.compile(step, fullgraph=True)
    got_x_t, got_errors = compiled(*args[:8])
    torch.testing.assert_close(got_x_t, noised_batch_ref(x0, eps, x0_index, eps_index, a, -b, torch.float16))
    torch.testing.assert_close(got_errors, prediction_errors_ref(*args), rtol=2e-6, atol=1e-7)


_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastgen.kernels.noised_batch import _noised_batch_kernel
from fastgen.kernels.prediction_errors import _finish_kernel, _row_error_kernel

def sig(kernel, types):
    return {name: types.get(name, "i32") for name in kernel.arg_names}

for arch in (80, 90):
    target = GPUTarget("cuda", arch, 32)
    for out in ("fp16", "bf16", "fp32"):
        types = {n: "*fp32" for n in ("x0_ptr", "eps_ptr", "c0_ptr", "c1_ptr")}
        types.update(x0_index_ptr="*i64", eps_index_ptr="*i64", out_ptr="*" + out, BLOCK="constexpr")
        triton.compile(ASTSource(_noised_batch_kernel, sig(_noised_batch_kernel, types), {"BLOCK": 1024}), target=target)
    for loss in (0, 1, 2):
        for final in (True, False):
            types = {n: "*fp32" for n in ("x0_ptr", "eps_ptr", "a_ptr", "b_ptr", "weight_ptr", "partial_ptr", "errors_ptr", "sums_ptr")}
            types.update(pred_ptr="*bf16", x0_index_ptr="*i64", eps_index_ptr="*i64", group_ptr="*i64")
            types.update({n: "constexpr" for n in ("LOSS", "BLOCK", "FINAL", "HAS_GROUPS")})
            constants = {"LOSS": loss, "BLOCK": 1024, "FINAL": final, "HAS_GROUPS": final}
            triton.compile(ASTSource(_row_error_kernel, sig(_row_error_kernel, types), constants), target=target)
    types = {n: "*fp32" for n in ("partial_ptr", "weight_ptr", "errors_ptr", "sums_ptr")}
    types.update(group_ptr="*i64", ROWS="constexpr", SPLIT="constexpr", HAS_GROUPS="constexpr")
    triton.compile(ASTSource(_finish_kernel, sig(_finish_kernel, types), {"ROWS": 16, "SPLIT": 8, "HAS_GROUPS": True}), target=target)
print("compiled")
"""


def test_kernels_compile_for_gpu_targets():
    # The interpreter accepts code the compiler rejects: compile every variant down to a cubin
    # for A100 and H100 (Triton ships ptxas), which needs no GPU.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT], env=env, check=False, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
