"""Benchmark the fused kernels against eager torch and `torch.compile` of the references.

    python bench/bench_kernels.py --out bench/results/kernels-$(hostname).jsonl   # needs CUDA
    python bench/bench_kernels.py --cpu-smoke                                     # torch parts only

At SD-sized rows (4 x 64 x 64; fp16/bf16 denoiser dtype; 64 to 1024 rows) it times each
implementation of both ops and prints one JSON row per measurement. Rows are laid out as the
engine lays them out: `images` images x classes x `samples` shared noise samples, gathered from
fp32 banks (`--bank-dtype`). Each timed call starts with a cold L2 (a 256 MiB buffer is
overwritten first), so bank rows are only reused within a call, as in the engine.

Bandwidth: `gbps` counts the bytes a call must move at least (every prediction / output row, and
each *distinct* bank row once); `logical_gbps` counts every operand row of every row. Both are
reported against `copy_gbps`, the device's measured device-to-device copy bandwidth
(2 x bytes / time for a 1 GiB `copy_`). Warm-up (compile, autotune) time is reported apart as
`warmup_s`; times are medians over `--reps` calls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time

import torch

from fastgen.kernels._triton import has_triton, triton
from fastgen.kernels.noised_batch import launch_noised_batch, noised_batch, noised_batch_ref
from fastgen.kernels.prediction_errors import prediction_errors, prediction_errors_ref
from fastgen.losses import target_coefficients

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device: torch.device, reps: int) -> list[float]:
    """Seconds per call, each started on a cold L2 and timed on the device."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if device.type == "cuda" else None
    times = []
    for _ in range(reps):
        if flush is None:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
            continue
        flush.zero_()  # still running when the timed call is queued, so launch gaps stay hidden
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3)
    return times


def copy_bandwidth(device: torch.device, reps: int) -> float:
    """Measured device-to-device copy bandwidth, GB/s (read + write)."""
    n_bytes = 2**30 if device.type == "cuda" else 2**26
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    return 2 * n_bytes / statistics.median(time_calls(lambda: dst.copy_(src), device, reps)) / 1e9


def make_case(rows: int, shape, dtype, bank_dtype, images: int, samples: int, prediction_type: str, device):
    """Banks, engine-style row indices (image-major, then class, then sample) and coefficients."""
    if rows % (images * samples):
        raise SystemExit(f"rows ({rows}) must be a multiple of images x samples ({images * samples})")
    g = torch.Generator().manual_seed(rows)
    classes = rows // (images * samples)
    r = torch.arange(rows)
    x0_index, eps_index = r // (classes * samples), r % samples
    x0 = torch.randn(images, *shape, generator=g).to(device, bank_dtype)
    eps = torch.randn(samples, *shape, generator=g).to(device, bank_dtype)
    alphas = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
    abar = alphas[torch.randint(0, 1000, (rows,), generator=g)]
    a, b = target_coefficients(prediction_type, abar)
    prediction = torch.randn(rows, *shape, generator=g).to(device, dtype)
    dev = lambda v: v.to(device)
    coeffs = {"c0": dev(abar.sqrt().float()), "c1": dev((1 - abar).sqrt().float()), "a": dev(a), "b": dev(b)}
    weight = dev(torch.ones(rows))
    indices = {"x0_index": dev(x0_index), "eps_index": dev(eps_index)}
    return {"x0": x0, "eps": eps, "prediction": prediction, "weight": weight, **indices, **coeffs}


def op_calls(op: str, case: dict, dtype, loss: str) -> dict:
    """Implementation name -> zero-argument callable for one op on one case."""
    c = case
    # A fresh compile per case: its warm-up is then the real compile time, and dynamo's
    # recompile limit can never silently send later cases back to eager.
    torch._dynamo.reset()
    if op == "noised_batch":
        args = (c["x0"], c["eps"], c["x0_index"], c["eps_index"], c["c0"], c["c1"], dtype)
        fns = {"eager": lambda: noised_batch_ref(*args)}
        compiled = torch.compile(noised_batch_ref, dynamic=False)
        fns["compile"] = lambda: compiled(*args)
        if c["x0"].is_cuda and has_triton():
            fns["triton"] = lambda: noised_batch(*args)  # through the registered op, as the engine
            fns["triton_launcher"] = lambda: launch_noised_batch(*args)  # without op dispatch
        return fns
    args = (c["prediction"], c["x0"], c["eps"], c["x0_index"], c["eps_index"], c["a"], c["b"], c["weight"], loss)
    fns = {"eager": lambda: prediction_errors_ref(*args)}
    compiled = torch.compile(prediction_errors_ref, dynamic=False)
    fns["compile"] = lambda: compiled(*args)
    if c["prediction"].is_cuda and has_triton():
        fns["triton"] = lambda: prediction_errors(*args)
    return fns


