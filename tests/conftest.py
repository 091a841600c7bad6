"""Shared fixtures: tiny random-weight models of every kind, saved and loaded through the real
`from_pretrained` folder layout, and a guard that fails any test touching the network."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# torch.compile's on-disk kernel cache is not keyed by the instruction set torch was told to use
# (ATEN_CPU_CAPABILITY): kernels built for AVX512 and loaded in a run held to AVX2 gave wrong
# values (seen with torch 2.13). One cache folder per instruction-set setting keeps them apart.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _isa = f"{torch.backends.cpu.get_cpu_capability()}-{os.environ.get('ONEDNN_MAX_CPU_ISA', 'default')}".lower()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"fastgen-inductor-{_isa}")
# Under pytest-xdist (`-n N`) the workers share the cores: each takes its share of torch's threads,
# so that N workers never run more threads than there are cores (oversubscribed OpenMP threads
# wait on each other at every small op).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, torch.get_num_threads() // _workers))
# Command lines run in-process, and the processes tests start, keep this process's thread count:
# an `auto` run would re-choose it from the machine's load while other tests run
# (tests/test_cpu_threads.py checks `auto` itself). Set, not defaulted: xdist's workers inherit
# the controlling process's environment, whose count is that of a process with every core.
os.environ["FASTGEN_THREADS"] = str(torch.get_num_threads())
# Without a GPU the Triton kernels run in the interpreter, which must be chosen before triton loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastgen.testing import make_dit, make_flux, make_label_unet, make_latent_text, make_pixel_text, make_sd3  # noqa: E402 (after the environment above)

# Tests whose results depend on the CPU's arithmetic: reduced precision, compiled graphs, the
# self-test and the kernels. `.ci/run` runs them a second time with torch held to AVX2
# (`-m precision`), so a machine with native bf16 also checks the machines without it.
PRECISION_SENSITIVE = {
    "test_selftest.py",
    "test_backends_torch.py",
    "test_kernels.py",
    "test_kernel_dispatch.py",
    "test_gpu_paths_kernels.py",
    "test_classify_options.py",  # --dtype bf16 end to end
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in PRECISION_SENSITIVE:
            item.add_marker(pytest.mark.precision)


def pytest_report_header(config):
    """Name the CPU kind the run checks: the instruction set torch uses and native bf16."""
    model = flags = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    native_bf16 = "avx512_bf16" in flags.split()
    isa = torch.backends.cpu.get_cpu_capability()
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "none")
    return (
        f"cpu: {model or 'unknown'}; native bf16 (AVX512-BF16): {'yes' if native_bf16 else 'no'}; "
        f"torch kernels: {isa}; ONEDNN_MAX_CPU_ISA: {limit}; threads: {torch.get_num_threads()}"
    )


_real_connect = socket.socket.connect


def _local_only_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("/"):
        raise RuntimeError(f"test tried to reach the network ({address}); tests must run offline")
    return _real_connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def no_network():
    socket.socket.connect = _local_only_connect
    yield
    socket.socket.connect = _real_connect


MODEL_BUILDERS = {
    "latent-text": lambda path: make_latent_text(path),
    "latent-text-v": lambda path: make_latent_text(path, prediction_type="v_prediction", seed=1),
    "pixel-text": lambda path: make_pixel_text(path, seed=2),
    "dit": lambda path: make_dit(path, seed=3),
    "label-unet": lambda path: make_label_unet(path, seed=4),
    "sd3": lambda path: make_sd3(path, seed=5),
    "sd3-pixel": lambda path: make_sd3(path, seed=6, with_t5=False, with_vae=False),
    "flux": lambda path: make_flux(path, seed=7),
}


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """Kind name -> folder of a tiny model, built once per test session."""
    root = tmp_path_factory.mktemp("models")
    return {name: build(root / name) for name, build in MODEL_BUILDERS.items()}


@pytest.fixture
def images():
    """Five seeded, non-trivial RGB images of different sizes (the adapters resize them)."""
    g = torch.Generator().manual_seed(1234)
    sizes = [(16, 16), (20, 16), (16, 24), (32, 32), (16, 16)]
    out = []
    for h, w in sizes:
        base = torch.rand(3, 1, 1, generator=g)
        ramp = torch.linspace(0, 1, w).view(1, 1, w) * torch.rand(3, 1, 1, generator=g)
        out.append((0.6 * base + 0.3 * ramp + 0.1 * torch.rand(3, h, w, generator=g)).clamp(0, 1))
    return out
