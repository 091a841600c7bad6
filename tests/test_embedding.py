"""Embedding in other tools: `as_module()`, the model-vs-human wrapper, and its example."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastgen import DiffusionClassifier
from fastgen.api.module import IMAGENET_MEAN, IMAGENET_STD
from fastgen.eval.model_vs_human import (
    CATEGORIES_16,
    IMAGENET_RANGES_16,
    ModelVsHumanWrapper,
    imagenet_indices,
    imagenet_to_categories,
    model_vs_human_classifier,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "model_vs_human.py"


def _batch(images, n=3, size=16) -> torch.Tensor:
    """Square crops of the seeded fixture images, one batch [n, 3, size, size] in [0, 1]."""
    return torch.stack([image[:, :size, :size] for image in images[:n]])


def _normalise(batch: torch.Tensor) -> torch.Tensor:
    return (batch - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def exhaustive(model_dirs) -> DiffusionClassifier:
    return DiffusionClassifier.from_pretrained(
        model_dirs["latent-text"], classes=["cat", "dog", "bird", "fish"], policy="exhaustive",
        policy_options={"n_samples": 6}, device="cpu", batch_size=24,
    )  # fmt: skip


def test_as_module_matches_classify(exhaustive, images):
    batch = _batch(images)
    results = exhaustive.classify(list(batch))
    module = exhaustive.as_module(temperature=0.05)
    assert isinstance(module, torch.nn.Module) and not list(module.parameters())
    with torch.no_grad():
        logits = module.eval()(batch)
    assert logits.shape == (3, 4) and logits.dtype == torch.float32
    errors = torch.tensor(np.stack([r.errors for r in results]), dtype=torch.float32)
    torch.testing.assert_close(logits, -errors / 0.05, rtol=1e-6, atol=1e-5)
    assert logits.argmax(dim=1).tolist() == [r.prediction_index for r in results]
    probabilities = np.stack([r.probabilities(0.05) for r in results])
    np.testing.assert_allclose(logits.softmax(dim=1).numpy(), probabilities, rtol=1e-4, atol=1e-6)


def test_as_module_undoes_the_documented_normalisation(exhaustive, images):
    batch = _batch(images)
    plain = exhaustive.as_module()(batch)
    normalised = exhaustive.as_module(mean=IMAGENET_MEAN, std=IMAGENET_STD)(_normalise(batch))
    torch.testing.assert_close(normalised, plain, rtol=0, atol=1e-5)


def test_as_module_marks_pruned_classes_minus_infinity(model_dirs, images):
    clf = DiffusionClassifier.from_pretrained(
        model_dirs["pixel-text"], classes=["cat", "dog", "bird", "fish"], policy="stages",
        policy_options={"n_samples": (2, 6), "to_keep": (2, 1)}, device="cpu",
    )  # fmt: skip
    batch = _batch(images, n=2, size=8)
    logits = clf.as_module()(batch)
    results = clf.classify(list(batch))
    for row, result in zip(logits, results):
        assert torch.isinf(row).sum() == 3 and row.argmax().item() == result.prediction_index
        assert torch.equal(torch.isinf(row), torch.from_numpy(np.isnan(result.errors)))


def test_as_module_rejects_unbatched_or_unnormalised_inputs(exhaustive, images):
    module = exhaustive.as_module()
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        module(images[0])
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        module(_normalise(_batch(images)))  # normalised inputs given to a [0, 1] module
    with pytest.raises(ValueError, match="both mean and std"):
        exhaustive.as_module(mean=IMAGENET_MEAN)


def test_sixteen_category_mapping_data():
    assert tuple(sorted(CATEGORIES_16)) == CATEGORIES_16 and len(CATEGORIES_16) == 16
    everything = np.concatenate([imagenet_indices(c) for c in CATEGORIES_16])
    assert len(everything) == 207 and len(set(everything.tolist())) == 207
    assert everything.min() >= 0 and everything.max() < 1000
    counts = {c: len(imagenet_indices(c)) for c in ("airplane", "bird", "cat", "dog", "truck")}
    assert counts == {"airplane": 1, "bird": 49, "cat": 6, "dog": 109, "truck": 8}
    assert imagenet_indices("knife").tolist() == [499] and imagenet_indices("bear").tolist() == [294, 295, 296, 297]
    assert all(a <= b for ranges in IMAGENET_RANGES_16.values() for a, b in ranges)


@pytest.fixture(scope="module")
def sixteen(model_dirs) -> DiffusionClassifier:
    return model_vs_human_classifier(
        model_dirs["pixel-text"], policy="exhaustive", policy_options={"n_samples": 4}, device="cpu", batch_size=64
    )


def test_model_vs_human_wrapper_agrees_with_the_classifier(sixteen, images):
    wrapper = ModelVsHumanWrapper(sixteen, temperature=0.01)
    batch = _batch(images, n=3, size=16)
    logits = wrapper.forward_batch(_normalise(batch))
    assert isinstance(logits, np.ndarray) and logits.shape == (3, 1000) and logits.dtype == np.float32
    results = sixteen.classify(list(batch))
    # model-vs-human's decision (mean probability over each category's indices) is the prediction
    assert wrapper.decisions(logits) == [r.prediction for r in results]
    probabilities = wrapper.softmax(logits)
    covered = np.zeros(1000, dtype=bool)
    covered[np.concatenate([imagenet_indices(c) for c in CATEGORIES_16])] = True
    assert np.all(probabilities[:, ~covered] == 0) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    # and its 16-way probabilities, renormalised, are the classifier's own softmax
    per_category = imagenet_to_categories(probabilities)
    per_category /= per_category.sum(axis=1, keepdims=True)
    order = [sixteen.classes.names.index(c) for c in CATEGORIES_16]
    want = np.stack([r.probabilities(0.01)[order] for r in results])
    np.testing.assert_allclose(per_category, want, rtol=1e-3, atol=1e-6)
    assert (want.max(axis=1) / want.min(axis=1)).min() > 1.3  # far from uniform: a real comparison


def test_model_vs_human_wrapper_needs_the_sixteen_categories(exhaustive):
    with pytest.raises(ValueError, match="16 model-vs-human categories"):
        ModelVsHumanWrapper(exhaustive)


def test_model_vs_human_example_runs(model_dirs, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("model_vs_human_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    paths = example.synthetic_cue_conflict_images(tmp_path / "images", n=3)
    code = example.main(
        [
            "--model",
            str(model_dirs["pixel-text"]),
            "--images",
            str(tmp_path / "images"),
            "--n-samples",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines[:-1]] == sorted(p.name for p in paths)
    assert all(line["decision"] in CATEGORIES_16 for line in lines[:-1])
    assert lines[-1]["images"] == 3
