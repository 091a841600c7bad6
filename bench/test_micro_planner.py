"""Micro-benchmarks of the planner and the element-wise steps around the denoiser.

Run with `pytest bench --benchmark-only`; not part of the CI test run (`tests/` only).
"""

from __future__ import annotations

import pytest
import torch

from fastgen.engine import ops
from fastgen.engine.planner import RowQueue
from fastgen.engine.policies import PairedTest


@pytest.mark.parametrize("rows_per_image", [40, 1000])
def test_planner_push_and_take(benchmark, rows_per_image):
    """Queue the first round of 64 images (10 prompts) and cut it into batches of 256."""
    n_samples = rows_per_image // 10

    def plan():
        queue = RowQueue()
        for image in range(64):
            queue.push(image, image, list(range(10)), 0, n_samples)
        batches = 0
        while queue.queued:
            queue.take(256)
            batches += 1
        return batches

    assert benchmark(plan) == -(-64 * 10 * n_samples // 256)


def test_paired_test_decision(benchmark):
    policy = PairedTest(min_samples=20, max_samples=2000)
    errors = torch.randn(1000, 200, generator=torch.Generator().manual_seed(0))
    kept, _ = benchmark(policy.next_round, errors, list(range(1000)))
    assert 0 < len(kept) <= 1000


@pytest.mark.parametrize("rows", [256, 1024])
def test_noised_batch_and_errors_torch(benchmark, rows):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(32, 4, 32, 32, generator=g)
    eps = torch.randn(64, 4, 32, 32, generator=g)
    image = torch.randint(0, 32, (rows,), generator=g)
    sample = torch.randint(0, 64, (rows,), generator=g)
    scale = torch.rand(rows, generator=g)

    def step():
        x_t = ops.noised_batch(x0, eps, image, sample, scale.sqrt(), (1 - scale).sqrt(), torch.float32)
        return ops.prediction_errors(
            x_t, x0, eps, image, sample, torch.ones(rows), torch.zeros(rows), torch.ones(rows), "l2"
        )

    assert benchmark(step).shape == (rows,)
