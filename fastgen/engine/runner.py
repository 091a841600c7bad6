"""The shared-noise, class-batched engine.

Images stream in; each becomes a job whose rounds (alive classes' prompts x new samples) are
queued as rows; the planner cuts full batches across images; after each batch the errors are
scattered back, and a job whose round is complete asks its policy what comes next. Every row's
value depends only on (image, prompt, sample index), never on its batch neighbours.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastgen.cpu_threads import between_batches
from fastgen.engine import ops
from fastgen.engine.config import ScoringConfig
from fastgen.engine.denoiser import Denoiser, as_denoiser
from fastgen.engine.faults import DenoiseGuard
from fastgen.engine.padding import fixed_batch_if_wanted
from fastgen.engine.planner import Batch, RowQueue
from fastgen.engine.policies import Policy
from fastgen.engine.policies.base import call_next_round
from fastgen.engine.result import ImageResult
from fastgen.engine.sampling import NoiseBank, SamplePlan
from fastgen.engine.transfer import stage
from fastgen.inputs.classes import ClassSpec
from fastgen.models.base import Adapter

log = logging.getLogger(__name__)


def aggregate_classes(
    prompt_errors: torch.Tensor, prompts_of: list[list[int]], classes: list[int], rule: str
) -> torch.Tensor:
    """Per-sample class errors [len(classes), n] from per-prompt errors [P, n].

    `mean`: the mean over the class's prompts; `min`: the row of the prompt with the lowest mean.
    """
    if all(len(prompts_of[k]) == 1 for k in classes):  # one prompt each: a gather, whatever the rule
        return prompt_errors[[prompts_of[k][0] for k in classes]]
    rows = []
    for k in classes:
        block = prompt_errors[prompts_of[k]]
        if rule == "mean":
            rows.append(block.mean(dim=0))
        else:
            rows.append(block[int(torch.argmin(block.double().mean(dim=1)))])
    return torch.stack(rows)


PAUSE = object()  # an item of `Engine.run`'s source: nothing is ready yet, go on with what you hold


@dataclass
class _Job:
    key: object
    slot: int
    prompt_errors: torch.Tensor  # [P, max_samples] fp32, filled as rows complete
    alive: list[int]  # units: classes, then (for a tree policy) inner nodes
    n_scored: dict[int, int] = field(default_factory=dict)  # unit -> samples scored so far
    n_target: int = 0
    pending: int = 0
    evals: int = 0
    partial: dict[int, tuple[float, int]] = field(default_factory=dict)  # stopped class -> (mean, n)
    policy_state: Any = None  # what the policy keeps for this image from look to look


@dataclass
class _BatchInputs:
    """Everything about a batch except the precision it is run at, on the device: the index and
    coefficient vectors are computed on the host and staged in one copy per dtype before the
    denoiser is launched (`fastgen.engine.transfer`)."""

    eps_bank: torch.Tensor
    cond: torch.Tensor  # [R, ...] the rows' prompt conditions
    slot: torch.Tensor  # [R] row -> x0 bank slot
    sample: torch.Tensor  # [R] row -> noise sample
    timesteps: torch.Tensor  # [R] int64
    alpha: torch.Tensor  # [R] fp32 noising coefficients: x_t = alpha * x0 + sigma * eps
    sigma: torch.Tensor
    target_a: torch.Tensor  # [R] fp32: target = a * eps + b * x0
    target_b: torch.Tensor
    weight: torch.Tensor  # [R] fp32 per-row timestep weight
    # Each distinct (image, sample) pair once, and every row's index into them: a denoiser that
    # shares its class-independent prefix runs that prefix once per distinct pair.
    distinct_slot: torch.Tensor
    distinct_sample: torch.Tensor
    distinct_timesteps: torch.Tensor
    distinct_alpha: torch.Tensor
    distinct_sigma: torch.Tensor
    rows: torch.Tensor


class Engine:
    """Scores images against every class on shared (timestep, noise) samples."""

    def __init__(
        self,
        denoise: Denoiser,
        conditions: torch.Tensor,
        classes: ClassSpec,
        model: Adapter,
        *,
        config: ScoringConfig,
        policy: Policy | None = None,
        units: ClassSpec | None = None,
        plan: SamplePlan | None = None,
        noise: NoiseBank | None = None,
        guard: DenoiseGuard | None = None,
    ):
        """`model` supplies the schedule (noising, target, weights), x0 shape, device and dtype;
        `policy` is `config.policy` bound to the classes (bound here when not given) and
        `units` the classes followed by the policy's extra units, with `conditions` encoding
        `units`' prompts; `plan` and `noise` may be passed in to reuse their caches."""
        denoise = as_denoiser(denoise)
        self.guard = guard if guard is not None else DenoiseGuard.for_denoiser(denoise)
        # Pads for CUDA graphs / compile; a fixed size shrunk by an earlier out-of-memory is kept.
        self.denoise = fixed_batch_if_wanted(denoise, config.batch_size, guard=self.guard)
        self.conditions = conditions
        self.class_names = classes.names
        self.policy = policy if policy is not None else config.policy.bind(classes.names)
        units = units if units is not None else classes.with_units(self.policy.extra_units())
        self.prompts_of = units.prompts_of_class
        self.config = config
        self.schedule = model.schedule
        self.plan = plan if plan is not None else SamplePlan.for_config(model.schedule, config)
        self.noise = noise if noise is not None else NoiseBank(model.x0_shape, seed=config.seed, device=model.device)
        self.batch_size = config.batch_size
        self.device = torch.device(model.device)
        self.dtype = model.dtype
        self.x0_shape = tuple(model.x0_shape)
        self._x0_bank = torch.empty((0, *self.x0_shape), device=self.device)
        self._free_slots: list[int] = []
        self._queue = RowQueue()
        self._finished: list[_Job] = []

    # -- image admission and x0 slots ---------------------------------------------------------
    def _take_slot(self, x0: torch.Tensor) -> int:
        if not self._free_slots:
            grown = max(8, 2 * self._x0_bank.shape[0])
            extra = grown - self._x0_bank.shape[0]
            self._free_slots = list(range(self._x0_bank.shape[0], grown))[::-1]
            self._x0_bank = torch.cat([self._x0_bank, self._x0_bank.new_zeros((extra, *self.x0_shape))])
        slot = self._free_slots.pop()
        self._x0_bank[slot] = x0.to(self._x0_bank.device, torch.float32)
        return slot

    def _admit(self, key: object, x0: torch.Tensor) -> None:
        if tuple(x0.shape) != self.x0_shape:
            raise ValueError(f"x0 of shape {tuple(x0.shape)} does not match the model's {self.x0_shape}")
        n_prompts = len(self.conditions)
        errors = torch.full((n_prompts, self.policy.max_samples), math.nan)
        job = _Job(key, self._take_slot(x0), errors, alive=self.policy.initial_units(len(self.class_names)))
        job.policy_state = self.policy.start_image()
        self._start_round(job, self.policy.first_round())

    def _start_round(self, job: _Job, n_target: int) -> None:
        """Queue the rows that bring every alive unit to `n_target` samples: new units (a tree
        policy's children) from sample 0, the others from where they stopped."""
        job.n_target = n_target
        by_start: dict[int, list[int]] = {}
        for unit in job.alive:
            by_start.setdefault(job.n_scored.get(unit, 0), []).append(unit)
            job.n_scored[unit] = n_target
        job.pending = 0
        for first, units in by_start.items():
            if first < n_target:
                prompts = [p for k in units for p in self.prompts_of[k]]
                job.pending += self._queue.push(job, job.slot, prompts, first, n_target)
        job.evals += job.pending
        if job.pending == 0:  # every alive unit already has these samples: decide at once
            self._end_round(job)

    # -- one denoiser batch -------------------------------------------------------------------
    def _batch_inputs(self, batch: Batch) -> _BatchInputs:
        n_needed = int(batch.sample.max()) + 1
        timesteps = self.plan.timesteps(n_needed)[batch.sample]
        alpha, sigma = self.schedule.noising(timesteps)
        a, b = self.schedule.target(timesteps)
        distinct, rows = torch.unique(batch.slot * n_needed + batch.sample, return_inverse=True)
        distinct_slot, distinct_sample = distinct // n_needed, distinct % n_needed
        distinct_timesteps = self.plan.timesteps(n_needed)[distinct_sample]
        distinct_alpha, distinct_sigma = self.schedule.noising(distinct_timesteps)
        host = {
            "slot": batch.slot, "sample": batch.sample, "prompt": batch.prompt, "timesteps": timesteps,
            "alpha": alpha.float(), "sigma": sigma.float(),
            "target_a": a.float(), "target_b": b.float(), "weight": self.plan.weight(timesteps).float(),
            "distinct_slot": distinct_slot, "distinct_sample": distinct_sample,
            "distinct_timesteps": distinct_timesteps, "distinct_alpha": distinct_alpha.float(),
            "distinct_sigma": distinct_sigma.float(), "rows": rows,
        }  # fmt: skip
        staged = stage(host, self.device)
        prompt = staged.pop("prompt")
        cond = self.conditions[prompt.to(self.conditions.device)]
        return _BatchInputs(eps_bank=self.noise.ensure(n_needed), cond=cond, **staged)

    def _batch_errors(self, inputs: _BatchInputs, denoise: Denoiser, dtype: torch.dtype) -> torch.Tensor:
        """Per-row errors [R] (fp32, CPU) of one denoiser pass over the batch at `dtype`."""
        cond = inputs.cond.to(dtype) if torch.is_floating_point(inputs.cond) else inputs.cond
        if denoise.shares_prefix:
            # Noise each distinct (image, sample) pair once; the denoiser gathers per row.
            x_t = ops.noised_batch(
                self._x0_bank, inputs.eps_bank, inputs.distinct_slot, inputs.distinct_sample,
                inputs.distinct_alpha, inputs.distinct_sigma, dtype,
            )  # fmt: skip
            prediction = self.guard(denoise, x_t, inputs.distinct_timesteps, cond, rows=inputs.rows)
        else:
            x_t = ops.noised_batch(
                self._x0_bank, inputs.eps_bank, inputs.slot, inputs.sample, inputs.alpha, inputs.sigma, dtype,
            )  # fmt: skip
            prediction = self.guard(denoise, x_t, inputs.timesteps, cond)
        return ops.prediction_errors(
            prediction, self._x0_bank, inputs.eps_bank, inputs.slot, inputs.sample, inputs.target_a,
            inputs.target_b, inputs.weight, self.config.loss,
        ).cpu()  # fmt: skip

    def _recompute_in_fp32(self, batch: Batch, errors: torch.Tensor) -> torch.Tensor:
        """`errors` with its non-finite rows recomputed in fp32. Only those rows: the finite rows
        keep their values, so an image's errors never depend on which neighbours overflowed."""
        bad = torch.nonzero(~torch.isfinite(errors)).flatten()
        log.warning(
            "%d of %d denoiser rows were non-finite at %s (overflow); recomputing those rows in fp32",
            bad.numel(), errors.shape[0], self.dtype,
        )  # fmt: skip
        rows = Batch(batch.slot[bad], batch.prompt[bad], batch.sample[bad], segments=[])
        redone = self._batch_errors(self._batch_inputs(rows), as_denoiser(self.guard.fp32_denoiser()), torch.float32)
        if not torch.isfinite(redone).all():
            raise FloatingPointError(
                "the denoiser returned non-finite values even in fp32; the model or its inputs "
                "are broken (no score was computed from these rows)"
            )
        errors = errors.clone()
        errors[bad] = redone
        return errors

    @torch.inference_mode()
    def _run_batch(self, batch: Batch) -> None:
        between_batches()  # a command-line run may re-choose its CPU threads here
        errors = self._batch_errors(self._batch_inputs(batch), self.denoise, self.dtype)
        if not torch.isfinite(errors).all():
            # Never average a non-finite row into a score: redo those rows in fp32.
            errors = self._recompute_in_fp32(batch, errors)
        for job, first, end in batch.segments:
            job.prompt_errors[batch.prompt[first:end], batch.sample[first:end]] = errors[first:end]
            job.pending -= end - first
            if job.pending == 0:
                self._end_round(job)

    def _end_round(self, job: _Job) -> None:
        n = job.n_target
        class_errors = aggregate_classes(job.prompt_errors[:, :n], self.prompts_of, job.alive, self.config.aggregate)
        kept, next_target = call_next_round(self.policy, class_errors, job.alive, job.policy_state)
        staying = set(kept) if next_target is not None else set()
        n_classes = len(self.class_names)
        for row, k in enumerate(job.alive):
            # A class's mean over its samples, recorded when it stops (pruned, or at the end).
            if k < n_classes and k not in staying:
                job.partial[k] = (float(class_errors[row].double().mean()), n)
        job.alive = list(kept)
        if next_target is None:
            self._finished.append(job)
            self._free_slots.append(job.slot)
        else:
            self._start_round(job, next_target)

    def _result(self, job: _Job) -> ImageResult:
        k_all = len(self.class_names)
        never = (math.nan, 0)  # a class in a subtree the policy never entered
        partial = np.array([job.partial.get(k, never)[0] for k in range(k_all)])
        n_samples = np.array([job.partial.get(k, never)[1] for k in range(k_all)], dtype=np.int64)
        errors = np.where(np.isin(np.arange(k_all), job.alive), partial, np.nan)
        decided = self.policy.decided([k for k in job.alive if k < k_all])
        return ImageResult(
            self.class_names, errors, partial, n_samples, job.evals, decided=decided,
            policy_record=self.policy.image_record(job.policy_state),
        )  # fmt: skip

    # -- the stream ---------------------------------------------------------------------------
    def run(
        self, items: Iterable[tuple[object, torch.Tensor | Exception] | object]
    ) -> Iterator[tuple[object, ImageResult | Exception]]:
        """Score a stream of (key, x0) items; yields (key, result) as images finish, in
        completion order. An item whose x0 is an exception is passed through as is. A source fed
        while it runs (a long-lived worker's queue) yields `PAUSE` when no image is ready: the
        engine then runs what it holds instead of waiting, and asks again after that batch (at
        once when it holds nothing, so such a source should wait a little before a PAUSE)."""
        source = iter(items)
        exhausted = False
        while True:
            while not exhausted and self._queue.queued < self.batch_size:
                item = next(source, None)
                if item is None:
                    exhausted = True
                elif item is PAUSE:
                    break  # nothing ready now: run what is queued, ask again after the batch
                elif isinstance(item[1], Exception):
                    yield item
                else:
                    self._admit(*item)
            if self._queue.queued == 0:
                if exhausted:
                    break
                continue
            self._run_batch(self._queue.take(self.batch_size))
            finished, self._finished = self._finished, []
            for job in finished:
                yield job.key, self._result(job)
