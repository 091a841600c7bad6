"""The noise profile and the sequential rule's known-variance boundary: the fit recovers the
noise per band, the boundary drops a plain loser where a t-test cannot, it keeps its stated
error, engine and reference agree, and a profile is refused for settings it was not fitted for."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_policy_on_table, small_classifier

from fastgen.engine.config import ScoringConfig
from fastgen.engine.policies import SequentialElimination, make_policy
from fastgen.engine.policies.noise_profile import NoiseProfile
from fastgen.engine.policies.sequential import mixture_sum_boundary
from fastgen.engine.sampling import timestep_sequence
from fastgen.eval.noise_fit import fit_noise_profile, profile_from_tables
from fastgen.models.layout import read_defaults

T = 1000
BAND_SD = (0.02, 0.01, 0.005, 0.001)  # noise of one paired difference, per quarter of [0, T)


def write_profile(path, band_sd=BAND_SD, **fitted_for) -> str:
    settings = {"loss": "l2", "timesteps": "even", "weighting": 0.0, "timestep_weights": None, **fitted_for}
    profile = NoiseProfile(tuple(band_sd), T, settings, {})
    path.write_text(json.dumps(profile.as_dict()))
    return str(path)


def sample_sd(n: int) -> np.ndarray:
    t = timestep_sequence(n, T).numpy()
    return np.asarray(BAND_SD)[t * len(BAND_SD) // T]


def timestep_tables(rng, gaps, n, *, seed_noise=None) -> np.ndarray:
    """Errors [K, n]: a level that changes tenfold with the timestep (shared by every class),
    each class's gap scaled by the same timestep profile, and per-class noise whose paired
    difference has the sd of BAND_SD at that timestep."""
    t = timestep_sequence(n, T).numpy()
    level = 0.05 + 0.5 * np.sin(np.pi * (t + 1) / T)  # peaks mid-schedule
    noise = seed_noise if seed_noise is not None else rng.standard_normal((len(gaps), n))
    return level + np.asarray(gaps)[:, None] * level + noise * sample_sd(n) / math.sqrt(2)


def test_the_fit_recovers_the_noise_of_each_band():
    rng = np.random.default_rng(0)
    n, n_images, gaps = 32, 60, [0.0, 0.3, 0.6, 1.0]
    means = [timestep_tables(rng, gaps, n, seed_noise=np.zeros((4, n))) for _ in range(n_images)]
    first = np.stack([m + rng.standard_normal((4, n)) * sample_sd(n) / math.sqrt(2) for m in means])
    second = np.stack([m + rng.standard_normal((4, n)) * sample_sd(n) / math.sqrt(2) for m in means])
    band_sd, typical, scale, _ = profile_from_tables(
        first, second, [0] * n_images, timestep_sequence(n, T).numpy(), num_train_timesteps=T, n_bands=4, quantile=0.9
    )
    np.testing.assert_allclose(typical, BAND_SD, rtol=0.15)
    assert 1.0 <= scale < 1.5  # every pair has the same noise: only sampling spread above 1
    np.testing.assert_allclose(band_sd, typical * scale)


def test_a_plain_loser_goes_at_the_first_look_where_the_t_test_keeps_it(tmp_path):
    """The gap is 30% of the error at every timestep, but the errors themselves change tenfold
    with the timestep: the t-test counts that as noise, the profile does not."""
    rng = np.random.default_rng(1)
    table = timestep_tables(rng, [0.0, 0.3], 3)
    profiled = SequentialElimination(
        min_samples=3, bound="profile", noise_profile=write_profile(tmp_path / "p.json")
    ).bind(["a", "b"])
    t_test = SequentialElimination(min_samples=3).bind(["a", "b"])
    assert run_policy_on_table(profiled, table) == ([0], 3)
    kept, _ = t_test.next_round(torch.from_numpy(table.astype(np.float32)), [0, 1])
    assert kept == [0, 1]


def test_the_true_winner_is_eliminated_at_most_at_the_stated_rate(tmp_path):
    """300 seeded tables, class 0 the winner by gaps of 0-2% of the error (nearly null
    comparisons), looked at after every sample to 48: class 0 is eliminated in at most delta
    plus 3 standard errors of a rate of delta over 300 tables."""
    delta, n_tables = 0.05, 300
    policy = SequentialElimination(
        confidence=1 - delta, min_samples=2, max_samples=48, bound="profile",
        noise_profile=write_profile(tmp_path / "p.json"),
    ).bind([str(k) for k in range(5)])  # fmt: skip
    rng = np.random.default_rng(2)
    eliminated = sum(
        0 not in run_policy_on_table(policy, timestep_tables(rng, [0, 0.005, 0.01, 0.015, 0.02], 48))[0]
        for _ in range(n_tables)
    )
    assert eliminated / n_tables <= delta + 3 * math.sqrt(delta * (1 - delta) / n_tables)


@pytest.fixture(scope="module")
def small_profile(model_dirs, tmp_path_factory):
    """A profile fitted on the tiny pixel model itself (its default scoring settings)."""
    g = torch.Generator().manual_seed(7)
    pictures = [torch.rand(3, 16, 16, generator=g) for _ in range(4)]
    clf = small_classifier(model_dirs["pixel-text"], "pixel-text")
    profile = fit_noise_profile(clf, pictures, [0, 1, 2, 0], n_samples=8, n_bands=4, quantile=0.9)
    path = tmp_path_factory.mktemp("profile") / "noise_profile.json"
    path.write_text(json.dumps(profile.as_dict()))
    return str(path), profile


@pytest.mark.parametrize("coverage", ["quantile", "average"])
@pytest.mark.parametrize("batch_size", [5, 64])
def test_engine_and_reference_decide_identically(model_dirs, images, small_profile, batch_size, coverage):
    options = {
        "confidence": 0.6,
        "min_samples": 2,
        "max_samples": 9,
        "bound": "profile",
        "noise_profile": small_profile[0],
        "coverage": coverage,
    }
    clf = small_classifier(
        model_dirs["pixel-text"], "pixel-text", policy="sequential", policy_options=options, batch_size=batch_size
    )
    results = clf.classify(images[:3])
    assert any(r.n_samples.min() < r.n_samples.max() for r in results)  # the boundary dropped classes
    for image, got in zip(images[:3], results):
        want = clf.classify_reference(image)
        np.testing.assert_allclose(got.partial_errors, want.partial_errors, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(got.n_samples, want.n_samples)
        assert (got.prediction, got.unet_evals, got.decided, got.survivors) == (
            want.prediction, want.unet_evals, want.decided, want.survivors,
        )  # fmt: skip


def test_the_fitted_profile_records_what_it_holds_for(small_profile):
    _, profile = small_profile
    assert profile.fitted_for == {
        "loss": "l2",
        "timesteps": "even",
        "weighting": 0.0,
        "timestep_weights": None,
        "error_weights": None,
    }
    assert len(profile.band_sd) == 4 and all(s > 0 for s in profile.band_sd)
    assert profile.fit["scale"] >= 1.0 and profile.fit["images"] == 4


def test_a_profile_is_refused_for_settings_it_was_not_fitted_for(tmp_path):
    path = write_profile(tmp_path / "p.json")
    policy = make_policy("sequential", bound="profile", noise_profile=path)
    ScoringConfig(policy=policy)  # the settings it was fitted for
    with pytest.raises(ValueError, match=r"loss='l1' \(fitted for 'l2'\)"):
        ScoringConfig(policy=policy, loss="l1")
    with pytest.raises(ValueError, match="weighting"):
        ScoringConfig(policy=policy, weighting=2.0)
    with pytest.raises(ValueError, match="timesteps"):
        ScoringConfig(policy=policy, timesteps="random")
    with pytest.raises(ValueError, match="go together"):
        make_policy("sequential", bound="profile")
    with pytest.raises(ValueError, match="go together"):
        make_policy("sequential", noise_profile=path)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a noise profile"):
        make_policy("sequential", bound="profile", noise_profile=str(tmp_path / "bad.json"))


def test_a_model_folder_names_its_profile_relative_to_itself(tmp_path):
    (tmp_path / "fastgen.json").write_text(
        json.dumps({"policy": {"name": "sequential", "bound": "profile", "noise_profile": "noise_profile.json"}})
    )
    assert read_defaults(tmp_path)["policy"]["noise_profile"] == str(tmp_path / "noise_profile.json")


def test_builtin_digits_defaults_to_the_profile_rule_and_a_caller_can_leave_it(tmp_path):
    from fastgen import DiffusionClassifier

    clf = DiffusionClassifier.from_pretrained("builtin:digits", device="cpu")
    policy = clf.policy
    assert (type(policy).__name__, policy.bound, policy.confidence) == ("SequentialElimination", "profile", 0.99)
    assert Path(policy.noise_profile).is_file() and Path(policy.noise_profile).parent.name == "digits"
    assert policy.coverage == "average" and policy._profile.fitted_for["error_weights"] == clf.config.error_weights
    other = DiffusionClassifier.from_pretrained("builtin:digits", device="cpu", policy_options={"bound": "mixture"})
    # The file's profile, and the coverage that needs it, go with the boundary it was for.
    assert (other.policy.bound, other.policy.noise_profile, other.policy.coverage) == ("mixture", "", "quantile")
    with pytest.raises(ValueError, match=r"loss='l1' \(fitted for 'l2'\).*--bound mixture"):
        DiffusionClassifier.from_pretrained("builtin:digits", device="cpu", loss="l1")


# -- coverage="average": the error stated on average over pairs ---------------------------------
SPREAD = tuple(
    float(s)
    for s in np.quantile(np.exp(np.random.default_rng(4).normal(0.0, 0.3, 4000)), np.arange(200) / 200 + 0.0025)
)


def spread_profile(pair_scales=SPREAD) -> NoiseProfile:
    settings = {"loss": "l2", "timesteps": "even", "weighting": 0.0, "timestep_weights": None}
    scale = float(np.quantile(pair_scales, 0.99))
    fit = {"typical_sd": list(BAND_SD), "scale": scale, "pair_scales": list(pair_scales)}
    return NoiseProfile(tuple(np.asarray(BAND_SD) * scale), T, settings, fit)


def crossing_rate(profile: NoiseProfile, level: float, *, n: int, walks: int, seed: int) -> float:
    """Monte Carlo: the share of pure-noise walks (each pair's noise the typical one times a scale
    drawn from the profile's spread) that ever reach the typical-noise boundary at `level`."""
    rng = np.random.default_rng(seed)
    scales = rng.choice(profile.pair_scales(), size=walks)
    steps = rng.standard_normal((walks, n)) * profile.sample_sd(n, typical=True) * scales[:, None]
    sums = np.cumsum(steps, axis=1)[:, 1:]  # looks at 2..n samples
    rho = profile.mean_variance(typical=True)
    bounds = np.array(
        [mixture_sum_boundary(profile.summed_variance(k, typical=True), level, rho) for k in range(2, n + 1)]
    )
    return float(np.mean((sums >= bounds).any(axis=1)))


def test_the_average_level_keeps_the_error_averaged_over_pairs_and_the_plain_level_does_not():
    profile, alpha, n = spread_profile(), 0.02, 48
    level = profile.average_level(alpha, 1.0, n)
    assert level < alpha / 2  # noisier pairs than the typical one cost a tighter level
    walks = 40_000
    kept = crossing_rate(profile, level, n=n, walks=walks, seed=1)
    assert kept <= alpha
    # The typical noise at the plain level errs more often than stated: the adjustment matters.
    assert crossing_rate(profile, alpha, n=n, walks=walks, seed=1) > alpha
    # Pairs that all have the typical noise need no adjustment.
    assert spread_profile(pair_scales=(1.0,) * 50).average_level(alpha, 1.0, n) == alpha


def test_the_average_rule_drops_a_plain_loser_sooner_than_the_quantile_rule(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(spread_profile().as_dict()))
    rng = np.random.default_rng(5)
    table = torch.tensor(timestep_tables(rng, [0.0, 0.05], 64))
    rounds = {}
    for coverage in ("quantile", "average"):
        policy = SequentialElimination(
            min_samples=2, max_samples=64, bound="profile", noise_profile=str(path), coverage=coverage
        ).bind(["a", "b"])
        rounds[coverage] = run_policy_on_table(policy, table.numpy())[1]
    assert rounds["average"] < rounds["quantile"]
    with pytest.raises(ValueError, match="coverage='average' needs"):
        SequentialElimination(bound="profile", noise_profile=write_profile(tmp_path / "old.json"), coverage="average")
    with pytest.raises(ValueError, match="coverage must be one of"):
        SequentialElimination(coverage="mean")


def test_the_tree_takes_the_same_coverage_and_refuses_what_it_cannot_hold(tmp_path):
    from fastgen.engine.policies import LabelTreePolicy

    tree = tmp_path / "tree.json"
    tree.write_text(
        json.dumps({
            "format": "fastgen-label-tree-1", "roots": ["low", "high"],
            "nodes": {"low": {"prompt": "a low thing", "children": ["a", "b"]},
                      "high": {"prompt": "a high thing", "children": ["c", "d"]}},
        })
    )  # fmt: skip
    spread = tmp_path / "spread.json"
    spread.write_text(json.dumps(spread_profile().as_dict()))
    options = {"tree": str(tree), "confidence": 0.99, "node_samples": 8, "max_samples": 32}
    policy = LabelTreePolicy(noise_profile=str(spread), coverage="average", **options).bind(["a", "b", "c", "d"])
    assert policy.coverage == "average"
    with pytest.raises(ValueError, match="coverage='average' needs"):
        LabelTreePolicy(noise_profile=write_profile(tmp_path / "old.json"), coverage="average", **options)
    with pytest.raises(ValueError, match="coverage must be one of"):
        LabelTreePolicy(coverage="mean", **options)


def _sum_between(low: float, high: float, n: int) -> np.ndarray:
    """Errors [2, n] whose paired sum (row 1 minus row 0) is halfway between two boundaries,
    on a level that changes with the timestep (so only the sum decides, not the spread)."""
    base = 0.05 + np.linspace(0.0, 0.4, n)
    return np.stack([base, base + (low + high) / 2 / n])


def test_the_average_rule_draws_its_boundary_at_the_average_level(tmp_path):
    """Between the typical-noise boundary at the plain level and at the average level: a rival
    there is kept, which only the average level's adjustment (tighter) explains."""
    from fastgen.engine.policies.sequential import worse_than_best

    profile, alpha, n, rho = spread_profile(), 0.01, 6, 1.0
    variance = profile.summed_variance(n, typical=True)
    scale = rho * profile.mean_variance(typical=True)
    plain = mixture_sum_boundary(variance, alpha, scale)
    adjusted = mixture_sum_boundary(variance, profile.average_level(alpha, rho, 64), scale)
    assert adjusted > plain * 1.05
    kept = torch.from_numpy(_sum_between(plain, adjusted, n))
    dropped = torch.from_numpy(_sum_between(adjusted, adjusted * 1.1, n))
    for table, worse in ((kept, False), (dropped, True)):
        flags = worse_than_best(table, 0, profile, alpha, rho, coverage="average", max_samples=64)
        assert bool(flags[1]) is worse
    # the quantile rule on the same sums uses the profile's own (larger) variances
    assert not worse_than_best(dropped, 0, profile, alpha, rho, coverage="quantile")[1]


@pytest.mark.parametrize("n_classes", [2, 5, 10])
def test_the_error_is_split_over_the_comparisons_with_the_best(tmp_path, n_classes):
    """One rival at a sum between the boundary at 1 - confidence and at (1 - confidence) / (K - 1):
    dropped with 2 classes, kept with more (the union bound over the K - 1 comparisons)."""
    path = write_profile(tmp_path / "p.json")
    profile = NoiseProfile.load(path)
    delta, n = 0.05, 4
    variance, rho = profile.summed_variance(n), profile.mean_variance()
    whole, split = mixture_sum_boundary(variance, delta, rho), mixture_sum_boundary(variance, delta / 9, rho)
    pair = _sum_between(whole, split, n)
    table = np.concatenate([pair, np.repeat(pair[:1], n_classes - 2, axis=0)])  # the rest tie the best
    policy = SequentialElimination(
        confidence=1 - delta, min_samples=n, max_samples=n + 4, bound="profile", noise_profile=path, tightest_at=1.0
    ).bind([str(k) for k in range(n_classes)])
    assert policy.pair_alpha(n_classes) == pytest.approx(delta / (n_classes - 1))
    kept, _ = policy.next_round(torch.from_numpy(table), list(range(n_classes)))
    assert (1 in kept) is (n_classes > 2)


def _two_level_tree(tmp_path) -> str:
    tree = tmp_path / "tree.json"
    tree.write_text(
        json.dumps({
            "format": "fastgen-label-tree-1", "roots": ["low", "high"],
            "nodes": {"low": {"prompt": "a low thing", "children": ["a", "b"]},
                      "high": {"prompt": "a high thing", "children": ["c", "d"]}},
        })
    )  # fmt: skip
    return str(tree)


def test_the_tree_uses_the_profile_boundary_where_the_t_test_cannot_decide(tmp_path):
    """A node that loses by 50% at every timestep goes at the first look (2 samples) with the
    profile and the tree descends at once; with the t-test the same look keeps both nodes."""
    from fastgen.engine.policies import LabelTreePolicy

    rng = np.random.default_rng(3)
    table = torch.from_numpy(timestep_tables(rng, [0.0, 0.5], 2).astype(np.float32))
    options = {"tree": _two_level_tree(tmp_path), "confidence": 0.99, "beam": 1, "node_min_samples": 2}
    options |= {"node_samples": 8, "max_samples": 32}
    profiled = LabelTreePolicy(noise_profile=write_profile(tmp_path / "p.json"), **options)
    profiled = profiled.bind(["a", "b", "c", "d"])
    low, high = profiled.initial_units(4)
    assert profiled.next_round(table, [low, high]) == ([0, 1], 2)  # low's children, from sample 0
    t_test = LabelTreePolicy(**options).bind(["a", "b", "c", "d"])
    assert t_test.next_round(table, [low, high]) == ([low, high], 4)
    # the tree's error: 1 - confidence over its 2 levels, and over the comparisons of its widest
    # level (beam 2 x 2 children: 4 units, 3 comparisons with the leader)
    wide = LabelTreePolicy(**{**options, "beam": 2}).bind(["a", "b", "c", "d"])
    assert wide.pair_alpha() == pytest.approx(0.01 / 2 / 3)
