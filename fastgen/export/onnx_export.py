"""Export a denoiser to ONNX with a dynamic batch axis, check it, and verify it against torch.

Two exporters: `dynamo` (default; `torch.export` based, PyTorch's default since 2.9, needs
`onnxscript`) and `torchscript` (the legacy tracer: much faster to run, deprecated upstream).
Both give every input and the output one named dynamic axis, `batch`, for the UNet2DConditionModel,
UNet2DModel-with-labels and DiT denoisers. Weights larger than protobuf's 2 GB limit are saved as
external data in one file next to the graph (`model.onnx.data`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastgen.backends.spec import INPUT_NAMES, OUTPUT_NAME, IOSpec
from fastgen.optional import require

log = logging.getLogger(__name__)

EXPORTERS = ("dynamo", "torchscript")
ONNX_FILE = "model.onnx"
DEFAULT_OPSET = 18
# Protobuf refuses messages over 2 GiB; leave room for the graph itself.
EXTERNAL_DATA_BYTES = 2**31 - 2**27
# Parity after export: max |exported - torch| <= tolerance * max(1, max |torch|).
PARITY_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
# On a GPU, cuDNN, ONNX Runtime's CUDA EP and TensorRT all use TF32 for fp32 convolutions and
# matmuls by default (10 mantissa bits), and fused fp16 kernels round differently.
GPU_PARITY_TOLERANCE = {torch.float32: 5e-3, torch.float16: 5e-2, torch.bfloat16: 1e-1}


def parity_tolerance(dtype: torch.dtype, *, gpu: bool) -> float:
    return (GPU_PARITY_TOLERANCE if gpu else PARITY_TOLERANCE).get(dtype, 1e-4)


# Batch 1 is avoided at export: torch.export specialises size-1 axes.
EXPORT_BATCH = 2


class ExportParityError(ValueError):
    """The exported graph's outputs differ from the torch module's beyond tolerance."""


class UnsupportedExportError(ValueError):
    """The chosen exporter cannot express an operator of this denoiser in ONNX."""


def module_bytes(module: nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def module_dtype(module: nn.Module) -> torch.dtype:
    return next(p.dtype for p in module.parameters() if p.is_floating_point())


def export_onnx(
    denoiser: nn.Module,
    spec: IOSpec,
    path: str | Path,
    *,
    exporter: str = "dynamo",
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
) -> dict[str, Any]:
    """Write `denoiser` as ONNX to `path` (and `path.data` for external weights); check it with
    `onnx.checker`. `external_data=None` decides by size. Returns facts for the cache's meta."""
    onnx = require("onnx", extra="onnx", purpose="ONNX export")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if exporter == "dynamo":
        require("onnxscript", extra="onnx", purpose="the dynamo ONNX exporter")
    path = Path(path)
    device = next(denoiser.parameters()).device
    inputs = spec.dummy_inputs(EXPORT_BATCH, dtype=module_dtype(denoiser), device=device)
    external = module_bytes(denoiser) > EXTERNAL_DATA_BYTES if external_data is None else external_data
    denoiser.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = set(path.parent.iterdir())
    with torch.no_grad(), warnings.catch_warnings():
        # Both exporters warn at length about trace-time branches on static sizes (channel
        # counts, spatial sizes); only the batch axis varies, and parity is checked below.
        warnings.simplefilter("ignore")
        try:
            if exporter == "dynamo":
                _export_dynamo(denoiser, inputs, spec, path, opset, external)
            else:
                _export_torchscript(denoiser, inputs, spec, path, opset, external)
        except torch.onnx.errors.UnsupportedOperatorError as error:
            # The legacy tracer has no ONNX form of some newer ops (Flux's RMSNorm is
            # aten::rms_norm); the dynamo exporter decomposes them.
            other = "dynamo" if exporter == "torchscript" else "torchscript"
            raise UnsupportedExportError(
                f"the {exporter} exporter cannot export this {spec.family} denoiser at opset {opset}: "
                f"{str(error).splitlines()[0]}; use exporter='{other}'"
            ) from None
    _single_data_file(path, external, written=set(path.parent.iterdir()) - existing - {path})
    onnx.checker.check_model(str(path))  # by path: works past 2 GB with external data
    data = path.with_name(path.name + ".data")
    return {
        "exporter": exporter,
        "opset": opset,
        "external_data": data.exists(),
        "onnx_bytes": path.stat().st_size + (data.stat().st_size if data.exists() else 0),
    }


