"""The noise profile and the sequential rule's known-variance boundary: the fit recovers the
noise per band, the boundary drops a plain loser where a t-test cannot, it keeps its stated
error, every image's own noise is checked against the profile, engine and reference agree, and a
profile is refused for a model, prompts, dtype or settings it was not fitted for."""

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
from fastgen.engine.policies.noise_profile import NoiseProfile, ProfileMismatch
from fastgen.engine.policies.profile_bound import ImageWatch, mixture_sum_boundary, profile_decisions
from fastgen.engine.sampling import timestep_sequence
from fastgen.eval.noise_fit import band_noise, fit_noise_profile, pair_noise
from fastgen.models.layout import read_defaults

T = 1000
BAND_SD = (0.02, 0.01, 0.005, 0.001)  # noise of one paired difference, per quarter of [0, T)
SETTINGS = {
    "model": "test", "denoiser": "sha256:test", "num_train_timesteps": T, "dtype": "float32", "prompts": ("a", "b"),
    "loss": "l2", "timesteps": "stratified", "weighting": 0.0, "timestep_weights": None, "error_weights": None,
    "aggregate": "mean", "flow_timesteps": None, "flow_weighting": None,
}  # fmt: skip


def make_profile(band_sd=BAND_SD, fit=None, **fitted_for) -> NoiseProfile:
    return NoiseProfile(tuple(band_sd), T, {**SETTINGS, **fitted_for}, fit or {})


def write_profile(path, band_sd=BAND_SD, **fitted_for) -> str:
    path.write_text(json.dumps(make_profile(band_sd, **fitted_for).as_dict()))
    return str(path)


