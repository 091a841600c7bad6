"""Small shared helpers for the tests (importable because tests/ is on sys.path)."""

from __future__ import annotations

import json
import os
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from fastgen import DiffusionClassifier
from fastgen.jobs.results_file import is_header


def one_thread_env() -> dict[str, str]:
    """This process's environment for a command a test starts (often two torchrun ranks on the 2
    cores): one thread per process, offline, unbuffered output. FASTGEN_THREADS is set as well,
    since it overrides OMP_NUM_THREADS and conftest sets it to the suite's own count."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "FASTGEN_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def small_classifier(folder, kind: str, **kwargs) -> DiffusionClassifier:
    """Three classes (labels for class-conditional kinds), exhaustive 5 samples, CPU."""
    classes = ["class0", "class1", "class2"] if kind in ("dit", "label-unet") else ["cat", "dog", "bird"]
    options = {"policy": "exhaustive", "policy_options": {"n_samples": 5}, "device": "cpu", "batch_size": 7}
    options.update(kwargs)
    return DiffusionClassifier.from_pretrained(folder, classes=classes, **options)


def errors_of(results) -> np.ndarray:
    return np.stack([r.errors for r in results])


def file_lines(path: Path) -> tuple[dict, list[dict]]:
    """A results file as (its header, its records in file order); the header must come first."""
    objects = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert objects and is_header(objects[0]), "a results file starts with its header"
    assert not any(is_header(o) for o in objects[1:])
    return objects[0], objects[1:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_png(width: int, height: int) -> bytes:
    """A valid all-black 8-bit grayscale PNG of any declared size, small on disk: a 14000 x 14000
    one is about 190 KB and decodes to 196 million pixels."""
    compressor = zlib.compressobj(6)
    rows = b"\0" * (width + 1) * min(height, 256)  # each row: filter byte 0, then the pixels
    data = b"".join(compressor.compress(rows[: (width + 1) * min(256, height - y)]) for y in range(0, height, 256))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", data + compressor.flush())
        + png_chunk(b"IEND", b"")
    )


def assert_same_predictions(results, reference, atol: float) -> None:
    """Each result predicts what its reference does, unless the reference's two best classes are
    within 2 * `atol` of each other: results whose errors are each within `atol` of the
    reference's may then land on either side, and which side depends on the CPU's kernels and
    rounding (AVX2 or AVX512, oneDNN's choice, the thread count), not on the code under test.
    Classes a policy dropped (NaN errors) are not candidates."""
    assert len(results) == len(reference)
    for got, want in zip(results, reference):
        if got.prediction == want.prediction:
            continue
        best_two = np.sort(want.errors[np.isfinite(want.errors)])[:2]
        margin = best_two[1] - best_two[0] if len(best_two) == 2 else np.inf
        assert margin <= 2 * atol, (
            f"predicted {got.prediction!r} where the reference predicts {want.prediction!r} "
            f"by a margin of {margin:.3g}, more than twice the tolerance {atol:g}"
        )


def run_policy_on_table(policy, table: np.ndarray) -> tuple[list[int], int]:
    """(units standing at the end, samples used) of `policy` on per-sample errors [K, N], called
    the way the engine calls it; a policy asking for more samples than the table has fails."""
    alive, n = list(range(table.shape[0])), policy.first_round()
    errors = torch.from_numpy(table.astype(np.float32))
    while True:
        alive, next_n = policy.next_round(errors[alive, :n], alive)
        if next_n is None:
            return alive, n
        assert next_n <= table.shape[1], "the policy asks for more samples than the table has"
        n = next_n


def default_ctrl_c() -> None:
    """`preexec_fn` for a child that a test stops with SIGINT. A shell starts background jobs with
    SIGINT ignored, children inherit that, and Python then never raises KeyboardInterrupt; so a
    suite launched in the background would see Ctrl-C do nothing. The child gets the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
