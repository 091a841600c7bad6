"""Shape bias and error consistency on hand-made decision tables whose values are known."""

from __future__ import annotations

import math

import pytest

from fastgen.eval.consistency import error_consistency
from fastgen.eval.shape_bias import cue_conflict_classes, decisions_from, shape_bias


def test_file_names_give_shape_and_texture_as_model_vs_human_writes_them():
    assert cue_conflict_classes("airplane1-bicycle2.png") == ("airplane", "bicycle")
    assert cue_conflict_classes("/data/cue-conflict/cat/cat7-elephant10.png") == ("cat", "elephant")
    assert cue_conflict_classes("bear-zebra.png") == ("bear", "zebra")
    assert cue_conflict_classes("photo_0001.png") is None


def test_shape_bias_counts_shape_and_texture_decisions_only():
    rows = [
        ("cat1-elephant1.png", "cat"),  # shape
        ("cat2-elephant1.png", "cat"),  # shape
        ("cat3-dog1.png", "dog"),  # texture
        ("bear1-zebra1.png", "bear"),  # shape
        ("bear2-zebra2.png", "zebra"),  # texture
        ("bear3-zebra3.png", "horse"),  # neither: not in the ratio
        ("dog1-dog2.png", "dog"),  # same class for both: left out
        ("cow1-zebra1.png", "cow"),  # cow is not scored: left out
        ("notes.png", "cat"),  # no cue-conflict name: left out
    ]
    decisions, left_out = decisions_from(rows, class_names=["cat", "dog", "elephant", "bear", "zebra", "horse"])
    assert left_out == {"not_cue_conflict_name": 1, "shape_equals_texture": 1, "class_not_scored": 1}
    result = shape_bias(decisions, bootstrap=500)
    assert (result["shape_decisions"], result["texture_decisions"], result["other_decisions"]) == (3, 2, 1)
    assert result["shape_bias"] == pytest.approx(3 / 5)
    assert result["per_category"]["cat"]["shape_bias"] == pytest.approx(2 / 3)
    assert result["per_category"]["bear"]["shape_bias"] == pytest.approx(1 / 2)
    assert result["per_category"]["bear"]["other_decisions"] == 1
    low, high = result["interval"]
    assert 0.0 <= low <= result["shape_bias"] <= high <= 1.0 and high - low > 0.2  # five decisions: wide


def test_all_shape_or_all_texture_are_the_ends_of_the_scale():
    shape_only, _ = decisions_from([(f"cat{i}-dog{i}.png", "cat") for i in range(20)])
    texture_only, _ = decisions_from([(f"cat{i}-dog{i}.png", "dog") for i in range(20)])
    assert shape_bias(shape_only)["shape_bias"] == 1.0 and shape_bias(shape_only)["interval"] == [1.0, 1.0]
    assert shape_bias(texture_only)["shape_bias"] == 0.0
    neither, _ = decisions_from([("cat1-dog1.png", "bird")])
    assert math.isnan(shape_bias(neither)["shape_bias"])


def test_the_interval_narrows_with_more_images_around_the_same_bias():
    def table(n):
        return decisions_from([(f"cat{i}-dog{i}.png", "cat" if i % 4 else "dog") for i in range(n)])[0]

    small, large = shape_bias(table(40)), shape_bias(table(4000))
    assert small["shape_bias"] == large["shape_bias"] == pytest.approx(0.75)
    assert large["interval"][1] - large["interval"][0] < (small["interval"][1] - small["interval"][0]) / 5
    assert large["interval"][0] < 0.75 < large["interval"][1]


def test_kappa_is_one_for_the_same_errors_zero_for_chance_and_minus_one_for_opposite_errors():
    a = [True, True, False, False, True, False, True, False]
    same = error_consistency(a, a)
    assert same["kappa"] == pytest.approx(1.0) and same["c_obs"] == 1.0
    opposite = error_consistency(a, [not x for x in a])
    assert opposite["c_obs"] == 0.0 and opposite["c_exp"] == pytest.approx(0.5)
    assert opposite["kappa"] == pytest.approx(-1.0)
    # b is right on half of a's right answers and half of a's wrong ones: agreement at chance
    b = [True, True, True, True, False, False, False, False]
    chance = error_consistency(a, b)
    assert chance["c_obs"] == pytest.approx(chance["c_exp"]) and chance["kappa"] == pytest.approx(0.0)


def test_kappa_corrects_for_the_agreement_high_accuracies_give():
    # Two observers right on 95% of the images, wrong on different ones: they agree on 90% of the
    # images, below the 90.5% that independent errors would give.
    a = [True] * 9 + [False] + [True] * 10
    b = [True] * 10 + [True] * 9 + [False]
    a, b = a[:20], b[:20]
    result = error_consistency(a, b)
    assert result["accuracy_a"] == result["accuracy_b"] == 0.95
    assert result["c_obs"] == pytest.approx(0.9) and result["c_exp"] == pytest.approx(0.95**2 + 0.05**2)
    assert result["kappa"] == pytest.approx((0.9 - 0.905) / (1 - 0.905))
    assert result["kappa"] < 0


def test_kappa_is_undefined_when_both_are_always_right_and_lists_must_match():
    assert math.isnan(error_consistency([True, True], [True, True])["kappa"])
    with pytest.raises(ValueError, match="equal-length"):
        error_consistency([True], [True, False])


def test_the_shape_bias_command_classifies_a_folder_and_writes_its_decisions(tmp_path, capsys):
    """Digits named as cue-conflict images (the digit drawn is the 'shape', another digit the
    'texture'): the command classifies them with the model and counts shape decisions."""
    import json

    from fastgen.builtin.digits_data import CLASS_NAMES, digits_split, to_pil
    from fastgen.commands.main import main

    _, _, test_x, test_y = digits_split()
    folder = tmp_path / "cue-conflict" / "digits"
    folder.mkdir(parents=True)
    for i in range(6):
        shape, texture = CLASS_NAMES[test_y[i]], CLASS_NAMES[(test_y[i] + 1) % 10]
        to_pil(test_x[i]).save(folder / f"{shape}{i}-{texture}{i}.png")
    to_pil(test_x[7]).save(folder / "not-a-cue-conflict-name.png")
    out = tmp_path / "bias.json"
    argv = ["eval", "shape-bias", str(tmp_path / "cue-conflict"), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    report = json.loads(out.read_text())
    assert report["images"] == 6 and len(report["decisions"]) == 7
    assert report["left_out"]["not_cue_conflict_name"] == 1
    assert report["shape_decisions"] + report["texture_decisions"] + report["other_decisions"] == 6
    assert report["shape_decisions"] >= 5  # the model reads the digits drawn
    assert "shape bias:" in printed.out and report["config"]["policy"]["name"] == "sequential"
    assert main(argv) == 2  # an existing --out is not replaced without --force
