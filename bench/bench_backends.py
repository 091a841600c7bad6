"""Compare the denoiser backends on the same work; one JSON row per measurement.

CPU (what CI-like machines can run): torch eager, the torch backend (SDPA + fused QKV), torch.compile
(inductor) and ONNX Runtime's CPU provider, on the same seeded denoiser batches, then on the same
end-to-end classification of a tiny latent model:

    OMP_NUM_THREADS=1 python bench/bench_backends.py --device cpu --presets tiny,small \
        --out bench/results/backends_cpu.jsonl

GPU (an SD-2-base-sized random-weight UNet at 64x64 latents): eager vs torch.compile vs CUDA graphs
vs compile + CUDA graphs, fp16 vs bf16, batch 32 to 256, and how far fp16 / bf16 predictions are
from fp32 (TF32 off) on the same inputs. Nothing here needs a download:

    python bench/bench_backends.py --device cuda --presets sd2-base --dtypes fp16,bf16 \
        --batch-sizes 32,64,128,256 --modes eager,torch,compile,cuda_graphs,compile_graphs \
        --out $OUT/backends_gpu.jsonl

Setup (export, compile, graph capture, warm-up) is reported apart from the steady state; the
device is synchronised around every timed call.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

from fastgen.backends.onnxruntime_backend import OnnxRuntimeBackend
from fastgen.backends.spec import denoiser_spec
from fastgen.backends.torch_backend import TorchBackend
from fastgen.export.cache import ExportCache
from fastgen.export.pipeline import ensure_onnx
from fastgen.models.base import TextDenoiser

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# UNet2DConditionModel configs; sd2-base is Stable Diffusion 2 base's UNet (865 M parameters).
PRESETS = {
    "tiny": dict(sample_size=8, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=32,
                 attention_head_dim=4, norm_num_groups=8, text_length=12,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    "small": dict(sample_size=16, block_out_channels=(64, 128, 128), layers_per_block=1, cross_attention_dim=128,
                  attention_head_dim=8, norm_num_groups=32, text_length=16,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    "sd2-base": dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                     cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                     norm_num_groups=32, text_length=77,
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
}  # fmt: skip


def make_denoiser(preset: str, seed: int = 0) -> tuple[TextDenoiser, object]:
    from diffusers import UNet2DConditionModel

    config = dict(PRESETS[preset])
    text_length = config.pop("text_length")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **config).eval()
    denoiser = TextDenoiser(unet)
    return denoiser, denoiser_spec(denoiser, text_length=text_length)


def environment(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor())  # fmt: skip
    versions = {}
    for package in ("torch", "diffusers", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "fastgen"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    settings = {k.lower(): os.environ[k] for k in ("OMP_NUM_THREADS", "TORCHINDUCTOR_CACHE_DIR") if k in os.environ}
    return {"device": name, "device_type": device.type, "threads": torch.get_num_threads(), **settings, **versions}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call, inputs, device, iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        call(*inputs)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> dict:
    got, want = got.float(), want.float()
    return {
        "max_rel_diff": float((got - want).abs().max() / want.abs().max()),
        "rms_rel_diff": float((got - want).square().mean().sqrt() / want.square().mean().sqrt()),
    }


def make_backend(mode: str, denoiser, spec, device: torch.device, cache: ExportCache):
    """A fresh copy of the denoiser per mode: the torch backend prepares its module in place."""
    if mode == "eager":
        return copy.deepcopy(denoiser)
    if mode == "onnxruntime":
        exported = ensure_onnx(denoiser, spec, model=f"bench:{spec.family}", cache=cache)
        return OnnxRuntimeBackend(exported.path, spec, device=device)
    options = {
        "torch": {},
        "compile": {"compile": True},
        "cuda_graphs": {"cuda_graphs": True},
        "compile_graphs": {"compile": True, "cuda_graphs": True},
    }[mode]
    return TorchBackend(copy.deepcopy(denoiser), spec, **options)


def bench_denoiser(args, device, env, emit) -> None:
    cache = ExportCache(Path(tempfile.mkdtemp(prefix="fastgen-bench-")))
    for preset in args.presets:
        base, spec = make_denoiser(preset)
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            denoiser = copy.deepcopy(base).to(device, dtype)
            for batch in args.batch_sizes:
                inputs = spec.dummy_inputs(batch, dtype=dtype, device=device, seed=batch)
                with torch.inference_mode():
                    want = denoiser(*inputs)
                for mode in args.modes:
                    row = run_mode(mode, denoiser, spec, inputs, want, device, cache, args.iters)
                    emit(
                        {
                            **env,
                            "bench": "denoiser",
                            "preset": preset,
                            "dtype": dtype_name,
                            "batch": batch,
                            "mode": mode,
                            **row,
                        }
                    )
            del denoiser
            if device.type == "cuda":
                torch.cuda.empty_cache()


def run_mode(mode, denoiser, spec, inputs, want, device, cache, iters) -> dict:
    torch._dynamo.reset()
    started = time.perf_counter()
    try:
        backend = make_backend(mode, denoiser, spec, device, cache)
        with torch.inference_mode():
            for _ in range(3):  # compile / capture / autotune happen here, outside the timing
                got = backend(*inputs)
        sync(device)
    except Exception as error:  # a mode that cannot run here is recorded, not fatal
        return {"error": f"{type(error).__name__}: {error}"[:300]}
    setup_s = time.perf_counter() - started
    with torch.inference_mode():
        times = timed(backend, inputs, device, iters)
    median = statistics.median(times)
    batch = inputs[0].shape[0]
    return {
        "setup_s": round(setup_s, 3), "iters": iters, "ms_per_batch": round(1e3 * median, 3),
        "ms_min": round(1e3 * min(times), 3), "rows_per_s": round(batch / median, 2),
        **{f"vs_eager_{k}": v for k, v in rel_diff(got, want).items()},
    }  # fmt: skip


def bench_agreement(args, device, env, emit) -> None:
    """fp16 / bf16 predictions against fp32 on the same inputs (TF32 off for the fp32 side)."""
    base, spec = make_denoiser(args.presets[-1])
    batch = min(args.batch_sizes)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    reference = copy.deepcopy(base).to(device, torch.float32)
    inputs = spec.dummy_inputs(batch, dtype=torch.float32, device=device, seed=1)
    with torch.inference_mode():
        want = reference(*inputs)
    del reference
    for dtype_name in [d for d in args.dtypes if d != "fp32"]:
        dtype = DTYPES[dtype_name]
        low = copy.deepcopy(base).to(device, dtype)
        cast = tuple(v.to(dtype) if v.is_floating_point() else v for v in inputs)
        with torch.inference_mode():
            got = low(*cast)
        emit({**env, "bench": "agreement_vs_fp32", "preset": args.presets[-1], "dtype": dtype_name, "batch": batch,
              "finite": bool(torch.isfinite(got).all()), **rel_diff(got, want)})  # fmt: skip
        del low


def bench_classify(args, device, env, emit) -> None:
    """The same end-to-end classification (tiny latent model, exhaustive policy) per backend."""
    import numpy as np

    from fastgen import DiffusionClassifier
    from fastgen.models.loading import quiet_hub_libraries
    from fastgen.testing import make_latent_text

    quiet_hub_libraries()
    folder = make_latent_text(Path(tempfile.mkdtemp(prefix="fastgen-bench-model-")) / "latent-text")
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 16, 16, generator=g) for _ in range(args.images)]
    common = {"classes": [f"class {i}" for i in range(10)], "policy": "exhaustive", "device": str(device),
              "policy_options": {"n_samples": args.samples}, "batch_size": args.classify_batch}  # fmt: skip
    variants = {"eager": {}, "torch": {"backend": "torch"}, "compile": {"backend": "torch", "backend_options": {"compile": True}},
                "onnxruntime": {"backend": "onnxruntime", "export_dir": tempfile.mkdtemp(prefix="fastgen-bench-cache-")}}  # fmt: skip
    reference = None
    for name, options in variants.items():
        torch._dynamo.reset()
        started = time.perf_counter()
        clf = DiffusionClassifier.from_pretrained(folder, **common, **options)
        clf.classify(images[:1])  # export / compile / warm-up
        setup_s = time.perf_counter() - started
        started = time.perf_counter()
        results = clf.classify(images)
        seconds = time.perf_counter() - started
        errors = np.stack([r.errors for r in results])
        reference = errors if reference is None else reference
        emit({**env, "bench": "classify", "model": "tiny latent-text (fastgen.testing)", "backend": name,
              "images": len(images), "classes": 10, "samples": args.samples, "batch": args.classify_batch,
              "setup_s": round(setup_s, 3), "seconds": round(seconds, 3), "images_per_s": round(len(images) / seconds, 3),
              "unet_rows": int(sum(r.unet_evals for r in results)),
              "max_abs_error_diff_vs_eager": float(np.abs(errors - reference).max()),
              "predictions": [r.prediction_index for r in results]})  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", default="tiny,small", type=lambda s: s.split(","))
    parser.add_argument(
        "--dtypes", default=None, type=lambda s: s.split(","), help="default fp32 on CPU, fp16,bf16 on CUDA"
    )
    parser.add_argument("--batch-sizes", default=None, type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--modes", default=None, type=lambda s: s.split(","))
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--images", type=int, default=8, help="classify bench (CPU): images")
    parser.add_argument("--samples", type=int, default=10, help="classify bench (CPU): samples per class")
    parser.add_argument("--classify-batch", type=int, default=32)
    parser.add_argument(
        "--skip", default="", type=lambda s: set(filter(None, s.split(","))), help="denoiser,agreement,classify"
    )
    parser.add_argument("--out", type=Path, default=None, help="append JSON rows here too")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.dtypes = args.dtypes or (["fp16", "bf16"] if gpu else ["fp32"])
    args.batch_sizes = args.batch_sizes or ([32, 64, 128, 256] if gpu else [32])
    args.modes = args.modes or (
        ["eager", "torch", "compile", "cuda_graphs", "compile_graphs"]
        if gpu
        else ["eager", "torch", "compile", "onnxruntime"]
    )
    env = {
        **environment(device),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    handle = args.out.open("a", encoding="utf-8") if args.out else None
    rows: list[dict] = []

    def emit(row: dict) -> None:
        # Shared machines: the load next to each figure says how much to trust it.
        row = {**row, "load_avg_1m": round(os.getloadavg()[0], 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()

    if "denoiser" not in args.skip:
        bench_denoiser(args, device, env, emit)
    if gpu and "agreement" not in args.skip:
        bench_agreement(args, device, env, emit)
    if not gpu and "classify" not in args.skip:
        bench_classify(args, device, env, emit)
    print_table(rows)
    return 0


def print_table(rows: list[dict]) -> None:
    """A short summary on stderr; the JSON rows above hold everything."""
    out = sys.stderr
    print(f"\n{'bench':<10} {'preset/backend':<14} {'mode':<15} {'dtype':<5} {'batch':>5} {'ms/batch':>9} "
          f"{'rows/s':>9} {'setup s':>8} {'diff':>9}", file=out)  # fmt: skip
    for row in rows:
        name = row.get("preset") or row.get("backend", "")
        mode = row.get("mode") or ("" if row["bench"] != "classify" else "end-to-end")
        if "error" in row:
            print(
                f"{row['bench']:<10} {name:<14} {mode:<15} {row.get('dtype', ''):<5} {row.get('batch', ''):>5} {row['error'][:60]}",
                file=out,
            )
            continue
        ms = row.get("ms_per_batch", 1e3 * row.get("seconds", 0))
        speed = row.get("rows_per_s", row.get("unet_rows", 0) / row["seconds"] if row.get("seconds") else 0)
        diff = row.get("vs_eager_max_rel_diff", row.get("max_rel_diff", row.get("max_abs_error_diff_vs_eager", 0)))
        print(f"{row['bench']:<10} {name:<14} {mode:<15} {row.get('dtype', 'fp32'):<5} {row.get('batch', ''):>5} "
              f"{ms:>9.2f} {speed:>9.1f} {row.get('setup_s', 0):>8.2f} {diff:>9.2e}", file=out)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