def sample_sd(n: int) -> np.ndarray:
    t = timestep_sequence(n, T, mode="stratified").numpy()
    return np.asarray(BAND_SD)[t * len(BAND_SD) // T]


def timestep_tables(rng, gaps, n, *, seed_noise=None, noise_scale=1.0) -> np.ndarray:
    """Errors [K, n] in the stratified order: a level that changes tenfold with the timestep
    (shared by every class), each class's gap scaled by the same timestep profile, and per-class
    noise whose paired difference has `noise_scale` times the sd of BAND_SD at that timestep."""
    t = timestep_sequence(n, T, mode="stratified").numpy()
    level = 0.05 + 0.5 * np.sin(np.pi * (t + 1) / T)  # peaks mid-schedule
    noise = seed_noise if seed_noise is not None else rng.standard_normal((len(gaps), n))
    return level + np.asarray(gaps)[:, None] * level + noise * noise_scale * sample_sd(n) / math.sqrt(2)


def test_the_fit_recovers_the_noise_of_each_band():
    """Synthetic tables of 60 independent images: the paired samples' noise gives each band's
    typical noise back, and every pair has the same noise, so the 90% pair scale is near 1."""
    rng = np.random.default_rng(0)
    n, gaps = 64, [0.0, 0.3, 0.6, 1.0]
    tables = np.stack([timestep_tables(rng, gaps, n) for _ in range(60)])
    draws, owner = pair_noise(tables, [0] * 60)
    assert draws.shape == (60, 3, 32) and owner[:, 0].tolist() == list(range(60))
    bands = timestep_sequence(n, T, mode="stratified").numpy()[0::2] * 4 // T
    band_sd, typical, scale, pair_scale = band_noise(draws, bands, 4, quantile=0.9)
    np.testing.assert_allclose(typical, BAND_SD, rtol=0.1)
    assert 1.0 <= scale < 1.4 and len(pair_scale) == 180
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


def drop_rate(policy, noise_scale: float, n_tables: int, seed: int) -> float:
    """The share of tables (class 0 the winner by 0-2% of the error: nearly null comparisons)
    whose class 0 the policy eliminated, its noise check carried from look to look."""
    rng = np.random.default_rng(seed)
    eliminated = 0
    for _ in range(n_tables):
        table = torch.from_numpy(timestep_tables(rng, [0, 0.005, 0.01, 0.015, 0.02], 48, noise_scale=noise_scale))
        alive, n, watch = list(range(5)), policy.first_round(), policy.start_image()
        while True:
            alive, next_n = policy.next_round(table[alive, :n], alive, watch)
            if next_n is None:
                break
            n = next_n
        eliminated += 0 not in alive
    return eliminated / n_tables


def test_the_true_winner_is_eliminated_at_most_at_the_stated_rate(tmp_path):
    """300 seeded tables at the profile's own noise, looked at after every sample to 48: class 0
    is eliminated in at most delta plus 3 standard errors of a rate of delta over 300 tables."""
    delta, n_tables = 0.05, 300
    policy = SequentialElimination(
        confidence=1 - delta, min_samples=2, max_samples=48, bound="profile",
        noise_profile=write_profile(tmp_path / "p.json"),
    ).bind([str(k) for k in range(5)])  # fmt: skip
    assert drop_rate(policy, 1.0, n_tables, seed=2) <= delta + 3 * math.sqrt(delta * (1 - delta) / n_tables)


def test_images_noisier_than_the_profile_are_caught_by_the_check(tmp_path):
    """At 3x the profile's noise the known-variance boundary alone errs far above delta; the
    check moves those images to the self-normalised boundary, which keeps the error near delta."""
    delta, n_tables = 0.05, 200
    options = {"confidence": 1 - delta, "min_samples": 2, "max_samples": 48, "bound": "profile"}
    policy = SequentialElimination(noise_profile=write_profile(tmp_path / "p.json"), **options)
    policy = policy.bind([str(k) for k in range(5)])
    stateless_known = SequentialElimination(
        noise_profile=write_profile(tmp_path / "p.json"), check_level=1e-12, **options
    ).bind([str(k) for k in range(5)])  # a check that never fires: the profile's boundary alone
    unchecked = drop_rate(stateless_known, 3.0, n_tables, seed=3)
    checked = drop_rate(policy, 3.0, n_tables, seed=3)
    assert unchecked > 3 * delta
    assert checked <= delta + 3 * math.sqrt(delta * (1 - delta) / n_tables) and checked < unchecked / 3


def test_the_check_switches_a_noisy_image_and_records_it_and_leaves_a_quiet_one(tmp_path):
    profile = make_profile()
    rng = np.random.default_rng(4)
    noisy = torch.from_numpy(timestep_tables(rng, [0.0, 0.002], 16, noise_scale=4.0))
    quiet = torch.from_numpy(timestep_tables(rng, [0.0, 0.002], 16, noise_scale=0.5))
    for table, switched in ((noisy, True), (quiet, False)):
        watch = ImageWatch()
        for n in range(2, 17):
            profile_decisions(table[:, :n], 0, profile, 0.01, 1.0, watch=watch)
        assert (watch.switched_at is not None) is switched
        record = watch.as_record()
        assert record["bound"] == ("self-normalised" if switched else "profile")
        assert (record["largest_noise_scale"] > 2.0) is switched
    policy = SequentialElimination(bound="profile", noise_profile=write_profile(tmp_path / "p.json"))
    assert policy.image_record(watch) == {"noise_check": watch.as_record()}
    assert SequentialElimination().start_image() is None  # no profile, no state


def test_the_self_normalised_boundary_still_drops_a_plain_loser(tmp_path):
    """After a switch the noise scale comes from the pairs: a loser by 50% at every timestep,
    at twice the profile's noise, still goes within the budget."""
    profile = make_profile()
    rng = np.random.default_rng(5)
    table = torch.from_numpy(timestep_tables(rng, [0.0, 0.5], 16, noise_scale=2.0))
    watch = ImageWatch(switched_at=2)
    dropped_at = next(
        (n for n in range(2, 17) if profile_decisions(table[:, :n], 0, profile, 0.01, 1.0, watch=watch)[1]), None
    )
    assert dropped_at is not None and dropped_at > 2  # the self-normalised boundary needs a few pairs


@pytest.fixture(scope="module")
def small_profile(model_dirs, tmp_path_factory):
    """A profile fitted on the tiny pixel model itself (stratified samples, its other defaults)."""
    g = torch.Generator().manual_seed(7)
    pictures = [torch.rand(3, 16, 16, generator=g) for _ in range(4)]
    clf = small_classifier(model_dirs["pixel-text"], "pixel-text", timesteps="stratified")
    profile = fit_noise_profile(clf, pictures, [0, 1, 2, 0], n_samples=8, n_bands=4, quantile=0.9, bootstrap=50)
    path = tmp_path_factory.mktemp("profile") / "noise_profile.json"
    path.write_text(json.dumps(profile.as_dict()))
    return str(path), profile


@pytest.mark.parametrize("coverage", ["per-image", "pair-average"])
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
        model_dirs["pixel-text"], "pixel-text", policy="sequential", policy_options=options, batch_size=batch_size,
        timesteps="stratified",
    )  # fmt: skip
    results = clf.classify(images[:3])
    assert any(r.n_samples.min() < r.n_samples.max() for r in results)  # the boundary dropped classes
    for image, got in zip(images[:3], results):
        want = clf.classify_reference(image)
        np.testing.assert_allclose(got.partial_errors, want.partial_errors, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(got.n_samples, want.n_samples)
        assert (got.prediction, got.unet_evals, got.decided, got.survivors) == (
            want.prediction, want.unet_evals, want.decided, want.survivors,
        )  # fmt: skip
        assert got.policy_record == want.policy_record and "noise_check" in got.policy_record


def test_the_fitted_profile_records_what_it_holds_for(small_profile, model_dirs):
    _, profile = small_profile
    fitted = profile.fitted_for
    assert fitted["denoiser"].startswith("sha256:") and len(fitted["denoiser"]) == 7 + 64
    assert fitted["model"] == str(model_dirs["pixel-text"]) and fitted["dtype"] == "float32"
    assert fitted["prompts"] == ("a photo of a cat.", "a photo of a dog.", "a photo of a bird.")
    assert fitted["num_train_timesteps"] == 1000 and fitted["timesteps"] == "stratified"
    assert (fitted["loss"], fitted["weighting"], fitted["error_weights"], fitted["aggregate"]) == (
        "l2",
        0.0,
        None,
        "mean",
    )
    assert len(profile.band_sd) == 4 and all(s > 0 for s in profile.band_sd)
    assert profile.fit["scale"] >= 1.0 and profile.fit["images"] == 4
    # the fit's own error raises each band: the upper limit is at least the point estimate
    point = np.asarray(profile.fit["typical_sd"]) * profile.fit["scale"]
    assert np.all(np.asarray(profile.band_sd) >= point * (1 - 1e-6))
    assert profile.fit["noise"].startswith("independent per image")


def test_a_profile_is_refused_for_settings_it_was_not_fitted_for(tmp_path):
    path = write_profile(tmp_path / "p.json")
    policy = make_policy("sequential", bound="profile", noise_profile=path)
    ScoringConfig(policy=policy, timesteps="stratified")  # the settings it was fitted for
    with pytest.raises(ProfileMismatch, match=r"loss: 'l1' \(fitted for 'l2'\)"):
        ScoringConfig(policy=policy, loss="l1", timesteps="stratified")
    with pytest.raises(ProfileMismatch, match="weighting"):
        ScoringConfig(policy=policy, weighting=2.0, timesteps="stratified")
    with pytest.raises(ProfileMismatch, match="timesteps: 'even'"):
        ScoringConfig(policy=policy)
    with pytest.raises(ProfileMismatch, match="aggregate: 'min'"):
        ScoringConfig(policy=policy, aggregate="min", timesteps="stratified")
    # equal weights of any length are no weights
    ScoringConfig(policy=policy, error_weights=(1.0,), timesteps="stratified")
    ScoringConfig(policy=policy, error_weights=(1.0, 1.0, 1.0, 1.0), timesteps="stratified")
    with pytest.raises(ProfileMismatch, match="error_weights"):
        ScoringConfig(policy=policy, error_weights=(2.0,), timesteps="stratified")
    with pytest.raises(ValueError, match="go together"):
        make_policy("sequential", bound="profile")
    with pytest.raises(ValueError, match="go together"):
        make_policy("sequential", noise_profile=path)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "fastgen-noise-profile-1"}))
    with pytest.raises(ValueError, match="not a noise profile of this version.*fit it again"):
        make_policy("sequential", bound="profile", noise_profile=str(tmp_path / "bad.json"))


