"""Fitted error weights: the fitting rule, the weight each sample's error gets, a model's own
weights and a caller's, and the engine equal to the reference under them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import errors_of

from fastgen import DiffusionClassifier
from fastgen.engine.config import ScoringConfig
from fastgen.engine.sampling import band_error_weight
from fastgen.eval.error_weight_fit import fit_error_weights, weights_from_tables
from fastgen.eval.noise_fit import sample_errors

CLASSES = ["cat", "dog", "bird"]


def test_each_timestep_gets_the_weight_of_its_band():
    t = torch.tensor([0, 249, 250, 600, 999])
    weights = (0.5, 2.0, 0.0, 4.0)
    assert band_error_weight(t, weights, 1000).tolist() == [0.5, 0.5, 2.0, 0.0, 4.0]
    assert band_error_weight(t, None, 1000).tolist() == [1.0] * 5


def test_fitting_rule_favours_the_band_with_the_clearest_difference():
    gen = np.random.default_rng(0)
    n_images, n_classes, n = 60, 4, 32
    labels = gen.integers(0, n_classes, size=n_images)
    timesteps = np.arange(n) * 1000 // n  # 8 samples in each of 4 bands
    band = timesteps // 250
    # Rivals are worse by 0.4 with spread 0.4 in band 0, by 0.1 with spread 0.02 in band 2, and no
    # worse at all in band 3: band 2's difference is the smallest but by far the clearest.
    mean = np.array([0.4, 0.2, 0.1, 0.0])[band]
    sd = np.array([0.4, 0.2, 0.02, 0.02])[band]
    tables = gen.normal(0.0, 1.0, size=(n_images, n_classes, n)) * sd + mean
    tables[np.arange(n_images), labels] = gen.normal(0.0, 1.0, size=(n_images, n)) * sd
    weights = weights_from_tables(tables, labels, timesteps, num_train_timesteps=1000, n_bands=4)
    assert np.isclose(np.mean(weights), 1.0, atol=1e-3)
    assert weights[2] > 10 * weights[0] > 0 and weights[2] > weights[1] > weights[0]
    assert weights[3] < 0.05 * weights[2]
    with pytest.raises(ValueError, match="every one of the 8 bands"):
        weights_from_tables(tables[:, :, :4], labels, timesteps[:4], num_train_timesteps=1000, n_bands=8)


def test_weights_must_be_finite_non_negative_and_not_all_zero():
    for bad in ((0.0, 0.0), (1.0, -1.0), (1.0, float("nan")), ()):
        with pytest.raises(ValueError, match="error_weights"):
            ScoringConfig(error_weights=bad)
    assert ScoringConfig(error_weights=[1, 2]).error_weights == (1.0, 2.0)


def test_fitted_weights_round_trip_with_a_model_and_apply_identically(model_dirs, images, tmp_path):
    train = DiffusionClassifier.from_pretrained(
        model_dirs["pixel-text"], classes=CLASSES, device="cpu", policy="exhaustive", policy_options={"n_samples": 16}
    )
    # Random weights know no real classes: label the images by the model's own exhaustive choice.
    labels = [r.prediction_index for r in train.classify(images[:4])]
    weights = fit_error_weights(train, images[:4], labels, n_samples=16, n_bands=4)
    assert len(weights) == 4 and min(weights) >= 0 and np.isclose(np.mean(weights), 1.0, atol=1e-3)
    folder = tmp_path / "model"
    shutil.copytree(model_dirs["pixel-text"], folder)
    chosen = (0.25, 3.0, 0.5, 0.25)  # far from equal, so a weight left out would show
    (folder / "fastgen.json").write_text(json.dumps({"scoring": {"error_weights": list(chosen)}}))
    plain = DiffusionClassifier.from_pretrained(
        model_dirs["pixel-text"], classes=CLASSES, device="cpu", policy="exhaustive", policy_options={"n_samples": 6}
    )
    for batch_size in (5, 64):
        clf = DiffusionClassifier.from_pretrained(
            folder, classes=CLASSES, device="cpu", policy="exhaustive", policy_options={"n_samples": 6},
            batch_size=batch_size,
        )  # fmt: skip
        assert clf.config.error_weights == chosen
        assert clf.config.as_dict()["error_weights"] == chosen  # what results headers record
        engine = errors_of(clf.classify(images[4:6]))
        reference = errors_of([clf.classify_reference(image) for image in images[4:6]])
        np.testing.assert_allclose(engine, reference, rtol=0, atol=1e-5)
    # The weighted score is the mean of the plain per-sample errors times their band's weight.
    tables = sample_errors(plain, images[4:6], n_samples=6, seeds=[0] * len(images[4:6]))
    factor = band_error_weight(plain.plan.timesteps(6), chosen, 1000).numpy()
    np.testing.assert_allclose(engine, (tables * factor).mean(axis=-1), rtol=0, atol=1e-5)
    assert not np.allclose(engine, tables.mean(axis=-1), rtol=0, atol=1e-3)
    explicit = DiffusionClassifier.from_pretrained(folder, classes=CLASSES, device="cpu", error_weights=(1, 1))
    assert explicit.config.error_weights == (1.0, 1.0)  # the user's choice wins over the model's
