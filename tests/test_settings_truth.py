"""What a classifier says its settings are is what it runs: the classes' aggregate, an assigned
config, policy options (a misspelt one is an error, wherever it is given), and calibrated
probabilities that sum to 1."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fastgen import DiffusionClassifier, Exhaustive
from fastgen.api.calibration import Calibration
from fastgen.inputs.classes import ClassSpec

NAMES = ["cat", "dog", "bird"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]
SCORING = {"policy": "exhaustive", "policy_options": {"n_samples": 4}, "device": "cpu", "batch_size": 16}


def _two_prompt_spec(aggregate: str) -> ClassSpec:
    prompts = tuple(tuple(t.format(n) for t in TEMPLATES) for n in NAMES)
    return ClassSpec(tuple(NAMES), prompts, aggregate=aggregate)


def _errors(results) -> np.ndarray:
    return np.stack([r.errors for r in results])


# -- the classes' aggregate ---------------------------------------------------------------------
def test_a_class_spec_aggregate_is_what_scores_and_what_is_recorded(model_dirs, images):
    folder = model_dirs["pixel-text"]
    clf = DiffusionClassifier.from_pretrained(folder, classes=_two_prompt_spec("min"), **SCORING)
    assert clf.config.aggregate == "min" and clf.settings()["aggregate"] == "min"
    by_min = DiffusionClassifier.from_pretrained(folder, classes=NAMES, templates=TEMPLATES, aggregate="min", **SCORING)
    by_mean = DiffusionClassifier.from_pretrained(folder, classes=NAMES, templates=TEMPLATES, **SCORING)
    results = clf.classify(images[:2])
    np.testing.assert_array_equal(_errors(results), _errors(by_min.classify(images[:2])))
    assert not np.allclose(_errors(results), _errors(by_mean.classify(images[:2])))


def test_an_aggregate_that_conflicts_with_the_class_spec_is_refused(model_dirs):
    folder = model_dirs["pixel-text"]
    with pytest.raises(ValueError, match="aggregate='mean' conflicts with the aggregate 'min'"):
        DiffusionClassifier.from_pretrained(folder, classes=_two_prompt_spec("min"), aggregate="mean", **SCORING)
    clf = DiffusionClassifier.from_pretrained(folder, classes=NAMES, **SCORING)
    with pytest.raises(ValueError, match="classes' aggregate is 'min'"):
        DiffusionClassifier(clf.adapter, _two_prompt_spec("min"), config=clf.config)
    with pytest.raises(ValueError, match="classes' aggregate is 'min'"):
        DiffusionClassifier(clf.adapter, _two_prompt_spec("min"), aggregate="mean")


def test_the_constructor_takes_the_settings_its_docstring_lists(model_dirs, images):
    folder = model_dirs["pixel-text"]
    loaded = DiffusionClassifier.from_pretrained(folder, classes=_two_prompt_spec("min"), seed=3, **SCORING)
    built = DiffusionClassifier(
        loaded.adapter, _two_prompt_spec("min"), policy="exhaustive", policy_options={"n_samples": 4}, seed=3,
        batch_size=16,
    )  # fmt: skip
    assert built.config == loaded.config and built.settings() == loaded.settings()
    result = built.classify(images[0])[0]
    assert result.unet_evals == 3 * 2 * 4  # classes x prompts x samples
    np.testing.assert_array_equal(result.errors, loaded.classify(images[0])[0].errors)
    assert DiffusionClassifier(loaded.adapter, loaded.classes, policy=Exhaustive(2)).policy == Exhaustive(2)


# -- assigning a config ---------------------------------------------------------------------------
def test_an_assigned_config_runs_as_a_classifier_built_with_it(model_dirs, images):
    folder = model_dirs["pixel-text"]
    clf = DiffusionClassifier.from_pretrained(folder, classes=NAMES, templates=TEMPLATES, **SCORING)
    clf.classify(images[:2])  # fills the caches of the old settings (noise bank, timesteps)
    clf.config = clf.config.replace(policy=Exhaustive(2), seed=7, aggregate="min", timesteps="random")
    fresh = DiffusionClassifier.from_pretrained(
        folder, classes=NAMES, templates=TEMPLATES, aggregate="min", seed=7, timesteps="random",
        **{**SCORING, "policy": Exhaustive(2), "policy_options": None},
    )  # fmt: skip
    assert clf.settings() == fresh.settings() and clf.policy == Exhaustive(2) and clf.classes.aggregate == "min"
    results, expected = clf.classify(images[:2]), fresh.classify(images[:2])
    assert [r.unet_evals for r in results] == [r.unet_evals for r in expected] == [3 * 2 * 2] * 2
    np.testing.assert_array_equal(_errors(results), _errors(expected))


def test_an_assigned_tree_policy_scores_its_inner_nodes_and_back(model_dirs, images, tmp_path):
    """A label tree adds units (its inner nodes) to encode; going back drops them again."""
    tree = tmp_path / "tree.json"
    tree.write_text(json.dumps({"nodes": [{"name": "pet", "prompt": "a photo of a pet", "children": ["cat", "dog"]}]}))
    options = {"tree": str(tree), "beam": 1, "node_samples": 2, "min_samples": 2, "max_samples": 4, "alpha": 0.4}
    folder = model_dirs["pixel-text"]
    clf = DiffusionClassifier.from_pretrained(folder, classes=NAMES, **SCORING)
    plain = clf.classify(images[0])[0]
    clf.config = clf.config.updated(policy="tree", policy_options=options)
    fresh = DiffusionClassifier.from_pretrained(folder, classes=NAMES, device="cpu", batch_size=16, policy="tree",
                                                policy_options=options)  # fmt: skip
    assert clf.conditions.shape[0] == fresh.conditions.shape[0] == len(NAMES) + 1
    result, expected = clf.classify(images[0])[0], fresh.classify(images[0])[0]
    assert result.unet_evals == expected.unet_evals and result.n_samples.tolist() == expected.n_samples.tolist()
    np.testing.assert_array_equal(result.partial_errors, expected.partial_errors)
    clf.config = clf.config.replace(policy=Exhaustive(4))
    assert clf.conditions.shape[0] == len(NAMES)
    np.testing.assert_array_equal(clf.classify(images[0])[0].errors, plain.errors)


def test_a_refused_config_changes_nothing(model_dirs):
    clf = DiffusionClassifier.from_pretrained(model_dirs["pixel-text"], classes=NAMES, **SCORING)
    before = clf.settings()
    with pytest.raises(TypeError, match="config must be a ScoringConfig"):
        clf.config = {"seed": 3}
    assert clf.settings() == before


# -- policy options -------------------------------------------------------------------------------
VALID_PAIRED = "which takes alpha, min_samples, max_samples, check_every, screen_samples, screen_keep"


def test_misspelt_policy_options_are_refused_by_the_api(model_dirs):
    folder = model_dirs["pixel-text"]
    for policy in ("paired", None):  # named, and the default policy
        with pytest.raises(ValueError, match=f"maxsamples does not apply to .*paired.*{VALID_PAIRED}"):
            DiffusionClassifier.from_pretrained(
                folder, classes=NAMES, device="cpu", policy=policy, policy_options={"maxsamples": 30}
            )
    clf = DiffusionClassifier.from_pretrained(folder, classes=NAMES, **SCORING)
    with pytest.raises(ValueError, match=f"max_sample does not apply to policy 'paired', {VALID_PAIRED}"):
        DiffusionClassifier(clf.adapter, clf.classes, policy="paired", policy_options={"max_sample": 50})
    with pytest.raises(ValueError, match="no setting 'seeed'; the settings are loss, timesteps"):
        DiffusionClassifier(clf.adapter, clf.classes, seeed=3)


def _with_fastgen_json(model_dir, tmp_path, defaults: dict):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "fastgen.json").write_text(json.dumps(defaults))
    return folder


def test_misspelt_options_in_a_model_fastgen_json_are_refused(model_dirs, tmp_path):
    folder = _with_fastgen_json(model_dirs["pixel-text"], tmp_path, {"policy": {"name": "paired", "alfa": 0.01}})
    with pytest.raises(ValueError, match="alfa does not apply to policy 'paired' \\(in the model's fastgen.json\\)"):
        DiffusionClassifier.from_pretrained(folder, classes=NAMES, device="cpu")
    (folder / "fastgen.json").write_text(json.dumps({"scoring": {"sed": 3}}))
    with pytest.raises(ValueError, match="the model's fastgen.json \"scoring\" has no setting 'sed'"):
        DiffusionClassifier.from_pretrained(folder, classes=NAMES, device="cpu")


def test_options_of_another_policy_are_refused_for_the_model_default(model_dirs, tmp_path):
    defaults = {"policy": {"name": "paired", "alpha": 0.01, "max_samples": 40}}
    folder = _with_fastgen_json(model_dirs["pixel-text"], tmp_path, defaults)
    with pytest.raises(ValueError, match="n_samples does not apply to the model's default policy \\(paired\\)"):
        DiffusionClassifier.from_pretrained(folder, classes=NAMES, device="cpu", policy_options={"n_samples": 5})
    clf = DiffusionClassifier.from_pretrained(folder, classes=NAMES, device="cpu", policy_options={"min_samples": 8})
    assert (clf.policy.alpha, clf.policy.min_samples, clf.policy.max_samples) == (0.01, 8, 40)


# -- calibrated probabilities ---------------------------------------------------------------------
CALIBRATIONS = {
    "temperature": Calibration("temperature", 0.02),
    "platt": Calibration("platt", 0.02, {"margin": 4.0, "log_evals": -0.3, "bias": -0.5}),
    # a flat Platt map (top class 1/2) with a temperature that leaves the others no softmax mass
    "platt-underflow": Calibration("platt", 1e-4, {"margin": 0.0, "log_evals": 0.0, "bias": 0.0}),
}


@pytest.mark.parametrize("name", list(CALIBRATIONS))
@pytest.mark.parametrize(
    "scores, partial",
    [
        ({"cat": 0.1189}, None),
        ({"cat": 0.31, "dog": 0.30, "bird": 0.36}, None),
        ({"cat": 0.31, "dog": 0.30, "bird": None, "fish": None}, {"bird": 0.33}),
        ({"cat": 0.2, "dog": 0.9, "bird": 3.0}, None),
    ],
    ids=["one-class", "three-close", "pruned", "far-apart"],
)
def test_calibrated_probabilities_sum_to_one(name, scores, partial):
    p = CALIBRATIONS[name].probabilities(scores, unet_evals=120, partial_scores=partial)
    assert list(p) == list(scores)
    assert sum(p.values()) == pytest.approx(1.0, abs=1e-12)
    assert all(0 <= v <= 1 for v in p.values())


def test_a_single_class_is_certain_under_every_calibration():
    for calibration in CALIBRATIONS.values():
        assert calibration.probabilities({"cat": 0.1189}, unet_evals=40) == {"cat": 1.0}