def test_a_run_on_another_model_prompts_or_dtype_is_refused_at_load(model_dirs, small_profile):
    path, profile = small_profile
    options = {"bound": "profile", "noise_profile": path, "min_samples": 2}
    load = {"policy": "sequential", "policy_options": options, "timesteps": "stratified"}
    small_classifier(model_dirs["pixel-text"], "pixel-text", **load)  # what it was fitted for
    # a subset of its classes is among the prompts it holds for
    from fastgen import DiffusionClassifier

    DiffusionClassifier.from_pretrained(model_dirs["pixel-text"], classes=["cat", "dog"], device="cpu", **load)
    with pytest.raises(ProfileMismatch, match=r"denoiser \(model '.*latent-text.*'\).*fitted for .*pixel-text"):
        small_classifier(model_dirs["latent-text"], "latent-text", **load)
    with pytest.raises(ProfileMismatch, match=r"prompts: 'a drawing of a bird.'"):
        small_classifier(model_dirs["pixel-text"], "pixel-text", templates=["a drawing of a {}."], **load)
    with pytest.raises(ProfileMismatch, match=r"prompts: 'a photo of a horse.'"):
        DiffusionClassifier.from_pretrained(model_dirs["pixel-text"], classes=["cat", "horse"], device="cpu", **load)
    with pytest.raises(ProfileMismatch, match=r"dtype: 'bfloat16' \(fitted for 'float32'\).*--bound mixture"):
        small_classifier(model_dirs["pixel-text"], "pixel-text", dtype="bf16", **load)


