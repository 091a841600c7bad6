"""builtin:numbers: the composed data keeps held-out digits out of training; the shipped model
loads offline with 1,000 classes on 8x24 inputs and reads held-out numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastgen.builtin import BUILTIN_MODELS
from fastgen.builtin import numbers_data as nd
from fastgen.builtin.digits_data import digits_split, load_digit_images

MODEL = BUILTIN_MODELS["numbers"]
needs_model = pytest.mark.skipif(not (MODEL / "model_index.json").is_file(), reason="builtin:numbers not trained")


def test_split_indices_are_the_digits_split_and_disjoint():
    images, labels = load_digit_images()
    train, heldout = nd.split_indices()
    train_x, train_y, test_x, test_y = digits_split()
    assert np.array_equal(images[train], train_x) and np.array_equal(labels[train], train_y)
    assert np.array_equal(images[heldout], test_x) and np.array_equal(labels[heldout], test_y)
    assert not set(train.tolist()) & set(heldout.tolist())
    assert len(train) + len(heldout) == len(labels)


def test_training_compositions_use_training_digits_only():
    pool = nd.DigitPool("train")
    heldout = set(nd.DigitPool("heldout").indices.tolist())
    assert not set(pool.indices.tolist()) & heldout
    rng = np.random.default_rng(0)
    images, labels, picks = nd.training_numbers(2000, rng, pool=pool)
    # every composed cell is the training image it names, of the right digit
    assert not set(pool.indices[picks].ravel().tolist()) & heldout
    cells = images.reshape(-1, 8, 3, 8).transpose(0, 2, 1, 3)
    assert np.array_equal(cells, pool.images[picks])
    assert np.array_equal(pool.labels[picks], nd.digits_of(labels))
    with pytest.raises(ValueError, match="training pool"):
        nd.training_numbers(1, rng, pool=nd.DigitPool("heldout"))


def test_training_script_batches_draw_from_the_training_pool():
    import sys

    sys.path.insert(0, str(MODEL.parents[2] / "training"))
    try:
        import train_numbers as tn
    finally:
        sys.path.pop(0)
    cfg = tn.NumbersConfig(batch_size=256, shift_prob=0.0)
    pool = nd.DigitPool("train")
    x0, words = tn.training_batch(pool, cfg, np.random.default_rng(1))
    assert x0.shape == (256, 1, 8, 24)
    cells = ((x0[:, 0].numpy() + 1) / 2 * 255).round().astype(np.uint8).reshape(-1, 8, 3, 8).transpose(0, 2, 1, 3)
    train_cells = {cell.tobytes() for cell in pool.images}
    heldout_only = {cell.tobytes() for cell in nd.DigitPool("heldout").images} - train_cells
    seen = {cell.tobytes() for cell in cells.reshape(-1, 8, 8)}
    assert seen <= train_cells and not seen & heldout_only
    # masked prompts: "any" (10) only in trailing positions
    words = words.numpy()
    assert ((words[:, 1] == 10) <= (words[:, 2] == 10)).all() and (words[:, 0] < 10).all()


def test_heldout_generator_is_seeded_complete_and_held_out():
    images, labels = nd.heldout_numbers(1000)
    assert images.shape == (1000, 8, 24) and images.dtype == np.uint8
    assert sorted(labels.tolist()) == list(range(1000))
    again, _ = nd.heldout_numbers(1000)
    assert np.array_equal(images, again)
    prefix, prefix_labels = nd.heldout_numbers(50)
    assert np.array_equal(prefix, images[:50]) and np.array_equal(prefix_labels, labels[:50])
    other, _ = nd.heldout_numbers(50, seed=1)
    assert not np.array_equal(other, prefix)
    pool = nd.DigitPool("heldout")
    cells = {cell.tobytes() for cell in pool.images}
    assert all(cell.tobytes() in cells for cell in images.reshape(-1, 8, 3, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8))


def test_class_names_and_parent_names():
    names = nd.class_names()
    assert len(names) == 1000 and names[427] == "four two seven" and names[7] == "zero zero seven"
    assert nd.parent_name((4,)) == "four any any" and nd.parent_name((4, 2)) == "four two any"


@needs_model
def test_builtin_numbers_loads_offline_small_with_its_label_tree():
    from fastgen import DiffusionClassifier

    size = sum(p.stat().st_size for p in MODEL.rglob("*.safetensors"))
    assert size <= 20 * 10**6
    clf = DiffusionClassifier.from_pretrained("builtin:numbers", device="cpu", local_files_only=True)
    assert len(clf.classes.names) == 1000 and list(clf.classes.names) == nd.class_names()
    assert clf.adapter.kind == "pixel-text" and clf.adapter.x0_shape == (1, 8, 24)
    assert clf.adapter.image_hw == (8, 24)
    tree = json.loads((MODEL / "label_tree.json").read_text())
    leaves = [c for node in tree["nodes"].values() for c in node["children"] if c not in tree["nodes"]]
    assert sorted(leaves) == sorted(nd.class_names()) and len(tree["roots"]) == 10
    tokenizer = clf.adapter.tokenizer if hasattr(clf.adapter, "tokenizer") else None
    if tokenizer is not None:
        ids = tokenizer(tree["nodes"]["four any any"]["prompt"]).input_ids
        assert len(ids) <= tokenizer.model_max_length


@needs_model
def test_builtin_numbers_reads_held_out_numbers():
    from fastgen import DiffusionClassifier

    """The model's default policy, the label tree (the 2 best nodes of each level on 8 samples),
    reads held-out numbers: its paired tests stop each search once the best leaf is ahead with
    p < 2e-3, so unlike an exhaustive run on a few samples, whose top-two margins were under 1.5%,
    its decisions do not hang on rounding. It read all of the first 100 held-out numbers right."""
    images, labels = nd.heldout_numbers(3)
    clf = DiffusionClassifier.from_pretrained("builtin:numbers", device="cpu", batch_size=1000)
    assert type(clf.policy).__name__ == "LabelTreePolicy"
    results = clf.classify(list(images))
    predicted = [clf.classes.names.index(r.prediction) for r in results]
    assert predicted == labels.tolist()
    assert all(r.unet_evals < 1000 * 2 for r in results)  # fewer than two samples per class


@needs_model
def test_demo_runs_on_builtin_numbers(capsys):
    from fastgen.commands.main import main

    args = ["demo", "--model", "builtin:numbers", "--n-images", "2", "--json", "--device", "cpu",
            "--policy", "exhaustive", "--n-samples", "1", "--batch-size", "1000"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["images"] == 2 and report["unet_evals_per_image"] == 1000
    _, labels = nd.heldout_numbers(2)
    assert report["accuracy"] == np.mean(np.array(report["predictions"]) == labels)
    assert "classes: 1000" in out and "images/s" in out
    assert f"fastgen accuracy:       {report['accuracy']:.4f}" in out
