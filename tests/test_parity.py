"""The engine's per-class errors equal the reference's, whatever the batching and order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_same_predictions, errors_of, small_classifier

KINDS = ["latent-text", "latent-text-v", "pixel-text", "dit", "label-unet"]


def _assert_same(results, reference):
    np.testing.assert_allclose(errors_of(results), errors_of(reference), rtol=0, atol=1e-5)
    assert_same_predictions(results, reference, atol=1e-5)
    assert [r.unet_evals for r in results] == [r.unet_evals for r in reference]


@pytest.mark.parametrize("kind", KINDS)
def test_engine_matches_reference_across_batch_sizes_and_orders(model_dirs, images, kind):
    clf = small_classifier(model_dirs[kind], kind)
    reference = [clf.classify_reference(image) for image in images[:3]]
    assert np.isfinite(errors_of(reference)).all()
    # the errors must tell classes apart, or equality would prove little
    assert errors_of(reference).std(axis=1).min() > 0
    for batch_size in (1, 4, 7, 64):
        clf.batch_size = batch_size
        _assert_same(clf.classify(images[:3]), reference)
    clf.batch_size = 4
    reversed_results = clf.classify(images[:3][::-1])[::-1]
    _assert_same(reversed_results, reference)
    # the three images mixed with two others in shared batches
    mixed = clf.classify([images[3], images[0], images[4], images[1], images[2]])
    _assert_same([mixed[1], mixed[3], mixed[4]], reference)


@pytest.mark.parametrize(
    "options",
    [
        {"loss": "l1", "timesteps": "random", "seed": 3},
        {"loss": "huber", "weighting": 7.0},
        {"templates": ["a photo of a {}.", "a drawing of a {}."], "aggregate": "min"},
        {"templates": ["a photo of a {}.", "a drawing of a {}."], "aggregate": "mean", "seed": 11},
    ],
    ids=["l1-random", "huber-exp", "two-prompts-min", "two-prompts-mean"],
)
def test_scoring_options_match_reference(model_dirs, images, options):
    clf = small_classifier(model_dirs["latent-text-v"], "latent-text-v", batch_size=6, **options)
    reference = [clf.classify_reference(image) for image in images[:2]]
    _assert_same(clf.classify(images[:2]), reference)


@pytest.mark.parametrize(
    "policy, policy_options",
    [
        ("stages", {"n_samples": (2, 5, 8), "to_keep": (2, 2, 1)}),
        ("paired", {"alpha": 0.3, "min_samples": 3, "max_samples": 9, "check_every": 2}),
    ],
)
def test_adaptive_policies_match_reference(model_dirs, images, policy, policy_options):
    clf = small_classifier(
        model_dirs["pixel-text"], "pixel-text", policy=policy, policy_options=policy_options, batch_size=5
    )
    reference = [clf.classify_reference(image) for image in images[:3]]
    results = clf.classify(images[:3])
    for got, want in zip(results, reference):
        np.testing.assert_array_equal(np.isnan(got.errors), np.isnan(want.errors))
        np.testing.assert_allclose(got.partial_errors, want.partial_errors, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(got.n_samples, want.n_samples)
        assert got.prediction == want.prediction and got.unet_evals == want.unet_evals


def test_results_do_not_depend_on_other_images(model_dirs, images):
    clf = small_classifier(model_dirs["dit"], "dit", batch_size=5)
    alone = clf.classify(images[2])[0]
    together = clf.classify(images)[2]
    np.testing.assert_allclose(alone.errors, together.errors, rtol=0, atol=1e-5)


def test_seed_changes_the_noise_but_not_determinism(model_dirs, images):
    a = small_classifier(model_dirs["pixel-text"], "pixel-text", seed=1).classify(images[0])[0]
    b = small_classifier(model_dirs["pixel-text"], "pixel-text", seed=1).classify(images[0])[0]
    c = small_classifier(model_dirs["pixel-text"], "pixel-text", seed=2).classify(images[0])[0]
    np.testing.assert_array_equal(a.errors, b.errors)
    assert np.abs(a.errors - c.errors).max() > 1e-4


def test_accepts_pil_numpy_tensor_and_path_inputs_alike(model_dirs, images, tmp_path):
    from PIL import Image

    clf = small_classifier(model_dirs["pixel-text"], "pixel-text")
    u8 = (images[3] * 255).round().to(torch.uint8)
    array = u8.permute(1, 2, 0).numpy()
    Image.fromarray(array).save(tmp_path / "img.png")
    results = clf.classify([Image.fromarray(array), array, u8, tmp_path / "img.png", str(tmp_path / "img.png")])
    for result in results[1:]:
        np.testing.assert_allclose(result.errors, results[0].errors, rtol=0, atol=1e-6)
    assert results[3].path == str(tmp_path / "img.png")
