"""The torch path's GPU-only choices, checked on CPU through the logic that makes them: no device
value read in the per-call input check, one staged copy per dtype for a batch's small tensors,
and which compile settings imply CUDA graphs."""

from __future__ import annotations

import pytest
import torch

from fastgen.backends.spec import adapter_spec
from fastgen.engine import transfer
from fastgen.models import load_adapter


def test_the_input_check_reads_no_device_values(model_dirs):
    """Meta tensors have shapes but no values: reading one (as rows.min() on a GPU would, with a
    host sync) raises. The check must pass on them, and still reject bad host rows."""
    spec = adapter_spec(load_adapter(model_dirs["latent-text"]))
    x_t, t, cond = spec.dummy_inputs(3, dtype=torch.float32, device="cpu", seed=1)
    rows = torch.tensor([0, 2, 2, 1, 0])
    cond_rows = cond[:1].expand(5, *cond.shape[1:])
    meta = lambda v: v.to("meta")
    assert spec.check(meta(x_t), meta(t), meta(cond_rows), meta(rows)) == 5
    assert spec.check(x_t, t, cond_rows, rows) == 5
    with pytest.raises(ValueError, match="indices below 3"):
        spec.check(x_t, t, cond_rows, torch.tensor([0, 3, 1, 1, 0]))
    with pytest.raises(ValueError, match="has shape"):
        spec.check(meta(x_t), meta(t), meta(cond), meta(rows))  # shapes are still checked


def test_staging_packs_one_copy_per_dtype_and_keeps_values():
    g = torch.Generator().manual_seed(3)
    host = {
        "slot": torch.randint(0, 9, (7,), generator=g),
        "coef": torch.rand(7, generator=g, dtype=torch.float64).float(),
        "weight": torch.rand(7, generator=g),
        "grid": torch.randint(0, 5, (2, 3), generator=g),
    }
    copies = []
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        copies.append(self.dtype)
        return real_to(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "to", counting_to)
        # The GPU path's packing, run to the CPU here.
        packed = transfer._packed_copy(host, torch.device("cpu"), pin=False)
    assert sorted(copies, key=str) == sorted([torch.int64, torch.float32], key=str)  # one per dtype
    for name, value in host.items():
        assert packed[name].dtype == value.dtype and torch.equal(packed[name], value)
    assert transfer.stage(host, "cpu") == host  # on the CPU nothing is copied


