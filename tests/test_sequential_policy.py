"""The sequential elimination policy: engine/reference parity, early drops on overwhelming
differences, the stated error on synthetic tables, and undecided results."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import run_policy_on_table, small_classifier

from fastgen import DiffusionClassifier
from fastgen.commands.main import main
from fastgen.engine.policies import SequentialElimination, make_policy
from fastgen.engine.result import ImageResult
from fastgen.inputs.classes import ClassSpec
from fastgen.jobs.results_file import result_record


def shared_noise_table(rng: np.random.Generator, gaps: list[float], n: int, spread: float) -> np.ndarray:
    """Errors [K, n]: a per-sample level every class shares (the shared noise) plus each class's
    gap and its own noise of sd `spread`."""
    shared = rng.gamma(2.0, 0.5, size=n)
    return shared + np.asarray(gaps)[:, None] + spread * rng.standard_normal((len(gaps), n))


@pytest.mark.parametrize("bound", ["spending", "mixture"])
@pytest.mark.parametrize("batch_size", [5, 64])
def test_engine_and_reference_decide_identically(model_dirs, images, bound, batch_size):
    options = {"confidence": 0.6, "min_samples": 3, "max_samples": 11, "check_every": 2, "bound": bound}
    clf = small_classifier(
        model_dirs["pixel-text"], "pixel-text", policy="sequential", policy_options=options, batch_size=batch_size
    )
    results = clf.classify(images[:3])
    for image, got in zip(images[:3], results):
        want = clf.classify_reference(image)
        np.testing.assert_array_equal(np.isnan(got.errors), np.isnan(want.errors))
        np.testing.assert_allclose(got.partial_errors, want.partial_errors, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(got.n_samples, want.n_samples)
        assert (got.prediction, got.unet_evals, got.decided) == (want.prediction, want.unet_evals, want.decided)
        assert got.survivors == want.survivors


def test_overwhelming_differences_drop_classes_at_the_first_look():
    rng = np.random.default_rng(0)
    policy = SequentialElimination(min_samples=4, max_samples=64).bind(["a", "b", "c"])
    table = shared_noise_table(rng, [0.0, 2.0, 3.0], 4, spread=0.01)
    kept, next_n = policy.next_round(torch.from_numpy(table.astype(np.float32)), [0, 1, 2])
    assert (kept, next_n) == ([0], None)


def test_close_classes_keep_sampling():
    rng = np.random.default_rng(1)
    policy = SequentialElimination(min_samples=4, max_samples=64, check_every=2).bind(["a", "b", "c"])
    table = shared_noise_table(rng, [0.0, 0.02, 3.0], 4, spread=0.1)
    kept, next_n = policy.next_round(torch.from_numpy(table.astype(np.float32)), [0, 1, 2])
    assert kept == [0, 1] and next_n == 6  # the far class goes, the close one is looked at again


@pytest.mark.parametrize("bound", ["spending", "mixture"])
def test_the_true_winner_is_eliminated_at_most_at_the_stated_rate(bound):
    """Over 300 seeded tables whose winner is known (class 0; four rivals 0.01-0.04 sd behind, so
    nearly null comparisons looked at after every sample), the fraction where class 0 was
    eliminated is at most delta plus a binomial margin: 3 standard errors of a rate of delta over
    300 tables (0.05 + 0.038). A paired t-test at the same per-comparison level, repeated at every
    look, eliminates it in about a quarter of these tables."""
    delta, n_tables = 0.05, 300
    policy = SequentialElimination(confidence=1 - delta, min_samples=3, max_samples=48, bound=bound)
    policy = policy.bind([str(k) for k in range(5)])
    rng = np.random.default_rng(2)
    eliminated = 0
    for _ in range(n_tables):
        table = shared_noise_table(rng, [0.0, 0.01, 0.02, 0.03, 0.04], 48, spread=1.0)
        alive, _ = run_policy_on_table(policy, table)
        eliminated += 0 not in alive
    margin = 3 * math.sqrt(delta * (1 - delta) / n_tables)
    assert eliminated / n_tables <= delta + margin


def test_a_budget_spent_on_a_tie_is_undecided_with_its_survivors(model_dirs, images):
    # "cat" and "kitty" share their prompt: their errors agree on every sample, a perfect tie.
    classes = ClassSpec(("cat", "kitty", "dog"), (("a photo of a cat",), ("a photo of a cat",), ("a dog",)))
    options = {"min_samples": 3, "max_samples": 7}
    clf = DiffusionClassifier.from_pretrained(
        model_dirs["pixel-text"], classes=classes, policy="sequential", policy_options=options, device="cpu"
    )
    result = clf.classify(images[0])[0]
    assert not result.decided and result.n_samples.max() == 7
    assert {"cat", "kitty"} <= set(result.survivors) and result.prediction == result.survivors[0]
    record = result_record("x.png", result)
    assert record["decided"] is False and record["survivors"] == list(result.survivors)


def test_fixed_schedules_always_decide():
    errors = np.array([0.3, 0.1, 0.2])
    result = ImageResult(("a", "b", "c"), errors, errors.copy(), np.full(3, 5), unet_evals=15)
    assert result.decided and result.survivors == ("b",)
    assert "decided" not in result_record("x.png", result)  # the line of a decided image keeps its old keys


def test_options_are_checked():
    with pytest.raises(ValueError, match="confidence"):
        make_policy("sequential", confidence=1.0)
    with pytest.raises(ValueError, match="bound"):
        make_policy("sequential", bound="hoeffding")
    with pytest.raises(ValueError, match="min_samples"):
        make_policy("sequential", min_samples=1)


def test_demo_json_reports_calls_and_undecided_images(capsys):
    """Two samples at most: the first look cannot separate the digits at 0.99, so every image
    ends undecided, and the report counts them, the wrong ones among them, and the calls."""
    argv = ["demo", "--n-images", "30", "--json", "--device", "cpu", "--policy", "sequential"]
    assert main([*argv, "--confidence", "0.99", "--min-samples", "2", "--max-samples", "2"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["images"] == 30 and report["unet_evals_per_image"] == 20
    wrong = round(report["images"] * (1 - report["accuracy"]))
    assert report["undecided"] == 30 and report["undecided_errors"] == wrong  # every image is undecided
    assert wrong >= 1  # two samples get some of the 30 wrong: the count is not trivially 0
    assert report["config"]["policy"]["name"] == "sequential" and report["config"]["policy"]["confidence"] == 0.99