def _export_dynamo(denoiser, inputs, spec: IOSpec, path: Path, opset: int, external: bool) -> None:
    # The exporter logs a warning per torchvision op it cannot register; none is used here.
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        program = _dynamo_program(denoiser, inputs, spec, opset)
    finally:
        registry_log.setLevel(level)
    program.save(str(path), external_data=external)


def _dynamo_program(denoiser, inputs, spec: IOSpec, opset: int):
    return torch.onnx.export(
        denoiser,
        inputs,
        input_names=list(INPUT_NAMES),
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=spec.dynamic_shapes(),
        optimize=True,
        verbose=False,
    )


def _export_torchscript(denoiser, inputs, spec: IOSpec, path: Path, opset: int, external: bool) -> None:
    torch.onnx.export(
        denoiser,
        inputs,
        str(path),
        input_names=list(INPUT_NAMES),
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=False,
        dynamic_axes=spec.dynamic_axes(),
        do_constant_folding=True,
    )


def _single_data_file(path: Path, external: bool, *, written: set[Path]) -> None:
    """Leave the graph with all weights inline, or all in one `model.onnx.data` next to it.

    Exporters name and split external data their own way (the tracer writes one file per
    tensor past 2 GB); one fixed layout lets the cache and TensorRT's parser find it.
    `written` are the files the exporter wrote besides the graph.
    """
    import onnx

    data_name = path.name + ".data"
    if written == ({path.with_name(data_name)} if external else set()):
        return
    model = onnx.load(str(path), load_external_data=True)
    for p in written:
        p.unlink()
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


def max_relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest |got - want| relative to max(1, max |want|); infinite when `got` is not finite
    where `want` is, or has another shape (a NaN must never compare as a small difference:
    `max(0.0, nan)` is 0.0)."""
    got, want = got.float(), want.float()
    if got.shape != want.shape:
        return float("inf")
    finite = torch.isfinite(want)
    got, want = got[finite], want[finite]
    if not bool(torch.isfinite(got).all()):
        return float("inf")
    if want.numel() == 0:
        return 0.0
    return float((got - want).abs().max()) / max(1.0, float(want.abs().max()))


def verify_onnx(
    path: str | Path,
    denoiser: nn.Module,
    spec: IOSpec,
    *,
    batch_sizes: tuple[int, ...] = (1, 3),
    providers: list[str] | None = None,
    tolerance: float | None = None,
) -> float:
    """Run the ONNX file with ONNX Runtime and the torch module on the same seeded inputs, at
    batch sizes other than the one exported with; raise `ExportParityError` past tolerance.
    Returns the largest relative difference seen."""
    from fastgen.backends.onnxruntime_backend import OnnxRuntimeBackend

    dtype = module_dtype(denoiser)
    device = next(denoiser.parameters()).device
    backend = OnnxRuntimeBackend(path, spec, device=device, providers=providers)
    tolerance = parity_tolerance(dtype, gpu=backend.on_gpu) if tolerance is None else tolerance
    worst = 0.0
    for seed, batch in enumerate(batch_sizes):
        inputs = spec.dummy_inputs(batch, dtype=dtype, device=device, seed=100 + seed)
        with torch.no_grad():
            want = denoiser(*inputs).float()
        diff = max_relative_difference(backend(*inputs), want)
        worst = max(worst, diff)
        if not worst <= tolerance:
            raise ExportParityError(
                f"ONNX export of {spec.family} model differs from torch at batch {batch}: max "
                f"relative difference {diff:.3g} > {tolerance:.3g} ({backend.providers[0]}, "
                f"{str(dtype).removeprefix('torch.')}); try exporter='torchscript' or 'dynamo' "
                "(the other one), or dtype fp32"
            )
    log.info("ONNX parity ok: max relative difference %.3g at batches %s", worst, batch_sizes)
    return worst
