"""Metrics against values computed by hand on small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from fastgen.eval.metrics import accuracy, cue_conflict_scores, error_consistency, parse_cue_conflict, shape_bias


def test_accuracy():
    assert accuracy(["cat", "dog", "cat", "bird"], ["cat", "dog", "dog", "bird"]) == 0.75
    assert accuracy([3, 1], [3, 2]) == 0.5
    with pytest.raises(ValueError, match="same length"):
        accuracy(["cat"], ["cat", "dog"])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])


def test_parse_cue_conflict_names():
    assert parse_cue_conflict("cat3-elephant1.png") == ("cat", "elephant")
    assert parse_cue_conflict("/data/cue-conflict/cat/cat3-elephant1.png") == ("cat", "elephant")
    # model-vs-human's raw-data image names carry a prefix
    assert parse_cue_conflict("0042_cl_dnn_cue-conflict_knife_knife10-oven2.png") == ("knife", "oven")
    with pytest.raises(ValueError, match="cue-conflict image name"):
        parse_cue_conflict("n01440764_123.JPEG")


def test_shape_bias_by_hand():
    names = [
        "airplane1-bicycle2.png",  # shape chosen
        "cat3-elephant1.png",  # texture chosen
        "dog1-dog2.png",  # no conflict: left out
        "knife4-oven2.png",  # neither cue
        "bear1-boat3.png",  # shape chosen
    ]
    predictions = ["airplane", "elephant", "dog", "bird", "bear"]
    scores = cue_conflict_scores(predictions, names)
    assert (scores.n_images, scores.shape_hits, scores.texture_hits) == (4, 2, 1)
    assert scores.shape_fraction == 0.5 and scores.texture_fraction == 0.25
    assert shape_bias(predictions, names) == pytest.approx(2 / 3)
    assert math.isnan(shape_bias(["bird"], ["cat1-dog1.png"]))  # no decision matched a cue


def test_error_consistency_by_hand():
    # c_obs = 3/4; p1 = 3/4, p2 = 1/2; c_exp = 3/8 + 1/8 = 1/2; kappa = (3/4 - 1/2) / (1/2)
    assert error_consistency([1, 1, 1, 0], [1, 1, 0, 0]) == pytest.approx(0.5)
    assert error_consistency([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    # opposite errors at 50% accuracy: c_obs = 0, c_exp = 1/2
    assert error_consistency([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    # c_exp = 1: both always right, kappa is undefined
    assert math.isnan(error_consistency([True, True], [True, True]))


def test_error_consistency_is_cohens_kappa():
    rng = np.random.default_rng(5)
    a, b = rng.random(200) < 0.7, rng.random(200) < 0.6
    b[:80] = a[:80]  # shared errors on part of the trials
    assert error_consistency(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
