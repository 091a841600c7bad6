"""Choosing between the Triton ops and the references: the flag, export, a missing Triton, and
the whole classifier giving the same answers either way."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fastgen import DiffusionClassifier
from fastgen.engine import ops
from fastgen.kernels import dispatch, kernel_mode, kernel_mode_scope, set_kernel_mode
from fastgen.kernels._triton import has_triton, is_interpreted
from fastgen.kernels.noised_batch import noised_batch_ref
from fastgen.kernels.prediction_errors import prediction_errors_ref
from fastgen.testing import make_pixel_text


def _kernels_runnable() -> bool:
    if not has_triton():
        return False
    from fastgen.kernels.noised_batch import _noised_batch_kernel

    return torch.cuda.is_available() or is_interpreted(_noised_batch_kernel)


needs_kernels = pytest.mark.skipif(not _kernels_runnable(), reason="no GPU and no Triton interpreter")


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls that reach the fused ops (which still run for real)."""
    counts = {"noised_batch": 0, "prediction_errors": 0}
    for name in counts:
        real = getattr(ops, f"fused_{name}")

        def spy(*args, _real=real, _name=name):
            counts[_name] += 1
            return _real(*args)

        monkeypatch.setattr(ops, f"fused_{name}", spy)
    return counts


def _step_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(3, 2, 5, 3, generator=g), torch.randn(4, 2, 5, 3, generator=g)
    x0_index, eps_index = torch.tensor([0, 2, 2, 1, 0]), torch.tensor([3, 3, 0, 1, 2])
    abar = torch.rand(5, generator=g) * 0.9 + 0.05
    return x0, eps, x0_index, eps_index, abar.sqrt(), (1 - abar).sqrt(), torch.rand(5, generator=g) + 0.5


def test_mode_comes_from_the_flag_then_the_environment(monkeypatch):
    monkeypatch.delenv("FASTGEN_KERNELS", raising=False)
    assert kernel_mode() == "auto"
    monkeypatch.setenv("FASTGEN_KERNELS", "Torch")
    assert kernel_mode() == "torch"
    with kernel_mode_scope("triton"):
        assert kernel_mode() == "triton"
        with kernel_mode_scope("auto"):
            assert kernel_mode() == "auto"
        assert kernel_mode() == "triton"
    assert kernel_mode() == "torch"
    monkeypatch.setenv("FASTGEN_KERNELS", "cuda")
    with pytest.raises(ValueError, match="FASTGEN_KERNELS must be one of"):
        kernel_mode()
    with pytest.raises(ValueError, match="kernel mode must be one of"):
        set_kernel_mode("fast")


def test_auto_uses_the_references_off_cuda(monkeypatch, calls):
    monkeypatch.setenv("FASTGEN_KERNELS", "auto")
    x0, eps, x0_index, eps_index, c0, c1, weight = _step_inputs()
    assert not dispatch.use_triton(x0)
    ops.noised_batch(x0, eps, x0_index, eps_index, c0, c1, torch.float16)
    ops.prediction_errors(x0[x0_index], x0, eps, x0_index, eps_index, c0, -c1, weight, "l1")
    assert calls == {"noised_batch": 0, "prediction_errors": 0}


