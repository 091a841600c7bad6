"""`fastgen selftest`: every execution path this machine has, checked against the fp32 reference.

A path is one way of running the denoiser and the scoring ops: eager in a dtype, the Triton
kernels, the torch backend (SDPA, compile, CUDA graphs), ONNX Runtime with one provider, a
TensorRT engine. Each runs on three small models (the embedded `builtin:digits`, a tiny
random-weight latent text model built from config, which covers the VAE, and the embedded
flow-matching `builtin:digits-flow`, an SD3 transformer) and its per-class
errors are compared with the plain fp32 reference (`fastgen.engine.reference`) on the same images
and seeds. A path the machine cannot run is listed as skipped with the reason.

A path passes when its largest error difference, relative to the image's largest reference
error, is within its dtype's tolerance and every prediction equals the reference's, or differs
only where the reference's own top-two margin is a tie at that tolerance: within twice it,
because each of the two errors may move by the tolerance, so their order may swap.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastgen.api.classifier import DiffusionClassifier
from fastgen.kernels._triton import has_triton, is_interpreted
from fastgen.kernels.dispatch import kernel_mode_scope
from fastgen.optional import installed_version

# Relative tolerance of per-class errors against the fp32 reference. fp32 allows for TF32
# convolutions (cuDNN's default) and other kernels' summation order; half precision for rounding.
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 4e-2, torch.float16: 1e-2}
N_SAMPLES = 4  # samples per class: enough rows for several batches, little enough for a minute
BATCH_SIZE = 16


@dataclass(frozen=True)
class ExecutionPath:
    """One way of running a model: `from_pretrained` keyword arguments and the kernel mode."""

    name: str
    dtype: torch.dtype = torch.float32
    backend: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    kernels: str = "torch"
    requires: tuple[str, ...] = ()
    on_request_only: str | None = None  # why it is skipped unless named in `paths`


PATHS: tuple[ExecutionPath, ...] = (
    ExecutionPath("eager-fp32"),
    ExecutionPath("triton-kernels", kernels="triton", requires=("triton",)),
    ExecutionPath("torch-sdpa-fp32", backend="torch", backend_options={"attention": "sdpa", "fuse_qkv": True}),
    ExecutionPath("eager-bf16", dtype=torch.bfloat16, requires=("bf16",)),
    ExecutionPath("eager-fp16", dtype=torch.float16, requires=("cuda",)),
    ExecutionPath(
        "compile",
        backend="torch",
        backend_options={"compile": True},
        kernels="auto",
        on_request_only="torch.compile takes minutes on CPU; name it in --paths to run it",
    ),  # fmt: skip
    ExecutionPath("cuda-graphs", backend="torch", backend_options={"cuda_graphs": True}, requires=("cuda",)),
    ExecutionPath(
        "cuda-preset",
        dtype=torch.bfloat16,
        backend="torch",
        kernels="auto",
        backend_options={"compile": True, "cuda_graphs": True, "attention": "sdpa", "channels_last": True},
        requires=("cuda", "bf16"),
    ),  # fmt: skip
    ExecutionPath(
        "onnxruntime-cpu",
        backend="onnxruntime",
        backend_options={"providers": ["CPUExecutionProvider"]},
        requires=("on-cpu", "ort:CPUExecutionProvider"),
    ),  # fmt: skip
    ExecutionPath(
        "onnxruntime-cuda",
        backend="onnxruntime",
        backend_options={"providers": ["CUDAExecutionProvider"]},
        requires=("cuda", "ort:CUDAExecutionProvider"),
    ),  # fmt: skip
    ExecutionPath(
        "onnxruntime-tensorrt",
        backend="onnxruntime",
        backend_options={"providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]},
        requires=("cuda", "ort:TensorrtExecutionProvider"),
    ),  # fmt: skip
    ExecutionPath("tensorrt-fp32", backend="tensorrt", requires=("cuda", "tensorrt")),
    ExecutionPath("tensorrt-fp16", dtype=torch.float16, backend="tensorrt", requires=("cuda", "tensorrt")),
)


def _ort_providers() -> list[str]:
    if installed_version("onnxruntime") is None and installed_version("onnxruntime-gpu") is None:
        return []
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def missing_requirement(requirement: str, device: torch.device) -> str | None:
    """Why `requirement` does not hold on `device` here, or None when it does."""
    if requirement == "cuda":
        return None if device.type == "cuda" else "needs a CUDA device (run with --device cuda on a GPU machine)"
    if requirement == "on-cpu":
        return None if device.type == "cpu" else "the CPU provider is checked with --device cpu"
    if requirement == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16 support"
        return None
    if requirement == "triton":
        if not has_triton():
            return "triton is not installed (pip install 'fastgen[triton]')"
        if device.type == "cuda":
            return None
        from fastgen.kernels.noised_batch import _noised_batch_kernel

        if is_interpreted(_noised_batch_kernel):
            return None
        return "off CUDA the kernels run only in the Triton interpreter (TRITON_INTERPRET=1 before import)"
    if requirement.startswith("ort:"):
        provider = requirement[4:]
        available = _ort_providers()
        if not available:
            return "onnxruntime is not installed (pip install 'fastgen[onnx]' or 'fastgen[onnx-gpu]')"
        return None if provider in available else f"the installed onnxruntime has no {provider} (it has {available})"
    if requirement == "tensorrt":
        return None if installed_version("tensorrt") else "tensorrt is not installed (pip install 'fastgen[tensorrt]')"
    raise ValueError(f"unknown requirement {requirement!r}")


def skip_reason(path: ExecutionPath, device: torch.device, requested: set[str] | None) -> str | None:
    """Why `path` is not run on `device` (None: it runs). `requested` names the paths asked for
    (None: all that can run)."""
    if requested is not None and path.name not in requested:
        return "not requested"
    for requirement in path.requires:
        reason = missing_requirement(requirement, device)
        if reason:
            return reason
    if path.on_request_only and device.type == "cpu" and (requested is None or path.name not in requested):
        return path.on_request_only
    return None


@dataclass
class TestModel:
    name: str
    source: str  # what from_pretrained takes
    images: list[Any]
    classes: list[str] | None  # None: the model's own


def selftest_models(workdir: Path) -> list[TestModel]:
    """`builtin:digits` on 8 held-out digits, a tiny latent text model (random weights, built
    from config with the embedded model's CLIP tokenizer) on 4 seeded random images, and the
    flow-matching `builtin:digits-flow` on the same 8 digits."""
    from fastgen.builtin import resolve_builtin
    from fastgen.builtin.digits_data import digits_split, to_pil
    from fastgen.testing import make_latent_text

    _, _, test_x, _ = digits_split()
    digits = TestModel("builtin:digits", "builtin:digits", [to_pil(x) for x in test_x[:8]], None)
    folder = make_latent_text(
        workdir / "tiny-latent", seed=3, tokenizer_from=resolve_builtin("builtin:digits") / "tokenizer"
    )
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for _ in range(4)]
    latent = TestModel("tiny-latent-text", str(folder), images, ["cat", "dog", "car", "tree", "boat"])
    # The flow-matching path (SD3 transformer, rectified-flow schedule) on the same digits.
    flow = TestModel("builtin:digits-flow", "builtin:digits-flow", digits.images, None)
    return [digits, latent, flow]


@dataclass
class PathResult:
    path: str
    model: str
    status: str  # "pass", "FAIL", "error" or "skipped"
    reason: str = ""
    max_rel_error: float | None = None
    predictions_equal: str | None = None  # "k/n"
    reference_ties: int | None = None  # images whose reference margin is a tie at this path's tolerance
    rows_per_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _classifier(model: TestModel, device: torch.device, export_dir: Path, path: ExecutionPath) -> DiffusionClassifier:
    options = dict(path.backend_options)
    if path.backend == "tensorrt":
        options.setdefault("batch_sizes", (1, BATCH_SIZE, BATCH_SIZE))
    return DiffusionClassifier.from_pretrained(
        model.source, classes=model.classes, device=device, dtype=path.dtype, policy="exhaustive",
        policy_options={"n_samples": N_SAMPLES}, batch_size=BATCH_SIZE, backend=path.backend,
        backend_options=options or None, export_dir=export_dir if path.backend in ("onnxruntime", "tensorrt") else None,
    )  # fmt: skip


def reference_errors(model: TestModel, device: torch.device) -> np.ndarray:
    """[images, classes] per-class errors of the plain fp32 reference implementation."""
    clf = DiffusionClassifier.from_pretrained(
        model.source, classes=model.classes, device=device, policy="exhaustive",
        policy_options={"n_samples": N_SAMPLES}, batch_size=BATCH_SIZE,
    )  # fmt: skip
    with kernel_mode_scope("torch"):
        return np.stack([clf.classify_reference(image).errors for image in model.images])


def _scale(reference: np.ndarray) -> np.ndarray:
    """[images, 1]: each image's largest reference error, the unit of the relative tolerance."""
    return np.maximum(np.abs(reference).max(axis=1, keepdims=True), 1e-12)


def tied_in_reference(reference: np.ndarray, tolerance: float) -> np.ndarray:
    """[images] bool: the reference's top-two margin is within twice `tolerance` of the image's
    largest error. A path whose every error is within `tolerance` of the reference may then
    predict either class, so a different prediction there is not a fault of the path."""
    top_two = np.sort(reference, axis=1)[:, :2]
    return (top_two[:, 1] - top_two[:, 0]) / _scale(reference)[:, 0] <= 2 * tolerance


def compare(errors: np.ndarray, reference: np.ndarray, tolerance: float) -> tuple[float, int, bool]:
    """(largest relative difference, predictions equal to the reference's, pass) where a
    differing prediction counts against the path only if the reference's margin is not a tie."""
    relative = np.abs(errors - reference) / _scale(reference)
    worst = float(np.nanmax(relative)) if np.isfinite(errors).all() else float("inf")
    ours, theirs = errors.argmin(axis=1), reference.argmin(axis=1)
    tie = tied_in_reference(reference, tolerance)
    equal = int((ours == theirs).sum())
    ok = worst <= tolerance and bool(np.all((ours == theirs) | tie))
    return worst, equal, ok


def run_path(
    path: ExecutionPath, model: TestModel, reference: np.ndarray, device: torch.device, export_dir: Path
) -> PathResult:
    """Run `path` on `model` and compare with `reference`; an exception becomes an `error` row."""
    try:
        with kernel_mode_scope(path.kernels):
            clf = _classifier(model, device, export_dir, path)
            clf.classify(model.images[:1])  # warm-up: compilation, graph capture, engine load
            _sync(device)
            start = time.perf_counter()
            results = clf.classify(model.images)
            _sync(device)
            seconds = time.perf_counter() - start
    except Exception as error:  # a broken path is a result of the test, not its end
        last = traceback.format_exception_only(type(error), error)[-1].strip()
        return PathResult(path.name, model.name, "error", reason=last[:300])
    errors = np.stack([r.errors for r in results])
    worst, equal, ok = compare(errors, reference, TOLERANCE[path.dtype])
    rows = sum(r.unet_evals for r in results)
    fallback = provider_fallback(path, clf.denoise)
    return PathResult(
        path.name, model.name, "pass" if ok and not fallback else "FAIL", reason=fallback or "",
        max_rel_error=worst, predictions_equal=f"{equal}/{len(results)}",
        reference_ties=int(tied_in_reference(reference, TOLERANCE[path.dtype]).sum()),
        rows_per_s=rows / seconds if seconds > 0 else None,
    )  # fmt: skip


def provider_fallback(path: ExecutionPath, denoise: Any) -> str | None:
    """Why an ONNX Runtime path did not test what it names: its first provider failed to load
    and the session fell back (ORT only logs that), so its rows came from another provider."""
    asked = list(path.backend_options.get("providers") or [])
    used = list(getattr(denoise, "providers", None) or [])
    if path.backend != "onnxruntime" or not asked or (used and used[0] == asked[0]):
        return None
    return f"ONNX Runtime could not use {asked[0]} and ran on {used} instead (check the onnxruntime-gpu install)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _export_dir(export_dir: Path | None) -> Iterator[Path]:
    if export_dir is not None:
        yield Path(export_dir)
        return
    with tempfile.TemporaryDirectory(prefix="fastgen-selftest-") as folder:
        yield Path(folder)


def run_selftest(
    device: torch.device,
    *,
    paths: set[str] | None = None,
    export_dir: Path | None = None,
    progress: Callable[[PathResult], None] | None = None,
) -> list[PathResult]:
    """Every path of `PATHS` on every self-test model: ran (pass/FAIL/error) or skipped, with why."""
    unknown = sorted((paths or set()) - {p.name for p in PATHS})
    if unknown:
        raise ValueError(f"unknown selftest paths {unknown}; the paths are {[p.name for p in PATHS]}")
    results = []
    with _export_dir(export_dir) as exports, tempfile.TemporaryDirectory(prefix="fastgen-selftest-models-") as work:
        models = selftest_models(Path(work))
        references = {m.name: reference_errors(m, device) for m in models}
        for path in PATHS:
            reason = skip_reason(path, device, paths)
            for model in models:
                if reason:
                    row = PathResult(path.name, model.name, "skipped", reason=reason)
                else:
                    row = run_path(path, model, references[model.name], device, exports)
                results.append(row)
                if progress is not None:
                    progress(row)
    return results


def format_table(results: list[PathResult]) -> str:
    """One line per (path, model): status, max relative error, predictions equal, rows/s, reason."""
    header = f"{'path':<22} {'model':<18} {'status':<8} {'max rel err':>11} {'preds':>6} {'rows/s':>9}  reason"
    lines = [header, "-" * len(header)]
    for r in results:
        err = f"{r.max_rel_error:.2e}" if r.max_rel_error is not None else "-"
        rate = f"{r.rows_per_s:.0f}" if r.rows_per_s is not None else "-"
        preds = r.predictions_equal or "-"
        lines.append(f"{r.path:<22} {r.model:<18} {r.status:<8} {err:>11} {preds:>6} {rate:>9}  {r.reason}")
    return "\n".join(lines)
