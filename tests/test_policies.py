"""Adaptive policies: decisions on known error tables, and UNet-evaluation counts on a model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastgen import DiffusionClassifier, Exhaustive, FixedStages, PairedTest, make_policy
from fastgen.builtin.digits_data import digits_split, to_pil

TEN_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _table(means, n=30, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, n, generator=g)  # the shared-noise part every class sees
    own = noise * torch.randn(len(means), n, generator=g)
    return torch.tensor(means).view(-1, 1) + shared + own


def test_fixed_stages_keep_the_best_classes_and_name_the_next_count():
    policy = FixedStages((4, 10, 20), (3, 2, 1))
    errors = _table([0.5, 0.1, 0.3, 0.2, 0.9], n=4)
    kept, next_n = policy.next_round(errors, [0, 1, 2, 3, 4])
    assert kept == [1, 2, 3] and next_n == 10
    kept, next_n = policy.next_round(_table([0.1, 0.3, 0.2], n=10), [1, 2, 3])
    assert kept == [1, 3] and next_n == 20
    kept, next_n = policy.next_round(_table([0.4, 0.2], n=20), [1, 3])
    assert kept == [3] and next_n is None


def test_paired_test_drops_clearly_worse_classes_and_keeps_ties():
    policy = PairedTest(alpha=1e-3, min_samples=20, max_samples=100, check_every=5)
    errors = _table([0.10, 0.10, 0.30, 0.12], n=30)
    # class 1 is the same as class 0 up to noise; class 2 is far worse; class 3 a little worse
    p = policy.p_values(errors, best=0)
    assert p[2] < 1e-6 and p[1] > 1e-3
    kept, next_n = policy.next_round(errors, [0, 1, 2, 3])
    assert 2 not in kept and {0, 1} <= set(kept) and next_n == 35
    kept, next_n = policy.next_round(_table([0.1, 0.1], n=100), [0, 1])
    assert next_n is None  # the cap ends the evaluation even with two classes left


def test_paired_test_relies_on_the_pairing():
    """Differences shared across classes cancel: with a big shared component and a small
    consistent gap the paired test still separates the classes."""
    policy = PairedTest(alpha=2e-3, min_samples=20)
    errors = _table([0.0, 0.02], n=20, noise=0.005)
    assert policy.p_values(errors, best=0)[1] < 2e-3
    # an unpaired comparison of the same means would be hopeless: the shared part dominates
    assert errors[0].std() > 10 * (errors[1] - errors[0]).mean()


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("greedy", {}, "policy must be one of"),
        ("stages", {"n_samples": (5, 3), "to_keep": (2, 1)}, "increasing"),
        ("stages", {"n_samples": (5, 10), "to_keep": (2,)}, "equal length"),
        ("paired", {"alpha": 2.0}, "alpha"),
        ("exhaustive", {"n_samples": 0}, "n_samples"),
    ],
)
def test_bad_policies_are_refused_with_a_reason(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_policy(name, **options)


def _clf(folder, policy, **options):
    return DiffusionClassifier.from_pretrained(
        folder, classes=TEN_CLASSES, templates=["a handwritten digit {}"], policy=policy,
        policy_options=options, batch_size=256, device="cpu",
    )  # fmt: skip


def test_published_stage_schedule_spends_the_count_it_implies(model_dirs, images):
    # Li et al.'s CIFAR-10 schedule on ten classes: 10 x 50 + 5 x (500 - 50) = 2,750 calls.
    clf = _clf(model_dirs["pixel-text"], "stages", n_samples=(50, 500), to_keep=(5, 1))
    result = clf.classify(images[0])[0]
    assert result.unet_evals == 10 * 50 + 5 * 450 == 2750
    assert sorted(result.n_samples.tolist()) == [50] * 5 + [500] * 5
    assert np.isfinite(result.errors).sum() == 1


def test_adaptive_policies_spend_fewer_evaluations_than_exhaustive():
    """On held-out digits and the embedded model, whose top-two margins are decisive (over 10% of
    the largest class error; a random-weight model's are about 1e-4, where any sampling choice
    may flip a prediction), the adaptive policies agree with exhaustive scoring."""
    _, _, test_x, _ = digits_split()
    digits = [to_pil(image) for image in test_x[:3]]
    exhaustive = _clf("builtin:digits", "exhaustive", n_samples=40).classify(digits)
    stages = _clf("builtin:digits", "stages", n_samples=(8, 20, 40), to_keep=(4, 2, 1)).classify(digits)
    paired = _clf("builtin:digits", "paired", alpha=0.01, min_samples=8, max_samples=40, check_every=4)
    tested_all = paired.classify(digits)
    for full, staged, tested in zip(exhaustive, stages, tested_all):
        assert full.unet_evals == 10 * 40
        assert staged.unet_evals == 10 * 8 + 4 * 12 + 2 * 20
        assert tested.unet_evals < full.unet_evals
        # the paired policy's count is what its survivors imply
        assert tested.unet_evals == int(tested.n_samples.sum())
        top_two = np.sort(full.errors)[:2]
        assert (top_two[1] - top_two[0]) / np.abs(full.errors).max() > 0.1
    assert [r.prediction for r in tested_all] == [r.prediction for r in exhaustive]
    assert [r.prediction for r in stages] == [r.prediction for r in exhaustive]


def test_exhaustive_is_the_default_shape_of_results(model_dirs, images):
    result = _clf(model_dirs["pixel-text"], Exhaustive(6)).classify(images[1])[0]
    assert result.n_samples.tolist() == [6] * 10 and np.isfinite(result.errors).all()
    assert result.prediction == TEN_CLASSES[int(np.argmin(result.errors))]


@pytest.mark.parametrize(
    "name, options, unknown",
    [
        ("paired", {"max_sample": 50}, "max_sample"),
        ("paired", {"n_samples": 50}, "n_samples"),  # another policy's option
        ("exhaustive", {"alpha": 0.1, "min_samples": 4}, "alpha, min_samples"),
        ("stages", {"to_kep": (2, 1)}, "to_kep"),
    ],
)
def test_options_a_policy_does_not_take_are_refused_naming_the_valid_ones(name, options, unknown):
    from fastgen.engine.policies import POLICIES, PolicyOptionError, policy_options

    with pytest.raises(PolicyOptionError, match=f"{unknown} do(es)? not apply to policy '{name}'") as refused:
        make_policy(name, **options)
    assert refused.value.valid == policy_options(POLICIES[name]) and ", ".join(refused.value.valid) in str(
        refused.value
    )


def test_options_left_as_none_are_the_defaults_and_a_ready_policy_takes_none():
    assert make_policy("paired", max_samples=None, n_samples=None) == PairedTest()
    assert make_policy("paired", max_samples=50) == PairedTest(max_samples=50)
    with pytest.raises(ValueError, match="cannot change the ready-made policy"):
        make_policy(Exhaustive(3), n_samples=5)


def test_the_paired_test_is_undecided_when_its_budget_ends_with_classes_not_separated():
    """Two classes that are the same prompt in all but name cannot be separated: at max_samples
    both are left, and the result says so; a clear winner is a decision."""
    policy = PairedTest(alpha=0.01, min_samples=4, max_samples=8, check_every=2)
    g = torch.Generator().manual_seed(5)
    base = torch.rand(8, generator=g) + 0.5
    tied = torch.stack([base, base, base + 1.0])  # classes 0 and 1 are one class twice; 2 is far worse
    alive, n = [0, 1, 2], policy.first_round()
    while n is not None:
        alive, n = policy.next_round(tied[alive, :n], alive)
    assert alive == [0, 1] and not policy.decided(alive)
    assert policy.decided([2])
