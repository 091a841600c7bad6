"""`ScoringConfig`: one frozen object for every scoring setting, recorded and rebuilt exactly."""

from __future__ import annotations

import json

import pytest

from fastgen import DiffusionClassifier, Exhaustive, FixedStages, PairedTest, ScoringConfig


def test_config_round_trips_through_json():
    config = ScoringConfig.build(
        policy="stages", policy_options={"n_samples": (6, 12), "to_keep": (3, 1)}, loss="huber",
        timesteps="random", weighting=2.5, seed=7, aggregate="min", batch_size=33,
    )  # fmt: skip
    data = json.loads(json.dumps(config.as_dict()))
    assert data["policy"] == {"name": "stages", "n_samples": [6, 12], "to_keep": [3, 1]}
    assert ScoringConfig.from_dict(data) == config


def test_model_defaults_apply_only_when_no_policy_is_named():
    defaults = {"policy": {"name": "paired", "alpha": 0.01, "max_samples": 40}}
    from_model = ScoringConfig.build(model_defaults=defaults, policy_options={"min_samples": 10})
    assert from_model.policy == PairedTest(alpha=0.01, min_samples=10, max_samples=40)
    named = ScoringConfig.build(policy="stages", model_defaults=defaults)
    assert isinstance(named.policy, FixedStages)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("seed", -1, "seed must be an integer in 0.."), ("batch_size", 0, "batch_size must be an integer >= 1"),
     ("loss", "l3", "loss must be one of"), ("timesteps", "odd", "timesteps must be one of")],
)  # fmt: skip
def test_bad_settings_are_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        ScoringConfig(**{field: value})


def test_classifier_reads_and_replaces_its_config(model_dirs):
    clf = DiffusionClassifier.from_pretrained(
        model_dirs["pixel-text"], classes=["cat", "dog"], device="cpu", policy="exhaustive",
        policy_options={"n_samples": 3}, seed=5, batch_size=9,
    )  # fmt: skip
    assert clf.config.seed == clf.seed == 5 and clf.policy.n_samples == 3
    clf.batch_size = 4
    assert clf.config.batch_size == 4 and clf.config.seed == 5
    same = DiffusionClassifier.from_pretrained(
        model_dirs["pixel-text"], classes=["cat", "dog"], device="cpu", config=clf.config
    )
    assert same.config == clf.config


def test_unknown_settings_and_policy_options_are_refused_naming_the_valid_ones():
    with pytest.raises(
        ValueError, match="maxsamples does not apply to the default policy \\(paired\\), which takes alpha"
    ):
        ScoringConfig.build(policy_options={"maxsamples": 30})
    with pytest.raises(ValueError, match="alfa does not apply to policy 'paired'"):
        ScoringConfig.from_dict({"policy": {"name": "paired", "alfa": 0.1}, "seed": 1})
    with pytest.raises(ValueError, match="ScoringConfig has no setting 'sed'; the settings are loss, timesteps"):
        ScoringConfig.from_dict({"policy": {"name": "paired"}, "sed": 1})
    with pytest.raises(ValueError, match="fastgen.json \"scoring\" has no setting 'weigthing'"):
        ScoringConfig.build(model_defaults={"scoring": {"weigthing": 2.0}})
    with pytest.raises(ValueError, match="alfa does not apply to policy 'paired' \\(in the model's fastgen.json\\)"):
        ScoringConfig.build(model_defaults={"policy": {"name": "paired", "alfa": 0.1}})


def test_updated_changes_only_what_is_given():
    config = ScoringConfig.build(policy="paired", policy_options={"alpha": 0.01}, seed=4)
    tighter = config.updated(policy_options={"max_samples": 60})
    assert tighter.policy == PairedTest(alpha=0.01, max_samples=60) and tighter.seed == 4
    exhaustive = config.updated(policy="exhaustive", policy_options={"n_samples": 7}, loss="l1")
    assert exhaustive == config.replace(policy=Exhaustive(7), loss="l1")
    assert config.updated() == config
    with pytest.raises(ValueError, match="max_sample does not apply to policy 'paired'"):
        config.updated(policy_options={"max_sample": 60})
