"""The CUDA-only parts of the kernel path, checked on CPU through the logic that chooses them:
older torch without `triton_op`/`wrap_triton`, and the device guard around every launch."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastgen.kernels._triton import has_triton, launcher, register_op
from fastgen.kernels.devices import device_guard


def test_register_op_falls_back_when_torch_has_no_triton_op(monkeypatch):
    # torch 2.4/2.5 ship Triton on CUDA but have no public triton_op: import must still work.
    monkeypatch.delattr(torch.library, "triton_op", raising=False)

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return x * 3

    assert register_op("fastgen_test::scaled", mutates_args=())(scaled) is scaled


def test_launcher_falls_back_to_the_kernel_itself(monkeypatch):
    kernel = object()
    monkeypatch.delattr(torch.library, "wrap_triton", raising=False)
    assert launcher(kernel) is kernel


@pytest.mark.skipif(not has_triton(), reason="triton is not installed")
def test_kernels_import_and_run_on_a_torch_without_triton_op():
    """A fresh interpreter whose torch lacks the 2.5 and 2.6 APIs (torch.OutOfMemoryError,
    triton_op, wrap_triton) imports fastgen, splits a batch on out-of-memory, and runs both
    kernels (interpreted on CPU) to the plain-torch references."""
    script = textwrap.dedent(
        """
        import torch
        del torch.library.triton_op, torch.library.wrap_triton, torch.OutOfMemoryError
        import fastgen
        from fastgen.engine.denoiser import as_denoiser
        from fastgen.engine.faults import DenoiseGuard

        def small_memory(x_t, t, cond):
            if x_t.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            return x_t * 2
        guard = DenoiseGuard(lambda: None)
        x = torch.arange(5.0).view(5, 1)
        assert torch.equal(guard(as_denoiser(small_memory), x, torch.zeros(5), torch.zeros(5, 1)), x * 2)
        from fastgen.kernels.noised_batch import launch_noised_batch, noised_batch_ref
        from fastgen.kernels.prediction_errors import launch_prediction_errors, prediction_errors_ref
        g = torch.Generator().manual_seed(5)
        x0, eps = torch.randn(3, 2, 5, 7, generator=g), torch.randn(4, 2, 5, 7, generator=g)
        i0, ie = torch.tensor([0, 2, 1, 2, 0]), torch.tensor([3, 0, 1, 1, 2])
        c0, c1 = torch.rand(5, generator=g), torch.rand(5, generator=g)
        xt = launch_noised_batch(x0, eps, i0, ie, c0, c1, torch.float32)
        torch.testing.assert_close(xt, noised_batch_ref(x0, eps, i0, ie, c0, c1, torch.float32))
        pred, w = torch.randn(5, 2, 5, 7, generator=g), torch.rand(5, generator=g)
        args = (pred, x0, eps, i0, ie, torch.zeros(5), torch.ones(5), w, "l2")
        torch.testing.assert_close(launch_prediction_errors(*args), prediction_errors_ref(*args))
        assert not hasattr(torch.ops.fastgen, "noised_batch")
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_device_guard_sets_the_tensors_cuda_device():
    # Constructing the guard touches no GPU; entering it would make cuda:1 current.
    guard = device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(device_guard("cuda:0"), torch.cuda.device)
    assert isinstance(device_guard("cpu"), contextlib.nullcontext)
    assert isinstance(device_guard("cuda"), contextlib.nullcontext)  # already the current device


@pytest.mark.skipif(not has_triton(), reason="triton is not installed")
def test_every_kernel_launch_enters_the_guard_of_its_tensors_device(monkeypatch):
    import importlib

    from fastgen.kernels._triton import is_interpreted
    from fastgen.kernels.noised_batch import _noised_batch_kernel

    # The modules, not the ops of the same name that the package re-exports.
    noised_batch = importlib.import_module("fastgen.kernels.noised_batch")
    prediction_errors = importlib.import_module("fastgen.kernels.prediction_errors")

    if not is_interpreted(_noised_batch_kernel) and not torch.cuda.is_available():
        pytest.skip("no GPU and triton was imported before TRITON_INTERPRET=1")
    entered = []

    @contextlib.contextmanager
    def recording_guard(device):
        entered.append(torch.device(device))
        yield

    monkeypatch.setattr(noised_batch, "device_guard", recording_guard)
    monkeypatch.setattr(prediction_errors, "device_guard", recording_guard)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    index, coef = torch.tensor([0, 1, 1]), torch.rand(3, generator=g)
    noised_batch.launch_noised_batch(x0, eps, index, index, coef, coef, torch.float32)
    pred = torch.randn(3, 3, 4, 5, generator=g)
    prediction_errors.launch_prediction_errors(pred, x0, eps, index, index, coef, coef, coef, "l1", split=2)
    assert entered == [x0.device, x0.device]
