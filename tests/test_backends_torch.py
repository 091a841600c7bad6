"""The torch backend (SDPA, fused QKV, channels-last, torch.compile) gives the per-class errors
of the plain eager model, and the engine's padding for fixed-batch backends changes nothing."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from helpers import errors_of, small_classifier

from fastgen.backends.spec import adapter_spec
from fastgen.backends.torch_backend import TorchBackend
from fastgen.optional import MissingDependency

KINDS = ["latent-text", "pixel-text", "dit", "label-unet"]
SLOW = os.environ.get("FASTGEN_SLOW_TESTS", "") not in ("", "0")


def _assert_matches_eager(results, eager, atol=1e-4):
    assert np.isfinite(errors_of(eager)).all() and errors_of(eager).std(axis=1).min() > 0
    np.testing.assert_allclose(errors_of(results), errors_of(eager), rtol=0, atol=atol)
    assert [r.prediction for r in results] == [r.prediction for r in eager]
    assert [r.unet_evals for r in results] == [r.unet_evals for r in eager]


@pytest.fixture(scope="module")
def eager_results(model_dirs):
    """Torch eager fp32, the model as loaded: the baseline every backend must match."""
    g = torch.Generator().manual_seed(7)
    images = [torch.rand(3, 16, 16, generator=g) * 0.8 + 0.1 for _ in range(3)]
    return images, {kind: small_classifier(model_dirs[kind], kind).classify(images) for kind in KINDS}


def _attention_processors(clf):
    from diffusers.models.attention_processor import Attention

    return {type(m.processor).__name__ for m in clf.denoise.module.modules() if isinstance(m, Attention)}


@pytest.mark.parametrize("kind", KINDS)
def test_eager_backend_with_fused_qkv_and_channels_last_matches(model_dirs, eager_results, kind):
    images, eager = eager_results
    clf = small_classifier(model_dirs[kind], kind, backend="torch", backend_options={"channels_last": True})
    assert isinstance(clf.denoise, TorchBackend) and not clf.denoise.wants_fixed_batch
    # every attention layer of these models now runs one fused projection through SDPA
    assert _attention_processors(clf) == {"FusedAttnProcessor2_0"}
    _assert_matches_eager(clf.classify(images), eager[kind])


@pytest.mark.parametrize("kind", ["latent-text", "dit"])
def test_math_attention_matches(model_dirs, eager_results, kind):
    images, eager = eager_results
    clf = small_classifier(model_dirs[kind], kind, backend="torch", backend_options={"attention": "math"})
    assert _attention_processors(clf) == {"AttnProcessor"}
    _assert_matches_eager(clf.classify(images), eager[kind])


@pytest.mark.parametrize("kind", ["pixel-text", "label-unet"])
def test_chunk_threads_match_and_run_on_worker_threads(model_dirs, eager_results, kind):
    """threads=3 cuts every batch into 3 chunks run by worker threads with one intra-op thread
    each; the main thread keeps its own thread count."""
    images, eager = eager_results
    before = torch.get_num_threads()
    clf = small_classifier(model_dirs[kind], kind, backend="torch", backend_options={"threads": 3})
    seen: list[tuple[str, int, int]] = []
    last_layer = clf.denoise.module.unet.conv_out  # runs once per chunk, in the per-row part
    hook = last_layer.register_forward_pre_hook(
        lambda _, args: seen.append((threading.current_thread().name, torch.get_num_threads(), args[0].shape[0]))
    )
    try:
        results = clf.classify(images)
    finally:
        hook.remove()
    _assert_matches_eager(results, eager[kind])
    assert torch.get_num_threads() == before
    assert {name.split("_")[0] for name, _, _ in seen} == {"fastgen-chunk"}
    assert {threads for _, threads, _ in seen} == {1}
    # batches of 7 rows (45 in all: the last batch has 3) -> chunks of 3, 3, 1 and of 1, 1, 1
    assert sorted(rows for _, _, rows in seen) == sorted([3, 3, 1] * 6 + [1, 1, 1])
    with pytest.raises(ValueError, match="threads=0 splits batches across CPU cores"):
        small_classifier(model_dirs[kind], kind, backend="torch", backend_options={"threads": 0})


@pytest.fixture(scope="module")
def process_classifiers(model_dirs):
    """One classifier per kind with processes=2 (spawned workers are slow to start: shared)."""
    made = {}
    for kind in ("pixel-text", "label-unet"):
        made[kind] = small_classifier(model_dirs[kind], kind, backend="torch", backend_options={"processes": 2})
    yield made
    for clf in made.values():
        clf.denoise.close()


@pytest.mark.parametrize("kind", ["pixel-text", "label-unet"])
def test_worker_processes_match_eager(process_classifiers, eager_results, kind):
    """processes=2: chunks on two spawned workers; the text model's workers also run the shared
    prefix on their own range of distinct inputs."""
    images, eager = eager_results
    clf = process_classifiers[kind]
    assert clf.denoise.shares_prefix == (kind == "pixel-text")
    _assert_matches_eager(clf.classify(images), eager[kind])
    # a second run reuses the grown shared-memory buffers and still gives eager's errors
    _assert_matches_eager(clf.classify(images), eager[kind])


def test_a_dead_worker_process_is_named_not_waited_on(model_dirs, eager_results):
    images, _ = eager_results
    clf = small_classifier(model_dirs["label-unet"], "label-unet", backend="torch", backend_options={"processes": 2})
    try:
        clf.classify(images[:1])
        worker = clf.denoise._worker_processes._processes[1]
        worker.kill()
        worker.join()
        with pytest.raises(RuntimeError, match="fastgen-worker-1 stopped"):
            clf.classify(images)
    finally:
        clf.denoise.close()
    with pytest.raises(ValueError, match="pass one"):
        small_classifier(model_dirs["dit"], "dit", backend="torch", backend_options={"processes": 2, "threads": 2})


def test_fastest_cpu_settings_are_valid_backend_options(model_dirs, eager_results):
    """The preset `fastgen bench` uses on CPU loads and classifies (compile swapped for the
    quick aot_eager capture; the preset's dtype replaced by fp32 to compare with eager)."""
    from fastgen.backends.presets import fastest_settings

    images, eager = eager_results
    settings = fastest_settings("cpu", processes=2)
    assert settings["backend"] == "torch" and settings["dtype"] in (torch.bfloat16, torch.float32)
    assert settings["backend_options"]["processes"] == 2
    # small models take large CPU batches; a latent-resolution UNet gets a modest one
    assert fastest_settings("cpu", x0_shape=(1, 8, 8))["batch_size"] == 2048
    assert fastest_settings("cpu", x0_shape=(4, 64, 64))["batch_size"] == settings["batch_size"] == 256
    # in-process chunk threads instead of worker processes, to keep the quick capture in view
    options = {**settings["backend_options"], "compile_backend": "aot_eager", "processes": None, "threads": 2}
    torch._dynamo.reset()
    clf = small_classifier(model_dirs["pixel-text"], "pixel-text", backend="torch", backend_options=options)
    assert clf.denoise.wants_fixed_batch and clf.denoise.threads == 2
    _assert_matches_eager(clf.classify(images), eager["pixel-text"])


def _compiled(model_dirs, kind, compile_backend):
    torch._dynamo.reset()
    options = {"compile": True, "compile_backend": compile_backend}
    return small_classifier(model_dirs[kind], kind, backend="torch", backend_options=options)


@pytest.mark.parametrize("kind", KINDS)
def test_compiled_graph_capture_matches(model_dirs, eager_results, kind):
    """torch.compile's graph capture of every denoiser kind, static shapes, padded last batch;
    `aot_eager` runs the captured graph without inductor's slow C++ build."""
    images, eager = eager_results
    clf = _compiled(model_dirs, kind, "aot_eager")
    assert clf.denoise.wants_fixed_batch
    _assert_matches_eager(clf.classify(images), eager[kind])


@pytest.mark.parametrize("kind", ["dit"] + (["latent-text", "pixel-text", "label-unet"] if SLOW else []))
def test_torch_compile_inductor_on_cpu_matches(model_dirs, eager_results, kind):
    """The real inductor CPU build; the DiT by default (a cold build of a tiny UNet takes up to
    3 min on 2 cores), every kind with FASTGEN_SLOW_TESTS=1."""
    images, eager = eager_results
    clf = _compiled(model_dirs, kind, "inductor")
    _assert_matches_eager(clf.classify(images), eager[kind])


class _RecordingBackend(TorchBackend):
    """The real eager backend, asking for fixed batches and recording what it is called with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.wants_fixed_batch = True
        self.batch_sizes: list[int] = []

    def _run(self, x_t, t, cond, rows=None):
        self.batch_sizes.append(cond.shape[0])
        return super()._run(x_t, t, cond, rows)


@pytest.mark.parametrize("kind", ["latent-text", "label-unet"])
def test_engine_pads_partial_batches_for_fixed_batch_backends(model_dirs, eager_results, kind):
    images, eager = eager_results
    clf = small_classifier(model_dirs[kind], kind)
    backend = _RecordingBackend(clf.adapter.denoiser, adapter_spec(clf.adapter))
    clf.denoise = backend
    results = clf.classify(images)
    # 3 images x 3 classes x 5 samples = 45 rows in batches of 7: the last 3 rows are padded
    assert sum(r.unet_evals for r in results) == 45
    assert backend.batch_sizes == [7] * 7
    _assert_matches_eager(results, eager[kind], atol=1e-6)


def test_backend_rejects_inputs_that_do_not_fit_the_model(model_dirs):
    clf = small_classifier(model_dirs["pixel-text"], "pixel-text", backend="torch")
    x_t, t, cond = clf.denoise.spec.dummy_inputs(2, dtype=torch.float32)
    with pytest.raises(ValueError, match="'cond' has shape"):
        clf.denoise(x_t, t, cond[:, :5])
    with pytest.raises(ValueError, match="'t' has shape"):
        clf.denoise(x_t, t[:1], cond)


def test_unavailable_torch_options_say_why(model_dirs):
    with pytest.raises(ValueError, match="cuda_graphs=True needs the model on a CUDA device"):
        small_classifier(model_dirs["dit"], "dit", backend="torch", backend_options={"cuda_graphs": True})
    with pytest.raises(ValueError, match=r"\['fuse_qvk'\] are not options of the torch backend"):
        small_classifier(model_dirs["dit"], "dit", backend="torch", backend_options={"fuse_qvk": False})
    with pytest.raises(ValueError, match="need a backend"):
        small_classifier(model_dirs["dit"], "dit", backend_options={"compile": True})


def test_xformers_needs_its_extra(model_dirs):
    try:
        import xformers  # noqa: F401

        pytest.skip("xformers is installed here; the missing-dependency message cannot be shown")
    except ImportError:
        pass
    with pytest.raises(MissingDependency, match=r"pip install 'fastgen\[xformers\]'"):
        small_classifier(model_dirs["dit"], "dit", backend="torch", backend_options={"attention": "xformers"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device; none here")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_graphs_match_eager_on_gpu(model_dirs, kind):
    g = torch.Generator().manual_seed(7)
    images = [torch.rand(3, 16, 16, generator=g) for _ in range(3)]
    eager = small_classifier(model_dirs[kind], kind, device="cuda").classify(images)
    options = {"cuda_graphs": True, "channels_last": True}
    graphs = small_classifier(model_dirs[kind], kind, device="cuda", backend="torch", backend_options=options)
    # TF32 convolutions on both sides, but different kernels: a looser bound than on the CPU
    _assert_matches_eager(graphs.classify(images), eager, atol=1e-3)