@needs_kernels
def test_forced_triton_reaches_the_kernels_and_matches(calls):
    x0, eps, x0_index, eps_index, c0, c1, weight = _step_inputs(1)
    prediction = torch.randn(5, 2, 5, 3, generator=torch.Generator().manual_seed(7))
    sums, want_sums = torch.zeros(3), torch.zeros(3)
    with kernel_mode_scope("triton"):
        x_t = ops.noised_batch(x0, eps, x0_index, eps_index, c0, c1, torch.float32)
        errors = ops.prediction_errors(
            prediction, x0, eps, x0_index, eps_index, c0, -c1, weight, "huber", x0_index, sums
        )
    assert calls == {"noised_batch": 1, "prediction_errors": 1}
    torch.testing.assert_close(x_t, noised_batch_ref(x0, eps, x0_index, eps_index, c0, c1, torch.float32))
    want = prediction_errors_ref(
        prediction, x0, eps, x0_index, eps_index, c0, -c1, weight, "huber", x0_index, want_sums
    )
    torch.testing.assert_close(errors, want, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(sums, want_sums, rtol=2e-6, atol=1e-6)


class _Step(torch.nn.Module):
    """The engine's two steps around a stand-in denoiser, as an exporter would see them."""

    def forward(self, x0, eps, x0_index, eps_index, c0, c1, weight):
        x_t = ops.noised_batch(x0, eps, x0_index, eps_index, c0, c1, torch.float32)
        prediction = torch.tanh(x_t)
        return ops.prediction_errors(prediction, x0, eps, x0_index, eps_index, c0, -c1, weight, "l2")


def test_export_keeps_the_graph_free_of_custom_kernels(calls):
    inputs = _step_inputs(2)
    with kernel_mode_scope("triton"):
        exported = torch.export.export(_Step(), inputs)
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert targets and not any("fastgen" in target for target in targets), targets
    assert calls == {"noised_batch": 0, "prediction_errors": 0}
    torch.testing.assert_close(exported.module()(*inputs), _Step()(*inputs))


def test_references_work_without_triton_and_forcing_it_says_what_to_install():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # as on an install without Triton
        import torch
        from fastgen.engine import ops
        from fastgen.kernels import set_kernel_mode
        bank, index = torch.randn(2, 3, 4), torch.tensor([1, 0, 1])
        coef = torch.tensor([0.5, 0.6, 0.7])
        x_t = ops.noised_batch(bank, bank, index, index, coef, coef, torch.float16)
        assert x_t.shape == (3, 3, 4) and x_t.dtype == torch.float16
        set_kernel_mode("triton")
        try:
            ops.noised_batch(bank, bank, index, index, coef, coef, torch.float16)
        except ImportError as error:
            print(error)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "pip install fastgen[triton]" in done.stdout


# -- the whole classifier -----------------------------------------------------------------------
def _classifier(folder, classes, **options):
    settings = {"policy": "exhaustive", "policy_options": {"n_samples": 4}, "device": "cpu", "batch_size": 7}
    settings.update(options)
    return DiffusionClassifier.from_pretrained(folder, classes=classes, **settings)


def _run_both(clf, images, calls):
    with kernel_mode_scope("torch"):
        plain = clf.classify(images)
    assert calls == {"noised_batch": 0, "prediction_errors": 0}
    with kernel_mode_scope("triton"):
        fused = clf.classify(images)
    assert calls["noised_batch"] > 0 and calls["prediction_errors"] > 0
    return plain, fused


def _assert_same_results(fused, plain):
    for got, want in zip(fused, plain):
        assert np.isfinite(want.partial_errors).all() and np.ptp(want.partial_errors) > 0
        np.testing.assert_allclose(got.partial_errors, want.partial_errors, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.isnan(got.errors), np.isnan(want.errors))
        np.testing.assert_array_equal(got.n_samples, want.n_samples)
        assert got.prediction == want.prediction and got.unet_evals == want.unet_evals


@needs_kernels
@pytest.mark.parametrize(
    "kind, classes, options",
    [
        ("latent-text-v", ["cat", "dog", "bird"], {}),  # v-prediction, VAE latents, l2
        ("dit", ["class0", "class1", "class2"], {"loss": "huber", "weighting": 7.0}),  # eps half of [eps, var]
    ],
    ids=["latent-v-l2", "dit-huber-weighted"],
)
def test_classifier_gives_the_same_results_with_kernels(model_dirs, images, calls, kind, classes, options):
    clf = _classifier(model_dirs[kind], classes, **options)
    plain, fused = _run_both(clf, images[:3], calls)
    _assert_same_results(fused, plain)


@needs_kernels
def test_paired_policy_with_a_sample_prediction_model(tmp_path, images, calls):
    # x0-predicting model, l1 loss, adaptive pruning driven by the per-row errors
    folder = make_pixel_text(tmp_path / "pixel-sample", prediction_type="sample", seed=9)
    policy = {"alpha": 0.3, "min_samples": 3, "max_samples": 7, "check_every": 2}
    clf = _classifier(folder, ["cat", "dog", "bird", "fish"], policy="paired", policy_options=policy, loss="l1")
    assert clf.adapter.prediction_type == "sample"
    plain, fused = _run_both(clf, images[:2], calls)
    _assert_same_results(fused, plain)
