"""Classes and prompts: accepted forms and clear errors."""

from __future__ import annotations

import pytest

from fastgen import DiffusionClassifier, build_classes


def test_names_with_several_templates_become_prompts_per_class():
    spec = build_classes(["cat", "dog"], templates=["a photo of a {}.", "a drawing of a {}."])
    assert spec.prompts == (("a photo of a cat.", "a drawing of a cat."), ("a photo of a dog.", "a drawing of a dog."))
    assert spec.prompt_class == [0, 0, 1, 1]


def test_names_file_comma_list_and_prompt_csv(tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("cat\n\n# comment\ndog\nbird\n")
    assert build_classes(names).names == ("cat", "dog", "bird")
    assert build_classes("cat, dog").names == ("cat", "dog")
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text("prompt,classname,classidx\na cat,cat,3\na kitty,cat,3\na dog,dog,5\n")
    spec = build_classes(csv_file, aggregate="min")
    assert spec.names == ("cat", "dog") and spec.labels == (3, 5)
    assert spec.prompts == (("a cat", "a kitty"), ("a dog",)) and spec.aggregate == "min"


@pytest.mark.parametrize(
    "classes, templates, message",
    [
        ([], None, "no classes were given"),
        (None, None, "no classes were given"),
        (["cat", "dog", "cat"], None, r"duplicate class names: \['cat'\]"),
        (["cat", "  "], None, "class name is empty"),
        (["cat", "dog"], ["a photo"], "must contain exactly one"),
        (["cat", "dog"], [], "templates is empty"),
    ],
)
def test_bad_classes_are_refused_with_a_reason(classes, templates, message):
    with pytest.raises(ValueError, match=message):
        build_classes(classes, templates=templates)


def test_wrong_class_files_are_named(tmp_path):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("name,index\ncat,1\n")
    with pytest.raises(ValueError, match="prompt,classname,classidx"):
        build_classes(bad_csv)
    bad_idx = tmp_path / "idx.csv"
    bad_idx.write_text("prompt,classname,classidx\na cat,cat,three\n")
    with pytest.raises(ValueError, match="idx.csv:2: classidx must be an integer"):
        build_classes(bad_idx)
    empty_prompt = tmp_path / "empty.csv"
    empty_prompt.write_text("prompt,classname,classidx\n,cat,1\na dog,dog,2\n")
    with pytest.raises(ValueError, match="class 'cat' has an empty prompt"):
        build_classes(empty_prompt)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        build_classes(tmp_path / "missing.txt")


def test_unknown_loss_and_aggregate_are_refused(model_dirs):
    with pytest.raises(ValueError, match="loss must be one of"):
        DiffusionClassifier.from_pretrained(model_dirs["pixel-text"], classes=["a", "b"], loss="l3")
    with pytest.raises(ValueError, match="aggregate must be one of"):
        build_classes(["a", "b"], aggregate="max")


def test_class_conditional_labels_from_the_model_and_from_mappings(model_dirs):
    folder = model_dirs["dit"]
    by_synonym = DiffusionClassifier.from_pretrained(folder, classes=["synonym7", "class2"], device="cpu")
    assert by_synonym.conditions.tolist() == [7, 2]
    by_mapping = DiffusionClassifier.from_pretrained(folder, classes={"x": 4, "y": 9}, device="cpu")
    assert by_mapping.conditions.tolist() == [4, 9]
    with pytest.raises(ValueError, match="outside this model's 10 labels"):
        DiffusionClassifier.from_pretrained(folder, classes={"x": 4, "y": 12}, device="cpu")
