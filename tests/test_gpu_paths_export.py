"""The ONNX Runtime / TensorRT GPU paths, checked on CPU through the logic that chooses and
drives them: the providers a session really uses, the stream handed to ONNX Runtime, NaN-proof
verification, and an engine's ONNX step that needs no ONNX Runtime.

Not testable here (no CUDA, no TensorRT): that the side stream orders ORT/TensorRT work after
torch's writes on a GPU, that `execute_async_v3` runs under the model's device, and that ORT's
IO binding and CUDA-graph capture run under the model's device (each allocates on the CUDA
device inside its guard, which a CPU run cannot reach); `fastgen selftest --device cuda` runs
these paths against the reference on a GPU. TensorRT's two calls (engine build, engine run) are
stood in for to test the chain around them."""

from __future__ import annotations

import copy
import logging
import sys

import pytest
import torch

from fastgen.backends.onnxruntime_backend import OnnxRuntimeBackend, dropped_providers, uses_io_binding
from fastgen.backends.spec import adapter_spec
from fastgen.backends.streams import check_stream_handle
from fastgen.export import pipeline
from fastgen.export.cache import ExportCache
from fastgen.export.onnx_export import ExportParityError, export_onnx, max_relative_difference, verify_onnx
from fastgen.models import load_adapter

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnx", reason="the onnx extra is not installed")


def test_a_nan_output_is_an_infinite_difference_never_a_pass():
    want = torch.tensor([[0.5, -1.5], [2.0, 0.25]])
    assert max_relative_difference(want + 1e-4, want) == pytest.approx(5e-5, rel=1e-3)
    for bad in (float("nan"), float("inf")):
        got = want.clone()
        got[1, 0] = bad
        assert max_relative_difference(got, want) == float("inf")
    assert max_relative_difference(want[:1], want) == float("inf")  # wrong batch
    # Where the reference itself is not finite, it does not condemn the export.
    both = want.clone()
    both[0, 0] = float("nan")
    assert max_relative_difference(both, both) == 0.0


def test_verification_rejects_an_export_that_outputs_nan(model_dirs, tmp_path):
    adapter = load_adapter(model_dirs["label-unet"])
    spec = adapter_spec(adapter)
    poisoned = copy.deepcopy(adapter.denoiser)
    with torch.no_grad():
        next(p for name, p in poisoned.named_parameters() if name.endswith("bias")).fill_(float("nan"))
    export_onnx(poisoned, spec, tmp_path / "model.onnx", exporter="torchscript")
    with pytest.raises(ExportParityError, match="relative difference inf"):
        verify_onnx(tmp_path / "model.onnx", adapter.denoiser, spec)


def test_io_binding_follows_the_providers_the_session_really_uses():
    assert uses_io_binding("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert uses_io_binding("cuda:1", ["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    # The CUDA provider failed to load and ORT fell back: binding to "cuda" would raise.
    assert not uses_io_binding("cuda", ["CPUExecutionProvider"])
    assert not uses_io_binding("cpu", ["CPUExecutionProvider"])
    assert dropped_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]) == [
        "CUDAExecutionProvider"
    ]


def test_a_session_that_drops_a_provider_says_so_and_records_what_it_uses(model_dirs, tmp_path, caplog):
    """A CPU-only onnxruntime asked for the CUDA provider falls back without raising."""
    adapter = load_adapter(model_dirs["label-unet"])
    spec = adapter_spec(adapter)
    export_onnx(adapter.denoiser, spec, tmp_path / "model.onnx", exporter="torchscript")
    asked = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level(logging.WARNING, logger="fastgen.backends.onnxruntime_backend"):
        backend = OnnxRuntimeBackend(tmp_path / "model.onnx", spec, device="cpu", providers=asked)
    described = backend.describe()
    assert described["providers"] == ["CPUExecutionProvider"] and described["requested_providers"] == asked
    assert described["io_binding"] is False
    assert "could not use ['CUDAExecutionProvider']" in caplog.text
    inputs = spec.dummy_inputs(3, dtype=torch.float32, device="cpu", seed=4)
    with torch.no_grad():
        assert max_relative_difference(backend(*inputs), adapter.denoiser(*inputs)) < 1e-4


def test_ort_is_never_handed_the_default_stream(model_dirs):
    # The default stream's handle is 0, which ORT reads as "no stream": refused, not passed on.
    with pytest.raises(ValueError, match="default CUDA stream"):
        check_stream_handle(0)
    assert check_stream_handle(94_000_123) == "94000123"
    spec = adapter_spec(load_adapter(model_dirs["label-unet"]))
    common = {"batch_sizes": None, "cache_dir": None, "fp16": False}
    options = OnnxRuntimeBackend._provider_options("CUDAExecutionProvider", "cuda:1", spec, stream=777, **common)
    assert options == {"device_id": 1, "user_compute_stream": "777"}
    with pytest.raises(ValueError, match="default CUDA stream"):
        OnnxRuntimeBackend._provider_options("CUDAExecutionProvider", "cuda:0", spec, stream=0, **common)
    trt = OnnxRuntimeBackend._provider_options("TensorrtExecutionProvider", "cuda:0", spec, stream=55, **common)
    assert trt["user_compute_stream"] == "55"


