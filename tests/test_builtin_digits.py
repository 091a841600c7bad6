"""The embedded model: loads offline from the package, and classifies held-out digits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from accuracy_floors import (
    DIGITS_DEFAULT_POLICY_ERROR_RATE,
    DIGITS_EXHAUSTIVE_ERROR_RATE,
    LOGISTIC_BASELINE_ERROR_RATE,
    accuracy_floor,
)
from helpers import errors_of, file_lines
from PIL import Image

import fastgen
from fastgen import DiffusionClassifier
from fastgen.builtin import BUILTIN_MODELS
from fastgen.builtin.digits_data import CLASS_NAMES, digits_split, to_pil
from fastgen.commands.main import main
from fastgen.inputs.polarity import PolarityRule, background_is_bright


def test_builtin_digits_is_small_and_loads_offline():
    folder = BUILTIN_MODELS["digits"]
    size = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert size < 10 * 2**20
    clf = DiffusionClassifier.from_pretrained("builtin:digits", device="cpu", local_files_only=True)
    assert clf.classes.names == tuple(CLASS_NAMES)
    assert clf.adapter.kind == "pixel-text" and clf.adapter.x0_shape == (1, 8, 8)


def test_held_out_accuracy_on_a_fixed_subset_is_far_above_chance():
    _, _, test_x, test_y = digits_split()
    clf = DiffusionClassifier.from_pretrained(
        "builtin:digits", device="cpu", policy="exhaustive", policy_options={"n_samples": 16}, batch_size=320
    )
    results = clf.classify([to_pil(image) for image in test_x[:60]])
    predictions = np.array([CLASS_NAMES.index(r.prediction) for r in results])
    accuracy = (predictions == test_y[:60]).mean()
    # measured 1.0 here; the floor (55/60) is the held-out error rate's 99.9% binomial bound
    assert accuracy >= accuracy_floor(60, DIGITS_EXHAUSTIVE_ERROR_RATE), accuracy


def test_cli_classifies_png_digits_with_the_builtin_model(tmp_path, capsys):
    _, _, test_x, test_y = digits_split()
    for i in range(6):
        folder = tmp_path / CLASS_NAMES[test_y[i]]
        folder.mkdir(exist_ok=True)
        to_pil(test_x[i]).save(folder / f"{i}.png")
    out = tmp_path / "out.jsonl"
    code = main(["classify", str(tmp_path), "--model", "builtin:digits", "--out", str(out), "--labels-from-folders",
                 "--no-progress", "--device", "cpu"])  # fmt: skip
    assert code == 0
    header, lines = file_lines(out)
    assert header["model"] == "builtin:digits"
    assert len(lines) == 6 and all(r["prediction"] in CLASS_NAMES for r in lines)
    right = sum(r["prediction"] == Path(r["path"]).parent.name for r in lines)
    assert right >= 6 * accuracy_floor(6, DIGITS_DEFAULT_POLICY_ERROR_RATE)  # measured: all 6
    printed = re.search(r"accuracy: ([\d.]+) over (\d+) labelled images", capsys.readouterr().err)
    assert printed and float(printed[1]) == pytest.approx(right / 6, abs=5e-5) and printed[2] == "6"


def test_demo_prints_one_json_object_last(capsys):
    assert main(["demo", "--n-images", "12", "--json", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    _, _, _, test_y = digits_split()
    assert report["images"] == 12 and len(report["predictions"]) == 12
    assert report["accuracy"] == np.mean(np.array(report["predictions"]) == test_y[:12])
    # both measured 1.0 (of 12); floors: the 99.9% binomial bounds of the held-out error rates
    assert report["accuracy"] >= accuracy_floor(12, DIGITS_DEFAULT_POLICY_ERROR_RATE)
    assert 1 >= report["baseline_accuracy"] >= accuracy_floor(12, LOGISTIC_BASELINE_ERROR_RATE)
    assert report["unet_evals_per_image"] >= 2 * 10 and report["images_per_s"] > 0
    assert f"fastgen accuracy:       {report['accuracy']:.4f}" in out


def test_classes_without_a_template_keep_the_models_own_prompts(tmp_path, capsys):
    _, _, test_x, _ = digits_split()
    images = [to_pil(image) for image in test_x[:20]]
    options = {"device": "cpu", "policy": "exhaustive", "policy_options": {"n_samples": 8}, "batch_size": 400}
    own = DiffusionClassifier.from_pretrained("builtin:digits", **options)
    named = DiffusionClassifier.from_pretrained("builtin:digits", classes=list(CLASS_NAMES), **options)
    assert named.classes.prompts == own.classes.prompts == tuple((f"a handwritten digit {n}",) for n in CLASS_NAMES)
    assert np.array_equal(errors_of(named.classify(images)), errors_of(own.classify(images)))
    subset = DiffusionClassifier.from_pretrained("builtin:digits", classes="three,eight", **options)
    assert subset.classes.prompts == (("a handwritten digit three",), ("a handwritten digit eight",))
    # the one-call API and the command line take the same default
    one_call = fastgen.classify(images[:4], list(CLASS_NAMES), **options)
    assert [r.prediction for r in one_call] == [r.prediction for r in own.classify(images[:4])]
    for i, image in enumerate(images[:2]):
        image.save(tmp_path / f"{i}.png")
    out = tmp_path / "out.jsonl"
    assert main(["classify", str(tmp_path), "--classes", ",".join(CLASS_NAMES), "--out", str(out), "--no-progress",
                 "--device", "cpu", "--policy", "exhaustive", "--n-samples", "4"]) == 0  # fmt: skip
    assert file_lines(out)[0]["settings"]["prompts"] == [list(p) for p in own.classes.prompts]


def test_the_border_rule_tells_both_polarities_of_every_held_out_digit():
    _, _, test_x, _ = digits_split()
    pixels = torch.from_numpy(test_x / 255.0).float()[:, None]
    rule = PolarityRule("auto", "bright-on-dark")
    assert not any(rule.needs_inverting(p) for p in pixels)
    assert all(rule.needs_inverting(1 - p) for p in pixels)
    rgb_on_white = (1 - pixels).expand(-1, 3, -1, -1)
    assert all(background_is_bright(p) for p in rgb_on_white)


def test_dark_on_white_digits_are_read_as_well_as_bright_on_dark_ones(tmp_path):
    """Held-out digits saved as files both ways: bright-on-dark 8x8 grayscale as scikit-learn has
    them, and dark ink on white as RGB at 32x32, as most people save a digit."""
    _, _, test_x, test_y = digits_split()
    n = 40
    bright, dark = [], []
    for i in range(n):
        bright.append(tmp_path / f"bright{i}.png")
        to_pil(test_x[i]).save(bright[-1])
        dark.append(tmp_path / f"dark{i}.png")
        to_pil(255 - test_x[i]).convert("RGB").resize((32, 32), Image.NEAREST).save(dark[-1])
    options = {"device": "cpu", "policy": "exhaustive", "policy_options": {"n_samples": 16}, "batch_size": 640}
    clf = DiffusionClassifier.from_pretrained("builtin:digits", **options)
    assert clf.polarity == PolarityRule("auto", "bright-on-dark")

    def accuracy(results):
        return np.mean([CLASS_NAMES.index(r.prediction) == y for r, y in zip(results, test_y[:n])])

    on_dark, on_white = clf.classify(bright), clf.classify(dark)
    assert accuracy(on_dark) >= 0.95 and accuracy(on_white) >= 0.95, (accuracy(on_dark), accuracy(on_white))
    agree = np.mean([a.prediction == b.prediction for a, b in zip(on_dark, on_white)])
    assert agree >= 0.95
    # the override: never inverting reads dark-on-white digits as the wrong thing
    never = DiffusionClassifier.from_pretrained("builtin:digits", invert="never", **options)
    assert accuracy(never.classify(dark[:20])) <= 0.3


def test_auto_invert_needs_a_declared_polarity(model_dirs):
    with pytest.raises(ValueError, match="declares none"):
        DiffusionClassifier.from_pretrained(model_dirs["pixel-text"], classes=["a", "b"], device="cpu", invert="auto")
    plain = DiffusionClassifier.from_pretrained(model_dirs["pixel-text"], classes=["a", "b"], device="cpu")
    assert plain.polarity.mode == "never" and plain.settings()["input"] == {"invert": "never", "polarity": None}
