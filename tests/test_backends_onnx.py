"""ONNX export and the onnxruntime backend: per-class errors equal torch eager fp32's, exports
are checked and verified, reused from the cache, and the CLI drives all of it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from helpers import assert_same_predictions, errors_of, file_lines, small_classifier

from fastgen.backends.onnxruntime_backend import OnnxRuntimeBackend, choose_providers
from fastgen.backends.spec import adapter_spec
from fastgen.commands.main import main
from fastgen.export.onnx_export import ExportParityError, export_onnx, module_bytes, verify_onnx
from fastgen.models import load_adapter

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnx", reason="the onnx extra is not installed")

KINDS = ["latent-text", "pixel-text", "dit", "label-unet"]
SLOW = os.environ.get("FASTGEN_SLOW_TESTS", "") not in ("", "0")


def _assert_matches_eager(results, eager):
    assert np.isfinite(errors_of(eager)).all() and errors_of(eager).std(axis=1).min() > 0
    np.testing.assert_allclose(errors_of(results), errors_of(eager), rtol=0, atol=1e-4)
    assert_same_predictions(results, eager, atol=1e-4)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(11)
    return [torch.rand(3, 16, 16, generator=g) * 0.8 + 0.1 for _ in range(3)]


def _exports(root):
    return sorted(p for p in root.rglob("model.onnx"))


@pytest.mark.parametrize("kind", KINDS)
def test_onnxruntime_cpu_matches_eager(model_dirs, images, tmp_path, kind):
    eager = small_classifier(model_dirs[kind], kind).classify(images)
    options = {"exporter": "torchscript"}
    clf = small_classifier(model_dirs[kind], kind, backend="onnxruntime", backend_options=options, export_dir=tmp_path)
    assert isinstance(clf.denoise, OnnxRuntimeBackend) and clf.denoise.providers == ["CPUExecutionProvider"]
    # a batch larger than the one exported with, and the engine's partial last batch (3 rows)
    clf.batch_size = 9
    _assert_matches_eager(clf.classify(images), eager)
    meta = json.loads((clf.denoise.path.parent / "meta.json").read_text())
    assert meta["parity_max_rel_diff"] < 1e-4 and meta["key"]["family"] == clf.denoise.spec.family


@pytest.mark.skipif(not SLOW, reason="slow (15-30 s per kind); set FASTGEN_SLOW_TESTS=1; the CLI test covers the DiT")
@pytest.mark.parametrize("kind", KINDS)
def test_dynamo_exporter_matches_eager_on_every_kind(model_dirs, images, tmp_path, kind):
    """The default exporter on every kind; the CLI test below runs it on the DiT every time."""
    eager = small_classifier(model_dirs[kind], kind).classify(images)
    clf = small_classifier(model_dirs[kind], kind, backend="onnxruntime", export_dir=tmp_path)
    _assert_matches_eager(clf.classify(images), eager)


def test_cli_export_builds_once_then_classify_reuses_it(model_dirs, images, tmp_path, capsys):
    model, cache = str(model_dirs["dit"]), tmp_path / "cache"
    args = ["export", "--model", model, "--format", "onnx", "--out", str(cache), "--device", "cpu"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["built"] is True and _exports(cache) == [type(cache)(first["path"])]
    stamp = os.stat(first["path"]).st_mtime_ns
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second == {**first, "built": False}
    assert os.stat(first["path"]).st_mtime_ns == stamp and len(_exports(cache)) == 1
    meta = json.loads((type(cache)(first["path"]).parent / "meta.json").read_text())
    assert meta["exporter"] == "dynamo" and meta["key"]["exporter"] == "dynamo"

    # The same model through the API with the default exporter: found, nothing exported.
    eager = small_classifier(model, "dit").classify(images)
    clf = small_classifier(model, "dit", backend="onnxruntime", export_dir=cache)
    assert str(clf.denoise.path) == first["path"] and len(_exports(cache)) == 1
    _assert_matches_eager(clf.classify(images), eager)


def test_cli_classify_with_onnxruntime_backend(model_dirs, images, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    common = [str(folder), "--model", str(model_dirs["label-unet"]), "--device", "cpu", "--classes", "class0,class1,class2",
              "--policy", "exhaustive", "--n-samples", "4", "--batch-size", "5", "--no-progress"]  # fmt: skip
    assert main(["classify", *common, "--out", str(tmp_path / "eager.jsonl")]) == 0
    onnx = [
        "--backend",
        "onnxruntime",
        "--export-dir",
        str(tmp_path / "cache"),
        "--backend-option",
        "exporter=torchscript",
    ]
    assert main(["classify", *common, *onnx, "--out", str(tmp_path / "onnx.jsonl")]) == 0
    read = lambda name: {r["path"]: r for r in file_lines(tmp_path / name)[1]}
    eager, onnx_records = read("eager.jsonl"), read("onnx.jsonl")
    assert eager.keys() == onnx_records.keys() and len(eager) == 3
    for path, record in eager.items():
        assert onnx_records[path]["prediction"] == record["prediction"]
        for name, score in record["scores"].items():
            assert abs(onnx_records[path]["scores"][name] - score) < 1e-4
    assert len(_exports(tmp_path / "cache")) == 1


def test_weights_past_the_threshold_go_to_one_external_data_file(model_dirs, tmp_path):
    adapter = load_adapter(model_dirs["label-unet"])
    spec = adapter_spec(adapter)
    path = tmp_path / "model.onnx"
    facts = export_onnx(adapter.denoiser, spec, path, exporter="torchscript", external_data=True)
    data = tmp_path / "model.onnx.data"
    assert facts["external_data"] and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert data.stat().st_size > 0.5 * module_bytes(adapter.denoiser)  # the weights live there
    assert verify_onnx(path, adapter.denoiser, spec, batch_sizes=(1, 4)) < 1e-4


def test_verification_catches_an_export_that_does_not_match(model_dirs, tmp_path):
    """Same architecture, other weights: the parity check right after export must notice."""
    exported = load_adapter(model_dirs["latent-text"])
    other = load_adapter(model_dirs["latent-text-v"])
    spec = adapter_spec(exported)
    export_onnx(exported.denoiser, spec, tmp_path / "model.onnx", exporter="torchscript")
    assert verify_onnx(tmp_path / "model.onnx", exported.denoiser, spec) < 1e-4
    with pytest.raises(ExportParityError, match="differs from torch at batch 1"):
        verify_onnx(tmp_path / "model.onnx", other.denoiser, spec)


def test_providers_are_taken_in_order_from_what_is_installed():
    everything = [
        "CPUExecutionProvider",
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "AzureExecutionProvider",
    ]
    assert choose_providers("cuda", everything) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers("cpu", everything) == ["CPUExecutionProvider"]
    assert choose_providers("cpu") == ["CPUExecutionProvider"]  # the installed build


def _has_gpu_provider() -> bool:
    import onnxruntime

    return torch.cuda.is_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(not _has_gpu_provider(), reason="needs onnxruntime-gpu and a CUDA device; neither is here")
def test_onnxruntime_gpu_with_io_binding_matches_eager(model_dirs, images, tmp_path):
    eager = small_classifier(model_dirs["latent-text"], "latent-text", device="cuda").classify(images)
    clf = small_classifier(
        model_dirs["latent-text"], "latent-text", device="cuda", backend="onnxruntime", export_dir=tmp_path
    )
    assert clf.denoise.on_gpu
    results = clf.classify(images)
    np.testing.assert_allclose(errors_of(results), errors_of(eager), rtol=0, atol=1e-3)
