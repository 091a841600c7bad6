"""`fastgen bench`: fastgen beside the reference-style loop, on the same work, and against the
hardware limit.

(a) the way the public reference code runs: one image at a time; for that image, rows of
(prompt, t) in batches of 32; a host sync after every batch; text embeddings computed once.
(b) the fastgen engine: rows of many images x classes x samples in large batches.
Both use the same model, classes, images, policy and (timestep, noise) samples, so with the
exhaustive policy their predictions must agree on every image.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastgen.api import DiffusionClassifier
from fastgen.engine import ops
from fastgen.engine.policies import Exhaustive
from fastgen.optional import installed_version


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedDenoise:
    """Wraps a denoiser to add up the time spent inside it, without synchronising per call.

    On CUDA each call is bracketed by two timing events on the current stream and the elapsed
    times are read once, when `seconds` is asked for: a host sync per call would itself starve
    the GPU and change what is measured. Off CUDA calls are synchronous and the host clock is
    exact. Also counts calls, rows, and distinct inputs (what a shared prefix runs on)."""

    def __init__(self, denoise: Callable, device: torch.device):
        self.denoise, self.device = denoise, torch.device(device)
        self.calls = self.rows = self.distinct_inputs = 0
        self._host_seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def __call__(self, x_t, t, cond, *rows):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.denoise(x_t, t, cond, *rows)
            end.record()
            self._events.append((start, end))
        else:
            began = time.perf_counter()
            out = self.denoise(x_t, t, cond, *rows)
            self._host_seconds += time.perf_counter() - began
        self.calls += 1
        self.rows += cond.shape[0]
        self.distinct_inputs += x_t.shape[0]
        return out

    @property
    def seconds(self) -> float:
        if self._events:
            self._events[-1][1].synchronize()  # the one sync: after the last call
        return self._host_seconds + sum(s.elapsed_time(e) for s, e in self._events) / 1000

    def __getattr__(self, name: str):
        # Whatever the engine asks of a denoiser (wants_fixed_batch, ...) is the wrapped one's.
        return getattr(self.denoise, name)


@dataclass
class RunStats:
    predictions: list[int]
    seconds: float
    unet_evals: int
    unet_seconds: float
    peak_memory_bytes: int
    extra: dict = field(default_factory=dict)

    def summary(self, n_images: int) -> dict:
        return {
            "images_per_s": n_images / self.seconds,
            "unet_evals_per_s": self.unet_evals / self.seconds,
            "unet_evals_per_image": self.unet_evals / n_images,
            "seconds": self.seconds,
            "unet_seconds": self.unet_seconds,
            "outside_unet_share": 1.0 - self.unet_seconds / self.seconds,
            "peak_memory_bytes": self.peak_memory_bytes,
            **self.extra,
        }


# -- memory ------------------------------------------------------------------------------------
def reset_peak_memory(device: torch.device, pids: tuple[int, ...] = ()) -> None:
    """Start a new peak: CUDA's allocator statistics, or the resident-set high-water mark of
    this process and of `pids` (worker processes) on CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    for pid in ("self", *pids):
        try:  # Linux: writing 5 resets a process's peak resident set size (VmHWM)
            with open(f"/proc/{pid}/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            pass


def _status_kib(pid: int | str, fields: tuple[str, ...]) -> dict[str, int] | None:
    """Fields of /proc/PID/status given in kB (VmHWM, RssFile, ...), in KiB; None off Linux."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            lines = [line.split() for line in handle]
    except OSError:
        return None
    return {line[0].rstrip(":"): int(line[1]) for line in lines if line and line[0].rstrip(":") in fields}


def _own_peak() -> int:
    """This process's peak resident set since the last reset, in bytes."""
    status = _status_kib("self", ("VmHWM",))
    if status and "VmHWM" in status:
        return status["VmHWM"] * 1024
    import resource  # no /proc: the lifetime peak, which ru_maxrss gives in bytes on macOS, KiB elsewhere

    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if platform.system() == "Darwin" else peak * 1024


def _worker_private_peak(pid: int) -> int:
    """A worker process's peak resident set less the file-backed and shared-memory pages it holds
    after the run: libraries and tensor buffers that this process maps too and whose pages
    `_own_peak` has already counted once."""
    status = _status_kib(pid, ("VmHWM", "RssFile", "RssShmem"))
    if not status or "VmHWM" not in status:
        return 0
    shared = status.get("RssFile", 0) + status.get("RssShmem", 0)
    return max(status["VmHWM"] - shared, 0) * 1024


def has_own_allocator(denoise: Any) -> bool:
    """Whether the denoiser keeps GPU memory outside torch's allocator (ONNX Runtime's arena,
    TensorRT's engine and activations), which `torch.cuda.max_memory_allocated` cannot see."""
    return getattr(denoise, "name", None) in ("onnxruntime", "tensorrt")


def memory_measure(device: torch.device, denoise: Any = None) -> str:
    """What `peak_memory` reports for this device and denoiser, recorded next to the figure."""
    if device.type != "cuda":
        if worker_pids(denoise):
            return (
                "peak resident set of this process, plus each worker process's peak resident set less the "
                "file-backed and shared-memory pages it holds after the run (each shared page counted once)"
            )
        return "peak resident set of this process"
    if has_own_allocator(denoise):
        return "device memory in use after the run (every allocator, CUDA context included), or torch's peak if higher"
    return "torch allocator peak"


def peak_memory(device: torch.device, pids: tuple[int, ...] = (), denoise: Any = None) -> int:
    """Peak memory in bytes since `reset_peak_memory`, as `memory_measure` describes it: device
    memory on GPU; on CPU this process's peak resident set plus the private part of the peak of
    each of `pids` (the backend's worker processes). Summing the workers' whole resident sets would
    count every page of torch's libraries and of the shared batch buffers once per process."""
    if device.type == "cuda":
        allocated = int(torch.cuda.max_memory_allocated(device))
        if has_own_allocator(denoise):
            free, total = torch.cuda.mem_get_info(device)  # arenas are not returned: their peak stays in use
            return max(allocated, int(total - free))
        return allocated
    return _own_peak() + sum(_worker_private_peak(pid) for pid in pids)


def worker_pids(denoise) -> tuple[int, ...]:
    return tuple(getattr(denoise, "worker_pids", ()) or ())


# -- (a) the reference-style loop ---------------------------------------------------------------
@torch.inference_mode()
def reference_style(clf: DiffusionClassifier, pixels: list[torch.Tensor], *, rows_per_batch: int = 32) -> RunStats:
    """One image at a time; its (prompt, sample) rows in batches of 32; sync after each batch."""
    if not isinstance(clf.policy, Exhaustive):
        raise ValueError("the reference-style loop is measured with the exhaustive policy")
    device, n = clf.adapter.device, clf.policy.n_samples
    timed = TimedDenoise(clf.denoise, device)
    n_prompts = len(clf.conditions)
    prompt_rows = torch.arange(n_prompts).repeat_interleave(n)
    sample_rows = torch.arange(n).repeat(n_prompts)
    timesteps_all = clf.plan.timesteps(n)
    eps_bank = clf.noise.ensure(n)
    a_all, b_all = clf.adapter.schedule.target(timesteps_all)
    weight_all = clf.plan.weight(timesteps_all)
    prompts_of = clf.classes.prompts_of_class
    predictions, evals = [], 0
    reset_peak_memory(device)
    synchronize(device)
    start = time.perf_counter()
    for image in pixels:
        x0 = clf.adapter.encode_images(image[None])
        errors = torch.zeros(n_prompts, n, dtype=torch.float64)
        for first in range(0, len(prompt_rows), rows_per_batch):
            p, s = prompt_rows[first : first + rows_per_batch], sample_rows[first : first + rows_per_batch]
            zeros = torch.zeros(len(p), dtype=torch.int64, device=device)
            alpha, sigma = clf.adapter.schedule.noising(timesteps_all[s])
            dev = lambda v: v.float().to(device)
            x_t = ops.noised_batch(x0, eps_bank, zeros, s.to(device), dev(alpha), dev(sigma), clf.adapter.dtype)
            prediction = timed(x_t, timesteps_all[s].to(device), clf.conditions[p.to(clf.conditions.device)])
            err = ops.prediction_errors(
                prediction,
                x0,
                eps_bank,
                zeros,
                s.to(device),
                dev(a_all[s]),
                dev(b_all[s]),
                dev(weight_all[s]),
                clf.loss,
            )
            errors[p, s] = err.double().cpu()  # the host sync after every batch
            evals += len(p)
        class_means = [errors[prompts_of[k]].mean().item() for k in range(len(clf.classes))]
        predictions.append(int(np.argmin(class_means)))
    synchronize(device)
    seconds = time.perf_counter() - start
    return RunStats(predictions, seconds, evals, timed.seconds, peak_memory(device))


# -- (b) the engine -----------------------------------------------------------------------------
def engine_run(clf: DiffusionClassifier, pixels: list[torch.Tensor]) -> RunStats:
    device = clf.adapter.device
    original = clf.denoise
    timed = TimedDenoise(original, device)
    clf.denoise = timed
    try:
        reset_peak_memory(device, worker_pids(original))
        synchronize(device)
        start = time.perf_counter()
        results = clf.classify(pixels)
        synchronize(device)
        seconds = time.perf_counter() - start
    finally:
        clf.denoise = original
    predictions = [r.prediction_index for r in results]
    evals = sum(r.unet_evals for r in results)
    memory = peak_memory(device, worker_pids(original), original)
    extra = {
        "batches": timed.calls, "denoiser_rows": timed.rows, "distinct_inputs": timed.distinct_inputs,
        "memory_measure": memory_measure(device, original),
    }  # fmt: skip
    return RunStats(predictions, seconds, evals, timed.seconds, memory, extra)


# -- the hardware limit -------------------------------------------------------------------------
def flops_per_eval(clf: DiffusionClassifier, *, prefix_only: bool = False) -> float:
    """FLOPs of one full denoiser row (or, with `prefix_only`, of its class-independent prefix,
    0 when it has none), counted by torch.utils.flop_counter on a batch of 2, with attention
    counted the same whichever SDPA kernel runs (see `attention_flop_formulas`)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = clf.adapter.device
    x = torch.randn((2, *clf.adapter.x0_shape), device=device, dtype=clf.adapter.dtype)
    t = torch.tensor([100, 600], device=device)
    cond = clf.conditions[[0, min(1, len(clf.conditions) - 1)]]
    denoiser = clf.adapter.denoiser
    if prefix_only and not getattr(denoiser, "shares_prefix", False):
        return 0.0
    counter = FlopCounterMode(display=False, custom_mapping=attention_flop_formulas())
    with torch.inference_mode(), counter:
        denoiser.split.prefix(x, t) if prefix_only else denoiser(x, t, cond)
    return counter.get_total_flops() / 2


# SDPA kernels torch's FLOP counter has no formula for: it counts the GPU kernels and the math
# path's matmuls, but not the CPU kernels, which would leave attention out of every CPU figure.
_UNCOUNTED_ATTENTION_KERNELS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
)


def attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The two matmuls of attention, Q K^T and softmax(.) V, as the math path runs them: the
    softmax, scaling and masking are not matmuls and the counter counts them on no path."""
    batch, heads, queries, depth = query_shape
    keys, value_depth = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * queries * keys * (depth + value_depth)


def attention_flop_formulas() -> dict:
    """`custom_mapping` for FlopCounterMode: `attention_flops` for each SDPA kernel this torch has
    and the counter does not know."""
    from torch.utils.flop_counter import flop_registry

    kernels = (getattr(torch.ops.aten, name, None) for name in _UNCOUNTED_ATTENTION_KERNELS)
    return {kernel: attention_flops for kernel in kernels if kernel is not None and kernel not in flop_registry}


def executed_flops_per_row(full: float, prefix: float, rows: int, distinct_inputs: int) -> float:
    """FLOPs the denoiser really ran per row: a shared prefix runs once per distinct input, not
    once per row, so counting full evaluations would overstate the work (and utilisation)."""
    if rows <= 0 or distinct_inputs >= rows:
        return full
    return full - prefix + prefix * distinct_inputs / rows


def matmul_rate(device: torch.device, dtype: torch.dtype, *, seconds: float = 1.0) -> float:
    """Measured dense matmul FLOP/s for square matrices in `dtype` on `device`."""
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    iterations, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        iterations += 1
        if iterations % 4 == 0:
            synchronize(device)
    synchronize(device)
    return 2 * size**3 * iterations / (time.perf_counter() - start)


def latency(clf: DiffusionClassifier, pixels: list[torch.Tensor]) -> dict:
    """Images arriving one at a time: seconds per image percentiles."""
    device, times = clf.adapter.device, []
    reset_peak_memory(device, worker_pids(clf.denoise))
    for image in pixels:
        synchronize(device)
        start = time.perf_counter()
        clf.classify([image])
        synchronize(device)
        times.append(time.perf_counter() - start)
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {
        "p50_s": float(p50), "p90_s": float(p90), "p99_s": float(p99), "images": len(times),
        "peak_memory_bytes": peak_memory(device, worker_pids(clf.denoise), clf.denoise),
        "memory_measure": memory_measure(device, clf.denoise),
    }  # fmt: skip


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    versions = {p: installed_version(p) for p in ("torch", "diffusers", "transformers", "fastgen")}
    return {"device": str(device), "device_name": name, "cpu_threads": torch.get_num_threads(), "versions": versions}


def spread(values: list[float]) -> dict:
    return {
        "mean": float(np.mean(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "runs": len(values),
    }


def side_by_side(
    clf_a: DiffusionClassifier, clf_b: DiffusionClassifier, pixels: list[torch.Tensor], *, repeats: int = 3
) -> dict:
    """(a) on `clf_a` (eager, as the reference code runs) and (b) on `clf_b` (the engine with its
    best settings), on the same work, `repeats` times each, interleaved; one warm-up of each."""
    reference_style(clf_a, pixels[:1])
    warmup = engine_run(clf_b, pixels[:2])  # compiles, captures graphs, builds engines
    runs_a, runs_b = [], []
    for _ in range(repeats):
        runs_a.append(reference_style(clf_a, pixels))
        runs_b.append(engine_run(clf_b, pixels))
    n = len(pixels)
    agreed = agreement(runs_a[-1].predictions, runs_b[-1].predictions)
    speedups = [b.summary(n)["images_per_s"] / a.summary(n)["images_per_s"] for a, b in zip(runs_a, runs_b)]
    return {
        "reference_style": runs_a[-1].summary(n),
        "fastgen": {**runs_b[-1].summary(n), "warmup_seconds": warmup.seconds},
        "speedup": float(np.median(speedups)),
        "speedup_runs": spread(speedups),
        "agreement": agreed,
        "images": n,
        "predictions_agree_on": int(round(agreed * n)),
    }


def utilisation(clf: DiffusionClassifier, engine_summary: dict) -> dict:
    full = flops_per_eval(clf)
    rows, distinct = engine_summary.get("denoiser_rows", 0), engine_summary.get("distinct_inputs", 0)
    flops = executed_flops_per_row(full, flops_per_eval(clf, prefix_only=True), rows, distinct)
    peak = matmul_rate(clf.adapter.device, clf.adapter.dtype)
    unet_rate = (
        engine_summary["unet_evals_per_image"]
        * engine_summary["images_per_s"]
        / (1 - engine_summary["outside_unet_share"])
    )
    achieved = unet_rate * flops
    return {
        "flops_per_eval": full,
        "flops_per_row_executed": flops,
        "matmul_flops_per_s": peak,
        "unet_stage_flops_per_s": achieved,
        "unet_stage_utilisation": achieved / peak if peak else math.nan,
    }


def policy_table(
    make_clf: Callable[..., DiffusionClassifier],
    pixels: list[torch.Tensor],
    policies: dict,
    *,
    reference_samples: int | None = None,
) -> list[dict]:
    """UNet evaluations per image, predictions, and agreement with an exhaustive reference, per
    policy. The reference is exhaustive scoring with `reference_samples` per class (default: twice
    the most any policy draws) on the next noise seed, so that no row is compared with itself: the
    exhaustive row's agreement shows how far its own sampling noise moves the predictions, and the
    adaptive rows' how much further pruning moves them."""
    rows, most_samples, seed = [], 1, 0
    for name, (policy, options) in policies.items():
        clf = make_clf(policy=policy, policy_options=options)
        most_samples, seed = max(most_samples, clf.policy.max_samples), clf.seed
        rows.append(_policy_row(name, options, clf, pixels))
    n_samples = reference_samples or 2 * most_samples
    reference_clf = make_clf(policy="exhaustive", policy_options={"n_samples": n_samples}, seed=seed + 1)
    reference = [r.prediction_index for r in reference_clf.classify(pixels)]
    described = {"policy": "exhaustive", "n_samples": n_samples, "seed": seed + 1, "predictions": reference}
    for row in rows:
        row["agreement_with_exhaustive"] = agreement(row["predictions"], reference)
        row["agreement_reference"] = described
    return rows


def _policy_row(name: str, options: dict, clf: DiffusionClassifier, pixels: list[torch.Tensor]) -> dict:
    device = clf.adapter.device
    reset_peak_memory(device, worker_pids(clf.denoise))
    start = time.perf_counter()
    results = clf.classify(pixels)
    seconds = time.perf_counter() - start
    return {
        "policy": name,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "unet_evals_per_image": float(np.mean([r.unet_evals for r in results])),
        "predictions": [r.prediction_index for r in results],
        "images_per_s": len(pixels) / seconds,
        "peak_memory_bytes": peak_memory(device, worker_pids(clf.denoise), clf.denoise),
        "memory_measure": memory_measure(device, clf.denoise),
    }


def agreement(predictions: list[int], reference: list[int]) -> float:
    """The share of images on which two runs predict the same class."""
    if len(predictions) != len(reference):
        raise ValueError(f"{len(predictions)} predictions cannot be compared with {len(reference)}")
    return float(np.mean([a == b for a, b in zip(predictions, reference)]))
