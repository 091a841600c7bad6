"""Policies for large label sets: the vectorised paired test, screening, label-tree pruning, and
a 1,000-class run. Engine and reference must decide identically on every one."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import errors_of
from scipy import stats

from fastgen import DiffusionClassifier
from fastgen.engine.policies import LabelTreePolicy, PairedTest, make_policy, paired_p_values
from fastgen.inputs.label_tree import LabelTreeError, load_label_tree

ANIMALS = ["cat", "dog", "cow", "pig", "bird", "owl", "fish", "ant"]
TREE = {
    "nodes": [
        {"name": "mammal", "prompt": "a photo of a mammal", "children": ["pet", "farm"]},
        {"name": "pet", "prompts": ["a photo of a pet"], "children": ["cat", "dog"]},
        {"name": "farm", "prompt": "a photo of a farm animal", "children": ["cow", "pig"]},
        {"name": "flying", "prompt": "a photo of a flying animal", "children": ["bird", "owl"]},
    ]
}  # "fish" and "ant" sit under no node: they are scored from the first round


def _per_class_t_test(class_errors: torch.Tensor, best: int) -> list[float]:
    diffs = (class_errors.double() - class_errors[best].double()).numpy()
    out = []
    for row in diffs:
        std = row.std(ddof=1)
        if std == 0:
            out.append(0.0 if row.mean() > 0 else 1.0)
        else:
            out.append(float(stats.t.sf(row.mean() / (std / math.sqrt(len(row))), df=len(row) - 1)))
    return out


@pytest.mark.parametrize("n_samples", [2, 7, 40])
def test_vectorised_paired_test_equals_the_per_class_t_test(n_samples):
    gen = torch.Generator().manual_seed(n_samples)
    errors = torch.rand(300, n_samples, generator=gen) + torch.linspace(0, 0.5, 300)[:, None]
    errors[5] = errors[0]  # identical to the best: p = 1
    errors[6] = errors[0] + 0.25  # a constant gap (up to rounding): p about 0
    got = paired_p_values(errors, best=0)
    np.testing.assert_allclose(got, _per_class_t_test(errors, 0), rtol=1e-9, atol=1e-12)
    assert got[5] == 1.0 and got[6] < 1e-30 and 0 < got[100] < 1


def _classifier(folder, classes, **options) -> DiffusionClassifier:
    options.setdefault("batch_size", 11)
    return DiffusionClassifier.from_pretrained(folder, classes=classes, device="cpu", **options)


def _assert_engine_equals_reference(clf, images):
    reference = [clf.classify_reference(image) for image in images]
    for batch_size in (3, 64):
        clf.batch_size = batch_size
        results = clf.classify(images)
        np.testing.assert_allclose(errors_of(results), errors_of(reference), rtol=0, atol=1e-5)
        assert [r.prediction for r in results] == [r.prediction for r in reference]
        assert [r.unet_evals for r in results] == [r.unet_evals for r in reference]
        assert [r.n_samples.tolist() for r in results] == [r.n_samples.tolist() for r in reference]
    return reference


def test_screening_decides_identically_in_engine_and_reference(model_dirs, images):
    policy = PairedTest(alpha=0.2, min_samples=6, max_samples=12, check_every=3, screen_samples=2, screen_keep=3)
    clf = _classifier(model_dirs["pixel-text"], ANIMALS, policy=policy)
    reference = _assert_engine_equals_reference(clf, images[:3])
    for result in reference:  # 3 classes survive the screen; the other 5 stop after 2 samples
        assert sorted(result.n_samples.tolist()).count(2) == 5
        assert result.unet_evals <= 8 * 2 + 3 * 10


@pytest.fixture
def tree_file(tmp_path):
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(TREE))
    return path


def test_tree_policy_decides_identically_in_engine_and_reference(model_dirs, images, tree_file):
    policy = LabelTreePolicy(tree=str(tree_file), beam=1, node_samples=4, alpha=0.4, min_samples=4, max_samples=10)
    clf = _classifier(model_dirs["pixel-text"], ANIMALS, policy=policy)
    assert clf.conditions.shape[0] == len(ANIMALS) + 4  # the classes, then the inner nodes
    reference = _assert_engine_equals_reference(clf, images[:3])
    for result in reference:
        # beam 1: one unit survives each node round, so most classes are never scored
        assert (result.n_samples == 0).sum() >= 4
        assert result.unet_evals < len(ANIMALS) * 10
        assert not math.isnan(result.errors[result.prediction_index])


def test_tree_policy_with_the_sequential_rule_decides_identically_in_engine_and_reference(
    model_dirs, images, tree_file
):
    policy = LabelTreePolicy(
        tree=str(tree_file),
        beam=1,
        node_samples=6,
        node_min_samples=2,
        look_every=2,
        min_samples=2,
        max_samples=10,
        confidence=0.5,
    )
    clf = _classifier(model_dirs["pixel-text"], ANIMALS, policy=policy)
    reference = _assert_engine_equals_reference(clf, images[:3])
    for result in reference:
        assert (result.n_samples == 0).sum() >= 4  # subtrees never entered
        assert result.decided == (len(result.survivors) == 1)


def test_tree_levels_descend_as_soon_as_the_beam_holds_every_unit_standing(tree_file):
    """Sequential tree: a level whose leader is far ahead of every other unit after three samples
    descends at once; a level of near ties waits for `node_samples`."""
    policy = LabelTreePolicy(
        tree=str(tree_file), beam=1, node_samples=8, node_min_samples=3, min_samples=3, max_samples=20, confidence=0.99
    ).bind(ANIMALS)
    roots = policy.initial_units(len(ANIMALS))  # fish, ant, mammal, flying
    rng = np.random.default_rng(3)
    shared = rng.gamma(2.0, 0.5, size=3)
    far = torch.tensor(shared + np.array([[5.0], [6.0], [0.0], [7.0]]) + 1e-4 * rng.standard_normal((4, 3)))
    units, n_next = policy.next_round(far.float(), roots)
    assert n_next == 3 and units == list(policy._children[roots[2]])  # mammal's children, at 3 samples
    close = torch.tensor(shared + np.array([[0.01], [0.02], [0.0], [0.03]]) + 0.1 * rng.standard_normal((4, 3)))
    units, n_next = policy.next_round(close.float(), roots)
    assert n_next == 5 and units == roots  # nothing separated: the same units, looked at again
    with pytest.raises(ValueError, match="give confidence"):
        make_policy("tree", tree=str(tree_file), noise_profile="p.json")
    with pytest.raises(ValueError, match="node_min_samples"):
        make_policy("tree", tree=str(tree_file), confidence=0.9, node_min_samples=9, node_samples=8)


def test_tree_policy_options_and_bad_trees(tmp_path, tree_file):
    policy = make_policy("tree", tree=str(tree_file), beam=2)
    bound = policy.bind(ANIMALS)
    assert [name for name, _ in bound.extra_units()] == ["mammal", "pet", "farm", "flying"]
    assert bound.initial_units(len(ANIMALS)) == [6, 7, 8, 11]  # fish, ant, mammal, flying
    with pytest.raises(ValueError, match="needs tree=PATH"):
        make_policy("tree")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodes": [{"name": "a", "prompt": "x", "children": ["cat", "b"]},
                                         {"name": "b", "prompt": "y", "children": ["a"]}]}))  # fmt: skip
    with pytest.raises(LabelTreeError, match="cycle"):
        load_label_tree(bad)
    bad.write_text(json.dumps({"nodes": [{"name": "a", "prompt": "x", "children": ["zebra"]}]}))
    with pytest.raises(LabelTreeError, match="neither nodes nor classes"):
        make_policy("tree", tree=str(bad)).bind(ANIMALS)


# Run in a fresh interpreter: a process's peak resident set only ever grows, so in the test
# process an earlier, larger test would hide this run's growth (it would read as 0).
THOUSAND_CLASSES = """
import json, platform, resource, sys
import torch
from fastgen import DiffusionClassifier
from fastgen.engine.policies import PairedTest