def test_the_engine_stages_each_batch_in_one_call_before_the_denoiser(model_dirs, images, monkeypatch):
    """Every per-row index and coefficient vector of a batch goes through one `stage` call (one
    copy per dtype on a GPU), made before the denoiser is launched; none is copied on its own."""
    from fastgen import DiffusionClassifier
    from fastgen.engine import runner

    events = []
    real_stage = runner.stage

    def recording_stage(tensors, device):
        events.append(("stage", sorted(tensors)))
        return real_stage(tensors, device)

    monkeypatch.setattr(runner, "stage", recording_stage)
    clf = DiffusionClassifier.from_pretrained(
        model_dirs["pixel-text"], classes=["cat", "dog", "bird"], policy="exhaustive",
        policy_options={"n_samples": 5}, batch_size=7, device="cpu",
    )  # fmt: skip
    denoiser = clf.denoise

    def recording_denoiser(*args, **kwargs):
        events.append(("denoise", None))
        return denoiser(*args, **kwargs)

    recording_denoiser.shares_prefix = denoiser.shares_prefix
    clf.denoise = recording_denoiser
    clf.classify(images[:3])
    staged = [keys for kind, keys in events if kind == "stage"]
    assert len(staged) == -(-3 * 3 * 5 // 7)  # 45 rows in batches of 7
    assert [kind for kind, _ in events] == ["stage", "denoise"] * len(staged)
    vectors = {"alpha", "sigma", "target_a", "target_b", "weight", "timesteps", "slot", "sample", "prompt", "rows"}
    assert all(vectors <= set(keys) for keys in staged)


def test_pinning_is_chosen_for_cuda_only():
    assert not transfer.pins_for(torch.device("cpu"))
    assert transfer.pins_for(torch.device("cuda")) == torch.cuda.is_available()


def test_graph_compile_modes_clone_outputs_even_without_cuda_graphs():
    from fastgen.backends.torch_backend import compile_settings

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    common = {"compile": True, "backend": "inductor"}
    # inductor captures CUDA graphs in these modes whatever cuda_graphs says: outputs must be cloned
    assert compile_settings(cuda_graphs=False, mode="reduce-overhead", device=cuda, **common) == (
        "reduce-overhead",
        True,
    )
    assert compile_settings(cuda_graphs=False, mode="max-autotune", device=cuda, **common) == ("max-autotune", True)
    assert compile_settings(cuda_graphs=True, mode=None, device=cuda, **common) == ("reduce-overhead", True)
    assert compile_settings(cuda_graphs=False, mode="max-autotune-no-cudagraphs", device=cuda, **common)[1] is False
    assert compile_settings(cuda_graphs=False, mode="reduce-overhead", device=cpu, **common)[1] is False
    assert compile_settings(compile=False, cuda_graphs=True, mode=None, backend="inductor", device=cuda)[1] is False
    with pytest.raises(ValueError, match="uses compile_mode 'reduce-overhead'"):
        compile_settings(cuda_graphs=True, mode="default", device=cuda, **common)


def test_non_inductor_backends_get_no_mode(model_dirs):
    from fastgen.backends.torch_backend import TorchBackend, compile_settings

    cuda = torch.device("cuda", 0)
    with pytest.raises(ValueError, match="takes no mode"):
        compile_settings(compile=True, cuda_graphs=True, mode=None, backend="eager", device=cuda)
    with pytest.raises(ValueError, match="is an inductor setting"):
        compile_settings(compile=True, cuda_graphs=False, mode="reduce-overhead", backend="aot_eager", device=cuda)
    adapter = load_adapter(model_dirs["label-unet"])
    backend = TorchBackend(adapter.denoiser, adapter_spec(adapter), compile=True, compile_backend="eager")
    assert backend._compile_kwargs == {"backend": "eager", "dynamic": False}  # torch.compile is lazy: no compile yet
    inductor = TorchBackend(adapter.denoiser, adapter_spec(adapter), compile=True, freezing=False)
    assert inductor._compile_kwargs["mode"] is None and "options" in inductor._compile_kwargs


def test_timing_the_denoiser_adds_no_synchronisation(model_dirs, monkeypatch):
    from fastgen.eval import benchmark

    synced = []
    monkeypatch.setattr(benchmark, "synchronize", lambda device: synced.append(device))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: synced.append("cuda"))
    adapter = load_adapter(model_dirs["latent-text"])
    spec = adapter_spec(adapter)
    timed = benchmark.TimedDenoise(adapter.denoiser, torch.device("cpu"))
    with torch.inference_mode():
        for batch in (3, 5):
            x_t, t, cond = spec.dummy_inputs(batch, dtype=torch.float32, device="cpu", seed=batch)
            timed(x_t, t, cond)
    assert synced == [] and timed.calls == 2 and timed.rows == 8 and timed.distinct_inputs == 8
    assert timed.seconds > 0


def test_shared_prefix_flops_are_counted_once_per_distinct_input(model_dirs):
    from fastgen import DiffusionClassifier
    from fastgen.eval.benchmark import executed_flops_per_row, flops_per_eval

    assert executed_flops_per_row(100.0, 10.0, rows=40, distinct_inputs=4) == pytest.approx(91.0)
    assert executed_flops_per_row(100.0, 10.0, rows=40, distinct_inputs=40) == 100.0
    assert executed_flops_per_row(100.0, 0.0, rows=40, distinct_inputs=4) == 100.0
    clf = DiffusionClassifier.from_pretrained(model_dirs["latent-text"], classes=["cat", "dog"], device="cpu")
    assert clf.adapter.denoiser.shares_prefix
    full, prefix = flops_per_eval(clf), flops_per_eval(clf, prefix_only=True)
    assert 0 < prefix < full


def test_gpu_memory_of_onnxruntime_and_tensorrt_is_measured_device_wide():
    from types import SimpleNamespace

    from fastgen.eval.benchmark import has_own_allocator, memory_measure

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for name in ("onnxruntime", "tensorrt"):
        assert has_own_allocator(SimpleNamespace(name=name))
        assert "every allocator" in memory_measure(cuda, SimpleNamespace(name=name))
    assert memory_measure(cuda, SimpleNamespace(name="torch")) == "torch allocator peak"
    assert "resident" in memory_measure(cpu, SimpleNamespace(name="onnxruntime"))  # RSS sees every arena
