"""Every model and scoring option of `fastgen classify` reaches what runs: a non-default value
changes the denoiser calls, the scores or the prediction, or the classifier the command builds,
and a value that changes the results is recorded in the results file's header. Three held-out
digits through `builtin:digits` (and `builtin:digits-flow` for the flow options), 2 samples per
class unless a policy is the subject."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import file_lines

from fastgen import DiffusionClassifier
from fastgen.backends.torch_backend import TorchBackend
from fastgen.builtin.digits_data import CLASS_NAMES, digits_split, to_pil
from fastgen.commands.main import main
from fastgen.inputs.images import ImageError

BASE = ["--policy", "exhaustive", "--n-samples", "2"]
TREE = {
    "nodes": [
        {"name": "round", "prompt": "a handwritten round digit", "children": ["zero", "three", "six", "eight", "nine"]},
        {"name": "straight", "prompt": "a handwritten straight digit", "children": ["one", "four", "seven"]},
    ]
}  # "two" and "five" sit under no node


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    _, _, test_x, _ = digits_split()
    folder = tmp_path_factory.mktemp("digits")
    for i in range(3):
        to_pil(test_x[i]).save(folder / f"{i}.png")
    return folder


class _Runner:
    """`fastgen classify` on the digits into a new results file per call."""

    def __init__(self, folder: Path, out_dir: Path):
        self.folder, self.out_dir, self.runs = folder, out_dir, 0

    def __call__(self, *options: str, model_options: tuple[str, ...] = tuple(BASE)) -> tuple[dict, dict]:
        self.runs += 1
        out = self.out_dir / f"run{self.runs}.jsonl"
        argv = ["classify", str(self.folder), "--out", str(out), "--no-progress", "--device", "cpu"]
        assert main([*argv, *model_options, *options]) == 0
        header, records = file_lines(out)
        return header["settings"], {Path(r["path"]).name: r for r in records}


@pytest.fixture(scope="module")
def classify(digit_folder, tmp_path_factory) -> _Runner:
    return _Runner(digit_folder, tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def baseline(classify) -> tuple[dict, dict]:
    return classify()


def _scores(records: dict) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in r["scores"].values()] for _, r in sorted(records.items())])


def _evals(records: dict) -> list[int]:
    return [r["unet_evals"] for _, r in sorted(records.items())]


def _subset(settings: dict, expected: dict) -> dict:
    return {key: settings.get(key) for key in expected}


@pytest.fixture
def built(monkeypatch) -> list[tuple[dict, DiffusionClassifier]]:
    """The (keyword arguments, classifier) of every `from_pretrained` call the command makes."""
    made = []
    original = DiffusionClassifier.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        clf = original(cls, *args, **kwargs)
        made.append((kwargs, clf))
        return clf

    monkeypatch.setattr(DiffusionClassifier, "from_pretrained", classmethod(spy))
    return made


def test_the_baseline_records_its_settings(baseline):
    settings, records = baseline
    assert settings["policy"] == {"name": "exhaustive", "n_samples": 2}
    expected = {
        "loss": "l2",
        "timesteps": "stratified",
        "weighting": 0.0,
        "seed": 0,
        "aggregate": "mean",
        "dtype": "float32",
    }
    assert _subset(settings, expected) == expected
    assert settings["input"]["invert"] == "auto" and settings["classes"] == list(CLASS_NAMES)
    assert len(records) == 3 and _evals(records) == [20] * 3 and np.isfinite(_scores(records)).all()


SCORE_CHANGES = {
    "template": (["--template", "a photo of the number {}"], {"prompts": [[f"a photo of the number {n}"] for n in CLASS_NAMES]}),
    "timesteps": (["--timesteps", "random"], {"timesteps": "random"}),
    "weighting": (["--weighting", "3"], {"weighting": 3.0}),
    "dtype": (["--dtype", "bf16"], {"dtype": "bfloat16"}),
    "invert": (["--invert", "always"], {"input": {"invert": "always", "polarity": "bright-on-dark"}}),
    "seed": (["--seed", "7"], {"seed": 7}),
    "loss": (["--loss", "l1"], {"loss": "l1"}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCORE_CHANGES))
def test_a_scoring_option_changes_the_scores_and_is_recorded(classify, baseline, name):
    options, recorded = SCORE_CHANGES[name]
    settings, records = classify(*options)
    assert _subset(settings, recorded) == recorded
    assert _evals(records) == _evals(baseline[1])  # the same work, scored differently
    changed = np.abs(_scores(records) - _scores(baseline[1])).max()
    assert changed > 1e-4, f"--{name} left every score within {changed}"


def test_inverting_bright_on_dark_digits_loses_them(classify, baseline):
    """--invert always turns the digits into dark-on-bright ones the model never saw."""
    _, records = classify("--invert", "always")
    assert sum(r["prediction"] != baseline[1][name]["prediction"] for name, r in records.items()) >= 2


def test_aggregate_min_takes_each_class_best_prompt(classify):
    templates = ["--template", "a handwritten digit {}", "--template", "a photo of the number {}"]
    mean_settings, mean = classify(*templates)
    min_settings, least = classify(*templates, "--aggregate", "min")
    assert mean_settings["aggregate"] == "mean" and min_settings["aggregate"] == "min"
    assert min_settings["prompts"][0] == ["a handwritten digit zero", "a photo of the number zero"]
    assert _evals(least) == _evals(mean) == [2 * 10 * 2] * 3  # every prompt of every class scored
    # the smaller of two prompt errors is at most their mean, and here below it
    assert (_scores(least) <= _scores(mean) + 1e-12).all() and (_scores(least) < _scores(mean) - 1e-6).any()


def test_classes_choose_the_prompts_scored(classify):
    settings, records = classify("--classes", "three,eight")
    assert settings["classes"] == ["three", "eight"]
    assert settings["prompts"] == [["a handwritten digit three"], ["a handwritten digit eight"]]
    assert _evals(records) == [2 * 2] * 3 and all(r["prediction"] in ("three", "eight") for r in records.values())


def test_stage_counts_and_kept_classes_set_the_calls(classify):
    settings, records = classify("--policy", "stages", "--n-samples", "2,4", "--to-keep", "3,1", model_options=())
    assert settings["policy"] == {"name": "stages", "n_samples": [2, 4], "to_keep": [3, 1]}
    assert _evals(records) == [10 * 2 + 3 * 2] * 3


def test_paired_test_options_set_the_calls(classify):
    paired = ["--policy", "paired", "--min-samples", "2", "--max-samples", "6", "--check-every", "2"]
    never_drops, full = classify(*paired, "--alpha", "1e-12", model_options=())
    drops, pruned = classify(*paired, "--alpha", "0.05", model_options=())
    assert never_drops["policy"]["alpha"] == 1e-12 and drops["policy"]["alpha"] == 0.05
    recorded = {"min_samples": 2, "max_samples": 6, "check_every": 2}
    assert _subset(drops["policy"], recorded) == recorded
    assert _evals(full) == [10 * 6] * 3  # p-values of digits never fall under 1e-12 with 6 samples
    assert all(e < 10 * 6 for e in _evals(pruned))
    # A t-test on 2-4 samples from the highest bands can drop a close winner (digit 0, a two,
    # loses to the runner-up three at 0.05); the others keep the full run's prediction.
    agree = [pruned[name]["prediction"] == record["prediction"] for name, record in full.items()]
    assert sum(agree) >= 2


def test_sequential_confidence_sets_the_calls(classify):
    sequential = ["--policy", "sequential", "--min-samples", "3", "--max-samples", "8"]
    sure_settings, sure = classify(*sequential, "--confidence", "0.999999", model_options=())
    loose_settings, loose = classify(*sequential, "--confidence", "0.5", model_options=())
    assert (sure_settings["policy"]["confidence"], loose_settings["policy"]["confidence"]) == (0.999999, 0.5)
    assert sure_settings["policy"]["name"] == "sequential" and sure_settings["policy"]["max_samples"] == 8
    # a higher confidence keeps rival classes longer
    assert all(s >= lo for s, lo in zip(_evals(sure), _evals(loose))) and sum(_evals(sure)) > sum(_evals(loose))


def test_the_noise_check_level_reaches_the_default_rule_and_moves_images(classify):
    """`--check-level` sets the model's own rule's check: at 0.999 per look every image's noise
    looks too high at once and each record says it was bounded without the profile."""
    default_settings, default = classify("--max-samples", "6", model_options=())
    settings, records = classify("--check-level", "0.999", "--max-samples", "6", model_options=())
    assert default_settings["policy"]["check_level"] == 0.1 and settings["policy"]["check_level"] == 0.999
    assert {r["noise_check"]["bound"] for r in records.values()} == {"self-normalised"}
    assert {r["noise_check"]["switched_at"] for r in records.values()} == {2}
    assert any(r["noise_check"]["bound"] == "profile" for r in default.values())


def test_screening_round_sets_the_calls(classify):
    options = ["--policy", "paired", "--alpha", "1e-12", "--min-samples", "3", "--max-samples", "4"]
    settings, records = classify(*options, "--screen-samples", "2", "--screen-keep", "3", model_options=())
    assert _subset(settings["policy"], {"screen_samples": 2, "screen_keep": 3}) == {
        "screen_samples": 2,
        "screen_keep": 3,
    }
    # all 10 classes on 2 samples, then the best 3 on to 4
    assert _evals(records) == [10 * 2 + 3 * 2] * 3
    _, unscreened = classify(*options, model_options=())
    assert _evals(unscreened) == [10 * 4] * 3


@pytest.fixture(scope="module")
def tree_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tree") / "digits_tree.json"
    path.write_text(json.dumps(TREE))
    return path


def test_tree_beam_and_node_samples_set_the_calls(classify, tree_file):
    tree = ["--policy", "tree", "--tree", str(tree_file), "--alpha", "1e-12", "--min-samples", "2"]
    tree += ["--max-samples", "4"]
    narrow_settings, narrow = classify(*tree, "--beam", "1", "--node-samples", "2", model_options=())
    wide_settings, wide = classify(*tree, "--beam", "2", "--node-samples", "2", model_options=())
    deep_settings, deep = classify(*tree, "--beam", "1", "--node-samples", "3", model_options=())
    assert Path(narrow_settings["policy"]["tree"]).name == "digits_tree.json"
    assert (narrow_settings["policy"]["beam"], wide_settings["policy"]["beam"]) == (1, 2)
    assert (narrow_settings["policy"]["node_samples"], deep_settings["policy"]["node_samples"]) == (2, 3)
    # the first round scores the two nodes and the two free leaves on node_samples each
    assert all(e >= 4 * 2 for e in _evals(narrow)) and all(e >= 4 * 3 for e in _evals(deep))
    # a wider beam goes down more nodes; node samples change the counts (and the branches taken)
    assert all(w >= n for w, n in zip(_evals(wide), _evals(narrow))) and sum(_evals(wide)) > sum(_evals(narrow))
    assert _evals(deep) != _evals(narrow)


def test_batch_size_reaches_the_denoiser_and_changes_no_score(classify, baseline, built):
    _, records = classify("--batch-size", "7")
    ((kwargs, clf),) = built
    assert kwargs["batch_size"] == 7 and clf.batch_size == 7
    np.testing.assert_allclose(_scores(records), _scores(baseline[1]), rtol=0, atol=1e-6)


def test_backend_and_its_options_reach_the_classifier(classify, baseline, built):
    _, records = classify("--backend", "torch", "--backend-option", "attention=math")
    ((kwargs, clf),) = built
    assert kwargs["backend"] == "torch" and kwargs["backend_options"] == {"attention": "math"}
    assert isinstance(clf.denoise, TorchBackend)
    np.testing.assert_allclose(_scores(records), _scores(baseline[1]), rtol=0, atol=1e-5)


def test_export_dir_holds_the_export_the_backend_runs(classify, baseline, tmp_path):
    pytest.importorskip("onnxruntime")
    _, records = classify("--backend", "onnxruntime", "--export-dir", str(tmp_path / "exports"))
    assert any(path.suffix == ".onnx" for path in (tmp_path / "exports").rglob("*"))
    np.testing.assert_allclose(_scores(records), _scores(baseline[1]), rtol=0, atol=1e-4)


def test_loading_flags_reach_from_pretrained(classify, built):
    classify("--local-files-only", "--allow-pickle", "--device", "cpu")
    ((kwargs, clf),) = built
    assert kwargs["local_files_only"] is True and kwargs["allow_pickle"] is True
    assert kwargs["device"] == "cpu" and clf.adapter.device.type == "cpu"


def test_max_pixels_refuses_larger_images(classify):
    _, records = classify("--max-pixels", "32")  # the digits are 8 x 8 = 64 pixels
    assert all("over the limit of 32" in r["error"] for r in records.values())


# 4 samples: at 2 every density gives the same noise levels (its end and its median)
FLOW = ("--model", "builtin:digits-flow", "--policy", "exhaustive", "--n-samples", "4")


@pytest.fixture(scope="module")
def flow_default(classify) -> tuple[dict, dict]:
    return classify(model_options=FLOW)


def test_the_model_option_chooses_the_model(flow_default, baseline):
    settings, records = flow_default
    assert settings["policy"] == {"name": "exhaustive", "n_samples": 4} and _evals(records) == [10 * 4] * 3
    assert settings["flow_timesteps"] == "uniform" and settings["flow_weighting"] == "velocity"
    assert np.abs(_scores(records) - _scores(baseline[1])).max() > 1e-2


@pytest.mark.parametrize(
    "options, recorded",
    [
        (["--flow-timesteps", "logit-normal"], {"flow_timesteps": "logit-normal"}),
        (["--flow-weighting", "sd3"], {"flow_weighting": "sd3"}),
        (["--conditioning", "max_sequence_length=8"], {"conditioning": {"max_sequence_length": 8}}),
    ],
)
def test_flow_options_change_the_flow_scores_and_are_recorded(classify, flow_default, options, recorded):
    _, default = flow_default
    settings, records = classify(*options, model_options=FLOW)
    assert _subset(settings, recorded) == recorded
    assert np.abs(_scores(records) - _scores(default)).max() > 1e-4


def test_the_progress_bar_counts_the_images(digit_folder, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert main(["classify", str(digit_folder), "--out", str(out), "--device", "cpu", *BASE]) == 0
    err = capsys.readouterr().err
    assert "3/3" in err and "img" in err
    assert len(file_lines(out)[1]) == 3


def test_classify_raises_on_an_unreadable_image_unless_asked_to_return_it(digit_folder, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    clf = DiffusionClassifier.from_pretrained(
        "builtin:digits", device="cpu", policy="exhaustive", policy_options={"n_samples": 2}
    )
    good = digit_folder / "0.png"
    with pytest.raises(ImageError, match="broken.png"):
        clf.classify([good, broken], on_error="raise")
    result, error = clf.classify([good, broken], on_error="return")
    assert isinstance(error, ImageError) and result.prediction in CLASS_NAMES
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'return', got 'skip'"):
        clf.classify([good], on_error="skip")