def test_several_profiles_the_first_fitted_for_the_run_is_used(tmp_path, model_dirs, small_profile):
    path, profile = small_profile
    other = tmp_path / "weighted.json"
    data = profile.as_dict()
    data["fitted_for"]["error_weights"] = [0.5, 2.0]
    other.write_text(json.dumps(data))
    options = {"bound": "profile", "noise_profile": [str(other), path], "min_samples": 2}
    load = {"policy": "sequential", "policy_options": options, "timesteps": "stratified"}
    plain = small_classifier(model_dirs["pixel-text"], "pixel-text", **load)
    assert plain.policy.noise_profile == path and plain.config.as_dict()["policy"]["noise_profile"] == path
    weighted = small_classifier(model_dirs["pixel-text"], "pixel-text", error_weights=[0.5, 2.0], **load)
    assert weighted.policy.noise_profile == str(other)
    with pytest.raises(
        ProfileMismatch, match=r"weighted.json was not fitted.* / the noise profile .*noise_profile.json"
    ):
        small_classifier(model_dirs["pixel-text"], "pixel-text", error_weights=[3.0, 1.0], **load)


def test_a_model_folder_names_its_profiles_relative_to_itself(tmp_path):
    (tmp_path / "fastgen.json").write_text(
        json.dumps({"policy": {"name": "sequential", "bound": "profile", "noise_profile": ["a.json", "b.json"]}})
    )
    assert read_defaults(tmp_path)["policy"]["noise_profile"] == [str(tmp_path / "a.json"), str(tmp_path / "b.json")]


def test_builtin_digits_defaults_to_the_profile_rule_and_a_caller_can_leave_it():
    from fastgen import DiffusionClassifier

    clf = DiffusionClassifier.from_pretrained("builtin:digits", device="cpu")
    policy = clf.policy
    assert (type(policy).__name__, policy.bound, policy.confidence) == ("SequentialElimination", "profile", 0.99)
    assert Path(policy.noise_profile).name == "noise_profile.json" and policy.coverage == "per-image"
    assert policy._profile.fitted_for["error_weights"] == clf.config.error_weights
    assert clf.config.timesteps == "stratified"
    equal = DiffusionClassifier.from_pretrained("builtin:digits", device="cpu", error_weights=[1])
    assert Path(equal.policy.noise_profile).name == "noise_profile_equal_weights.json"
    other = DiffusionClassifier.from_pretrained("builtin:digits", device="cpu", policy_options={"bound": "mixture"})
    # The file's profiles, and the coverage that needs them, go with the boundary they were for.
    assert (other.policy.bound, other.policy.noise_profile, other.policy.coverage) == ("mixture", "", "per-image")
    with pytest.raises(ProfileMismatch, match=r"loss: 'l1' \(fitted for 'l2'\).*--bound mixture"):
        DiffusionClassifier.from_pretrained("builtin:digits", device="cpu", loss="l1")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"model": "builtin:digits-flow"}, r"denoiser \(model 'builtin:digits-flow'\)"),
        ({"templates": ["a picture of the digit {}"]}, "prompts: 'a picture of the digit"),
        ({"classes": "builtin:cifar10"}, "prompts:"),
        ({"dtype": "bf16"}, r"dtype: 'bfloat16' \(fitted for 'float32'\)"),
    ],
)
def test_the_digits_profile_is_refused_for_another_model_template_class_set_or_dtype(change, field):
    from fastgen import DiffusionClassifier

    digits = read_defaults(Path(__file__).resolve().parents[1] / "fastgen" / "builtin" / "digits")
    options = {k: v for k, v in digits["policy"].items() if k != "name"}
    settings = {"policy": "sequential", "policy_options": options, **digits["scoring"]}
    model = change.pop("model", "builtin:digits")
    with pytest.raises(ProfileMismatch, match=field):
        DiffusionClassifier.from_pretrained(model, device="cpu", **settings, **change)