def test_an_engines_onnx_step_needs_no_onnxruntime_and_is_verified_when_reused(model_dirs, tmp_path, monkeypatch):
    """The `tensorrt` extra installs no onnxruntime: the export an engine is built from must not
    open a session. Reused later by the onnxruntime backend, it is verified then."""
    adapter = load_adapter(model_dirs["label-unet"])
    spec, cache = adapter_spec(adapter), ExportCache(tmp_path)
    with monkeypatch.context() as blocked:
        blocked.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises
        made = pipeline.engine_source(adapter.denoiser, spec, model="tiny", cache=cache, exporter="torchscript")
    assert made.built and made.path.exists()
    verified = []
    real_verify = pipeline.verify_onnx
    monkeypatch.setattr(pipeline, "verify_onnx", lambda *a, **k: verified.append(real_verify(*a, **k)))
    again = pipeline.ensure_onnx(adapter.denoiser, spec, model="tiny", cache=cache, exporter="torchscript")
    assert not again.built and again.path == made.path
    assert len(verified) == 1 and verified[0] < 1e-4


def test_a_bf16_denoiser_exports_for_an_engine_without_onnxruntime(model_dirs, tmp_path, monkeypatch):
    adapter = load_adapter(model_dirs["label-unet"], dtype=torch.bfloat16)
    spec = adapter_spec(adapter)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    made = pipeline.engine_source(
        adapter.denoiser, spec, model="tiny", cache=ExportCache(tmp_path), exporter="torchscript"
    )
    import onnx

    graph = onnx.load(str(made.path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16


def test_building_an_engine_exports_its_onnx_without_onnxruntime(model_dirs, tmp_path, monkeypatch):
    """ensure_engine's whole chain on CPU, with TensorRT's two calls stood in for: the ONNX step
    runs with onnxruntime unimportable, is cached unverified, and a build failure keeps it."""
    adapter = load_adapter(model_dirs["label-unet"])
    spec, cache = adapter_spec(adapter), ExportCache(tmp_path)
    monkeypatch.setattr(pipeline, "import_tensorrt", lambda purpose: None)
    monkeypatch.setattr(pipeline, "engine_device", lambda denoiser: torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises
    built = []

    def failing_build(onnx_path, plan, spec, **options):
        built.append(onnx_path)
        raise RuntimeError("engine build failed (stand-in)")

    monkeypatch.setattr(pipeline, "build_engine", failing_build)
    common = {"model": str(model_dirs["label-unet"]), "cache": cache, "batch_sizes": (1, 4, 8)}
    with pytest.raises(RuntimeError, match="stand-in"):
        pipeline.ensure_engine(adapter.denoiser, spec, exporter="torchscript", **common)
    assert len(built) == 1 and built[0].name == "model.onnx" and built[0].exists()

    def fake_build(onnx_path, plan, spec, **options):
        built.append(onnx_path)
        plan.write_bytes(b"plan")
        return {"engine_bytes": 4}

    monkeypatch.setattr(pipeline, "build_engine", fake_build)
    result = pipeline.ensure_engine(adapter.denoiser, spec, exporter="torchscript", verify=False, **common)
    assert result.built and result.path.read_bytes() == b"plan"
    assert built[1] == built[0]  # the export of the failed try was reused, not redone
    assert "parity_max_rel_diff" not in pipeline._read_meta(built[0].parent)


def test_engine_verification_rejects_an_engine_that_outputs_nan(model_dirs, monkeypatch):
    """verify_engine on a stand-in engine whose outputs hold a NaN: never a pass."""
    adapter = load_adapter(model_dirs["label-unet"])
    spec = adapter_spec(adapter)

    class NanEngine:
        def __init__(self, plan, spec, **options):
            pass

        def __call__(self, x_t, t, cond):
            with torch.no_grad():
                out = adapter.denoiser(x_t, t, cond).clone()
            out[0, 0, 0, 0] = float("nan")
            return out

    import fastgen.backends.tensorrt_backend as tensorrt_backend

    monkeypatch.setattr(tensorrt_backend, "TensorRTBackend", NanEngine)
    with pytest.raises(RuntimeError, match="max relative difference inf"):
        pipeline.verify_engine("model.plan", adapter.denoiser, spec, (1, 2, 3))