def traffic(op: str, case: dict, dtype) -> tuple[int, int]:
    """(minimum bytes, logical bytes) one call moves."""
    rows, n = case["prediction"].shape[0], case["prediction"][0].numel()
    row_bytes = n * torch.finfo(dtype).bits // 8
    bank_bytes = n * case["x0"].element_size()
    if op == "noised_batch":
        reads = [("x0", True), ("eps", True)]
    else:
        reads = [("x0", bool((case["b"] != 0).any())), ("eps", bool((case["a"] != 0).any()))]
    distinct = sum(int(case[f"{name}_index"].unique().numel()) for name, used in reads if used)
    used = sum(1 for _, u in reads if u)
    return rows * row_bytes + distinct * bank_bytes, rows * (row_bytes + used * bank_bytes)


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "device": name, "device_type": device.type, "torch": torch.__version__,
        "triton": triton.__version__ if has_triton() else None, "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }  # fmt: skip


def measure(args, device: torch.device, emit) -> None:
    env = environment(device)
    copy_gbps = copy_bandwidth(device, args.reps)
    emit({"bench": "kernels", "op": "copy", **env, "copy_gbps": round(copy_gbps, 1)})
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for prediction_type in args.prediction_types:
            for rows in args.rows:
                case = make_case(rows, args.shape, dtype, DTYPES[args.bank_dtype], args.images,
                                 args.samples, prediction_type, device)  # fmt: skip
                for op in args.ops:
                    if op == "noised_batch" and prediction_type != args.prediction_types[0]:
                        continue  # the input rows do not depend on the prediction type
                    run_op(op, case, dtype, rows, prediction_type, args, device, env, copy_gbps, emit)


def run_op(op, case, dtype, rows, prediction_type, args, device, env, copy_gbps, emit) -> None:
    min_bytes, logical_bytes = traffic(op, case, dtype)
    eager_out = None
    for impl, fn in op_calls(op, case, dtype, args.loss).items():
        start = time.perf_counter()
        out = fn()
        _sync(device)
        warmup = time.perf_counter() - start
        for _ in range(args.warmup):
            fn()
        _sync(device)
        seconds = statistics.median(time_calls(fn, device, args.reps))
        eager_out = out if impl == "eager" else eager_out
        diff = (out.float() - eager_out.float()).abs().max().item()
        emit({
            "bench": "kernels", "op": op, "impl": impl, **env,
            "dtype": str(dtype).removeprefix("torch."), "bank_dtype": args.bank_dtype, "rows": rows,
            "row_shape": list(args.shape), "prediction_type": prediction_type if op != "noised_batch" else None,
            "loss": args.loss if op != "noised_batch" else None, "images": args.images, "samples": args.samples,
            "time_us": round(seconds * 1e6, 2), "warmup_s": round(warmup, 3),
            "gbps": round(min_bytes / seconds / 1e9, 1), "logical_gbps": round(logical_bytes / seconds / 1e9, 1),
            "copy_gbps": round(copy_gbps, 1), "pct_of_copy": round(100 * min_bytes / seconds / 1e9 / copy_gbps, 1),
            "max_abs_diff_vs_eager": diff, "reps": args.reps,
        })  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--shape", type=int, nargs="+", default=[4, 64, 64], help="row shape C H W")
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--bank-dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--prediction-types", nargs="+", default=["epsilon", "v_prediction"])
    parser.add_argument("--ops", nargs="+", default=["noised_batch", "prediction_errors"])
    parser.add_argument("--loss", default="l2", choices=["l2", "l1", "huber"])
    parser.add_argument("--images", type=int, default=4, help="distinct images per batch")
    parser.add_argument("--samples", type=int, default=8, help="distinct noise samples per batch")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--out", help="also append the JSON rows to this file")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="no CUDA needed: eager and compile only, at tiny sizes (checks the script)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.rows, args.shape, args.dtypes, args.reps, args.warmup = [16], [4, 8, 8], ["bf16"], 5, 1
        args.images, args.samples, args.prediction_types = 2, 4, ["v_prediction"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("bench_kernels: no CUDA device here; the Triton kernels need one. Run it on a GPU, "
              "or pass --cpu-smoke to check the torch parts at tiny sizes.", file=sys.stderr)  # fmt: skip
        return 0
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(args.out, "a")) if args.out else None

        def emit(row: dict) -> None:
            line = json.dumps(row)
            print(line, flush=True)
            if sink:
                sink.write(line + "\n")
                sink.flush()

        with torch.inference_mode():
            measure(args, device, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