# -- coverage="pair-average": the error stated on average over pairs ----------------------------
SPREAD = tuple(
    float(s)
    for s in np.quantile(np.exp(np.random.default_rng(4).normal(0.0, 0.3, 4000)), np.arange(200) / 200 + 0.0025)
)


def spread_profile(pair_scales=SPREAD) -> NoiseProfile:
    scale = float(np.quantile(pair_scales, 0.99))
    fit = {"typical_sd": list(BAND_SD), "scale": scale, "pair_scales": list(pair_scales)}
    return make_profile(tuple(np.asarray(BAND_SD) * scale), fit=fit)


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


def test_the_average_rule_drops_a_plain_loser_sooner_than_the_per_image_rule(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(spread_profile().as_dict()))
    rng = np.random.default_rng(5)
    table = torch.tensor(timestep_tables(rng, [0.0, 0.05], 64))
    rounds = {}
    for coverage in ("per-image", "pair-average"):
        policy = SequentialElimination(
            min_samples=2, max_samples=64, bound="profile", noise_profile=str(path), coverage=coverage
        ).bind(["a", "b"])
        rounds[coverage] = run_policy_on_table(policy, table.numpy())[1]
    assert rounds["pair-average"] < rounds["per-image"]
    with pytest.raises(ValueError, match="coverage='pair-average' needs"):
        SequentialElimination(
            bound="profile", noise_profile=write_profile(tmp_path / "old.json"), coverage="pair-average"
        )
    with pytest.raises(ValueError, match="coverage must be one of"):
        SequentialElimination(coverage="average")


def test_the_tree_takes_the_same_coverage_and_refuses_what_it_cannot_hold(tmp_path):
    from fastgen.engine.policies import LabelTreePolicy

    spread = tmp_path / "spread.json"
    spread.write_text(json.dumps(spread_profile().as_dict()))
    options = {"tree": _two_level_tree(tmp_path), "confidence": 0.99, "node_samples": 8, "max_samples": 32}
    policy = LabelTreePolicy(noise_profile=str(spread), coverage="pair-average", **options).bind(["a", "b", "c", "d"])
    assert policy.coverage == "pair-average" and isinstance(policy.start_image(), ImageWatch)
    with pytest.raises(ValueError, match="coverage='pair-average' needs"):
        LabelTreePolicy(noise_profile=write_profile(tmp_path / "old.json"), coverage="pair-average", **options)
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
    profile, alpha, n, rho, share = spread_profile(), 0.01, 6, 1.0, 0.1
    level = alpha * (1 - share)  # the profile boundary's part of the error
    variance = profile.summed_variance(n, typical=True)
    scale = rho * profile.mean_variance(typical=True)
    plain = mixture_sum_boundary(variance, level, scale)
    adjusted = mixture_sum_boundary(variance, profile.average_level(level, rho, 64), scale)
    assert adjusted > plain * 1.05
    kept = torch.from_numpy(_sum_between(plain, adjusted, n))
    dropped = torch.from_numpy(_sum_between(adjusted, adjusted * 1.1, n))
    decide = dict(coverage="pair-average", max_samples=64, self_normalised_share=share)
    for table, worse in ((kept, False), (dropped, True)):
        assert bool(profile_decisions(table, 0, profile, alpha, rho, **decide)[1]) is worse
    # the per-image rule on the same sums uses the profile's own (larger) variances
    assert not profile_decisions(dropped, 0, profile, alpha, rho, coverage="per-image")[1]


@pytest.mark.parametrize("n_classes", [2, 5, 10])
def test_the_error_is_split_over_the_comparisons_with_the_best(tmp_path, n_classes):
    """One rival at a sum between the boundary at 1 - confidence and at (1 - confidence) / (K - 1):
    dropped with 2 classes, kept with more (the union bound over the K - 1 comparisons)."""
    path = write_profile(tmp_path / "p.json")
    profile = NoiseProfile.load(path)
    delta, n, share = 0.05, 4, 0.9  # the profile boundary's part of the error
    variance, rho = profile.summed_variance(n), profile.mean_variance()
    whole = mixture_sum_boundary(variance, delta * share, rho)
    split = mixture_sum_boundary(variance, delta / 9 * share, rho)
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
    profile and the tree descends at once; with the t-test the same look keeps both nodes. The
    pair's noise is half the profile's, as most pairs' is (the profile is their 99% quantile), so
    the noise check keeps the profile's boundary."""
    from fastgen.engine.policies import LabelTreePolicy

    rng = np.random.default_rng(3)
    table = torch.from_numpy(timestep_tables(rng, [0.0, 0.5], 2, noise_scale=0.5).astype(np.float32))
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
