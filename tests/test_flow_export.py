"""ONNX export and ONNX Runtime for the flow transformers: SD3 with either exporter, Flux with the
dynamo exporter; the tracer's refusal of Flux names the exporter that works."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_same_predictions, errors_of

from fastgen import DiffusionClassifier
from fastgen.backends.onnxruntime_backend import OnnxRuntimeBackend
from fastgen.backends.spec import adapter_spec
from fastgen.export.onnx_export import UnsupportedExportError, export_onnx
from fastgen.models import load_adapter

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(5)
    return [torch.rand(3, 32, 32, generator=g) * 0.8 + 0.1 for _ in range(2)]


def _classifier(folder, **options):
    return DiffusionClassifier.from_pretrained(
        folder, classes=["cat", "dog", "bird"], policy="exhaustive", policy_options={"n_samples": 4},
        device="cpu", batch_size=5, **options,
    )  # fmt: skip


@pytest.mark.parametrize("kind, exporter", [("sd3", "torchscript"), ("flux", "dynamo")])
def test_onnxruntime_matches_eager_on_flow_transformers(model_dirs, images, tmp_path, kind, exporter):
    eager = _classifier(model_dirs[kind]).classify(images)
    clf = _classifier(
        model_dirs[kind], backend="onnxruntime", backend_options={"exporter": exporter}, export_dir=tmp_path
    )
    assert isinstance(clf.denoise, OnnxRuntimeBackend)
    assert clf.denoise.spec.family == f"{kind}-text"
    results = clf.classify(images)
    assert errors_of(eager).std(axis=1).min() > 0
    np.testing.assert_allclose(errors_of(results), errors_of(eager), rtol=0, atol=1e-4)
    assert_same_predictions(results, eager, atol=1e-4)


def test_the_tracer_refuses_flux_and_names_the_exporter_that_works(model_dirs, tmp_path):
    adapter = load_adapter(model_dirs["flux"])
    with pytest.raises(UnsupportedExportError, match="torchscript exporter cannot export this flux-text.*'dynamo'"):
        export_onnx(adapter.denoiser, adapter_spec(adapter), tmp_path / "model.onnx", exporter="torchscript")