def peak_bytes():
    try:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))
    except OSError:  # no /proc: ru_maxrss is in bytes on macOS, in KiB elsewhere
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if platform.system() == "Darwin" else peak * 1024

names = [f"thing {i}" for i in range(1000)]
policy = PairedTest(min_samples=4, max_samples=8, check_every=4, screen_samples=1, screen_keep=20)
clf = DiffusionClassifier.from_pretrained(sys.argv[1], classes=names, device="cpu", policy=policy, batch_size=512)
g = torch.Generator().manual_seed(5)
images = [torch.rand(3, 16, 16, generator=g) for _ in range(4)]
before = peak_bytes()  # the model and the 1,000 class embeddings loaded
results = clf.classify(images)
print(json.dumps({"grown": peak_bytes() - before, "evals": [r.unet_evals for r in results],
                  "predictions": [r.prediction for r in results]}))
"""


def test_a_thousand_classes_run_with_bounded_memory(model_dirs):
    run = subprocess.run(
        [sys.executable, "-c", THOUSAND_CLASSES, str(model_dirs["pixel-text"])],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(report["predictions"]) == 4 and all(p.startswith("thing ") for p in report["predictions"])
    assert all(1000 < evals <= 1000 + 20 * 7 for evals in report["evals"])
    # measured 75 MiB: what a run holds is bounded by the batch size (512 rows), not by the 4,000
    # rows of the screening round
    grown_mib = report["grown"] / 2**20
    assert 0 <= grown_mib < 400, f"peak resident memory grew by {grown_mib:.0f} MiB"
