"""Fitted timestep weights: drawn where they say, saved with a model, applied identically by the
engine and the reference."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch
from helpers import errors_of

from fastgen import DiffusionClassifier
from fastgen.engine.sampling import timestep_sequence, warp_by_band_weights
from fastgen.eval.timestep_fit import fit_timestep_weights, weights_from_band_errors

CLASSES = ["cat", "dog", "bird"]


def test_band_weights_move_the_nested_grid_into_the_weighted_bands():
    u = torch.rand(500, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(warp_by_band_weights(u, (1.0,) * 7), u, atol=1e-12)
    weights = (0.0, 2.0, 0.0, 1.0)
    t = timestep_sequence(64, 1000, band_weights=weights)
    assert torch.equal(t[:16], timestep_sequence(16, 1000, band_weights=weights))  # still nested
    band = t // 250
    assert set(band.tolist()) == {1, 3} and abs(int((band == 1).sum()) - 2 * int((band == 3).sum())) <= 2
    random = timestep_sequence(400, 1000, mode="random", seed=5, band_weights=weights)
    assert set((random // 250).tolist()) == {1, 3}


def test_fitting_rule_weights_the_bands_that_separate_classes():
    gen = np.random.default_rng(0)
    labels = gen.integers(0, 3, size=40)
    errors = gen.normal(1.0, 0.05, size=(4, 40, 3))
    errors[1, np.arange(40), labels] -= 0.2  # band 1 separates the classes strongly
    errors[2, np.arange(40), labels] -= 0.05  # band 2 weakly; bands 0 and 3 not at all
    weights = weights_from_band_errors(errors, labels, samples_per_band=4, floor=0.02)
    assert weights[1] == 1.0 and 0 < weights[2] < 0.5 and weights[0] == weights[3] == 0.0


def test_fitted_weights_round_trip_with_a_model_and_apply_identically(model_dirs, images, tmp_path):
    train = DiffusionClassifier.from_pretrained(
        model_dirs["pixel-text"], classes=CLASSES, device="cpu", policy="exhaustive", policy_options={"n_samples": 16}
    )
    # Random weights know no real classes: label the images by the model's own exhaustive choice.
    labels = [r.prediction_index for r in train.classify(images[:4])]
    weights = fit_timestep_weights(train, images[:4], labels, n_bands=5, samples_per_band=2)
    assert len(weights) == 5 and max(weights) == 1.0 and min(weights) >= 0
    folder = tmp_path / "model"
    shutil.copytree(model_dirs["pixel-text"], folder)
    (folder / "fastgen.json").write_text(json.dumps({"scoring": {"timestep_weights": list(weights)}}))
    clf = DiffusionClassifier.from_pretrained(
        folder, classes=CLASSES, device="cpu", policy="exhaustive", policy_options={"n_samples": 6}, batch_size=5
    )
    assert clf.config.timestep_weights == weights
    steps = clf.plan.timesteps(6)
    allowed = {j for j, w in enumerate(weights) if w > 0}
    assert {int(t) * 5 // 1000 for t in steps} <= allowed
    reference = [clf.classify_reference(image) for image in images[4:6]]
    np.testing.assert_allclose(errors_of(clf.classify(images[4:6])), errors_of(reference), rtol=0, atol=1e-5)
    explicit = DiffusionClassifier.from_pretrained(
        folder, classes=CLASSES, device="cpu", timestep_weights=(1, 1, 1, 1, 1)
    )
    assert explicit.config.timestep_weights == (1.0,) * 5  # the user's choice wins over the model's
