"""Shipped label sets (`builtin:NAME`): their data, their templates, and how `classes=` and
`--classes` resolve them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import file_lines
from PIL import Image

from fastgen import DiffusionClassifier, build_classes
from fastgen.commands.main import main
from fastgen.eval.model_vs_human import CATEGORIES_16
from fastgen.inputs.classes import LABEL_SET_DIR, label_set_names, load_label_set

EXPECTED_COUNTS = {
    "imagenet": 1000,
    "imagenet-clip": 1000,
    "cifar10": 10,
    "cifar100": 100,
    "stl10": 10,
    "pets": 37,
    "flowers102": 102,
    "food101": 101,
    "model-vs-human": 16,
}
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_every_shipped_set_is_listed_with_its_count():
    assert label_set_names() == sorted(EXPECTED_COUNTS)


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_shipped_set_loads_with_unique_names_and_one_slot_per_template(name):
    label_set = load_label_set(f"builtin:{name}")
    data = json.loads((LABEL_SET_DIR / f"{name}.json").read_text(encoding="utf-8"))
    assert data["name"] == label_set.name == name
    assert len(label_set.classes) == EXPECTED_COUNTS[name]
    assert len(set(label_set.classes)) == len(label_set.classes)
    assert len({c.lower() for c in label_set.classes}) == len(label_set.classes), "names differing only in case"
    assert all(c == c.strip() and c for c in label_set.classes)
    assert len(label_set.prompt_names) == len(label_set.classes)
    assert label_set.templates and all(t.count("{}") == 1 for t in label_set.templates)
    assert label_set.source.strip() and label_set.title.strip()
    spec = build_classes(f"builtin:{name}")
    assert spec.names == label_set.classes and len(spec.flat_prompts) == len(spec) * len(label_set.templates)


def test_imagenet_is_in_class_index_order_with_its_template():
    spec = build_classes("builtin:imagenet")
    assert len(spec) == 1000 and len(set(spec.names)) == 1000
    known = {0: "tench", 1: "goldfish", 207: "golden retriever", 281: "tabby", 999: "toilet tissue"}
    assert {i: spec.names[i] for i in known} == known
    # The names WordNet gives twice are told apart.
    assert (spec.names[134], spec.names[517]) == ("crane (bird)", "crane (machine)")
    assert spec.names[638] != spec.names[639] and spec.names[638].startswith("maillot")
    assert spec.prompts[207] == ("a photo of a golden retriever.",)
    assert spec.labels is None  # a class-conditional model reads the list position: the class index


def test_imagenet_clip_keeps_the_published_prompts_of_classes_named_alike():
    spec = build_classes("builtin:imagenet-clip")
    assert (spec.names[281], spec.names[999]) == ("tabby cat", "toilet paper")
    assert spec.names[657] != spec.names[744]
    assert spec.prompts[657] == spec.prompts[744] == ("a photo of a missile.",)


def test_pets_prompts_name_the_species_while_classes_stay_breeds():
    spec = build_classes("builtin:pets")
    assert spec.names[0] == "Abyssinian" and spec.prompts[0] == ("a photo of a Abyssinian cat, a type of pet.",)
    assert spec.prompts[1] == ("a photo of a American Bulldog, a type of pet.",)
    assert spec.prompts[3] == ("a photo of a Basset Hound dog, a type of pet.",)


@pytest.mark.parametrize(
    "name, first_prompt",
    [
        ("cifar10", "a blurry photo of a airplane."),
        ("cifar100", "a blurry photo of a apple."),
        ("stl10", "a photo of a airplane."),
        ("flowers102", "a photo of a pink primrose, a type of flower."),
        ("food101", "a photo of apple pie, a type of food."),
        ("model-vs-human", "a bad photo of a airplane."),
    ],
)
def test_each_set_uses_its_published_template(name, first_prompt):
    assert build_classes(f"builtin:{name}").prompts[0] == (first_prompt,)


def test_model_vs_human_set_is_the_evaluations_categories_in_order():
    assert build_classes("builtin:model-vs-human").names == CATEGORIES_16


def test_given_templates_override_the_sets_and_aggregate_is_kept():
    spec = build_classes("builtin:cifar10", templates=["a drawing of a {}.", "a {} again."], aggregate="min")
    assert spec.names == CIFAR10 and spec.aggregate == "min"
    assert spec.prompts[9] == ("a drawing of a truck.", "a truck again.")


@pytest.mark.parametrize("spelling", ["builtin:CIFAR-10", "builtin:cifar_10", "builtin:Cifar10"])
def test_set_names_ignore_case_dashes_and_underscores(spelling):
    assert build_classes(spelling).names == CIFAR10


def test_imagenet_1k_is_an_alias():
    assert build_classes("builtin:imagenet-1k").names == build_classes("builtin:imagenet").names


def test_unknown_set_is_refused_with_the_available_ones_before_any_model_loads(tmp_path):
    with pytest.raises(ValueError, match=r"unknown label set 'builtin:cifar11'.*builtin:cifar10.*builtin:imagenet"):
        build_classes("builtin:cifar11")
    with pytest.raises(ValueError, match="unknown label set"):  # not a model-loading error: no model is read
        DiffusionClassifier.from_pretrained(tmp_path / "no-such-model", classes="builtin:cifar11")


def test_from_pretrained_prefers_the_sets_templates_to_the_models_and_given_ones_to_both():
    # builtin:digits declares its own template, "a handwritten digit {}". Its default policy's noise
    # profile was fitted for its own prompts only, so another class set takes a boundary without one.
    options = {"device": "cpu", "policy": "exhaustive"}
    clf = DiffusionClassifier.from_pretrained("builtin:digits", classes="builtin:cifar10", **options)
    assert clf.classes.names == CIFAR10 and clf.classes.prompts[0] == ("a blurry photo of a airplane.",)
    clf = DiffusionClassifier.from_pretrained(
        "builtin:digits", classes="builtin:cifar10", templates=["digit {}"], **options
    )
    assert clf.classes.prompts[0] == ("digit airplane",)


def test_classify_command_takes_a_label_set(tmp_path, capsys):
    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, size=(8, 8), dtype=np.uint8)).save(image)
    out = tmp_path / "results.jsonl"
    argv = [
        "classify", str(image), "--model", "builtin:digits", "--classes", "builtin:cifar10", "--out", str(out),
        "--policy", "exhaustive", "--n-samples", "1", "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    header, records = file_lines(out)
    assert header["settings"]["classes"] == list(CIFAR10)
    assert header["settings"]["prompts"][9] == ["a blurry photo of a truck."]
    assert len(records) == 1 and records[0]["prediction"] in CIFAR10
