"""The export cache: keys hold everything an export is tied to, builds publish atomically, a
crashed build is never loaded, and TensorRT's absence is reported with the extra to install."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from fastgen import DiffusionClassifier
from fastgen.backends.spec import adapter_spec
from fastgen.commands.main import main
from fastgen.export.cache import ExportCache, atomic_write_bytes, weights_fingerprint
from fastgen.export.pipeline import engine_key, onnx_key
from fastgen.models import load_adapter
from fastgen.optional import MissingDependency


def _key(model_dirs, kind="latent-text", dtype=torch.float32, exporter="dynamo"):
    adapter = load_adapter(model_dirs[kind], dtype=dtype)
    return onnx_key(adapter.denoiser, adapter_spec(adapter), model=str(model_dirs[kind]), exporter=exporter)


def test_keys_change_with_everything_an_export_depends_on(model_dirs):
    base = _key(model_dirs)
    assert base == _key(model_dirs)  # deterministic, loading twice included
    variants = {
        "other weights, same config": _key(model_dirs, "latent-text-v"),
        "other model": _key(model_dirs, "pixel-text"),
        "dtype": _key(model_dirs, dtype=torch.float16),
        "exporter": _key(model_dirs, exporter="torchscript"),
        "versions": replace(base, versions={**base.versions, "torch": "0.0"}),
    }
    assert variants["other weights, same config"].config_hash == base.config_hash
    assert variants["other weights, same config"].weights != base.weights
    digests = {name: key.digest() for name, key in variants.items()} | {"base": base.digest()}
    assert len(set(digests.values())) == len(digests), digests

    engine = engine_key(base, batch_sizes=(1, 32, 64), device="cpu")
    engines = [
        engine,
        engine_key(base, batch_sizes=(1, 64, 64), device="cpu"),
        replace(engine, compute_capability="sm_90"),
        replace(engine, versions={**engine.versions, "tensorrt": "10.0.0"}),
        engine_key(variants["dtype"], batch_sizes=(1, 32, 64), device="cpu"),
    ]
    assert len({e.digest() for e in engines}) == len(engines)
    assert "tensorrt" in engine.versions and engine.batch_sizes == (1, 32, 64)
    assert (
        ExportCache("/c")
        .folder(replace(engine, compute_capability="sm_90"))
        .name.startswith("tensorrt-fp32-b1_32_64-sm_90-")
    )


def test_weights_fingerprint_sees_a_single_changed_weight(model_dirs):
    adapter = load_adapter(model_dirs["dit"])
    before = weights_fingerprint(adapter.denoiser)
    with torch.no_grad():
        weight = next(adapter.denoiser.parameters())
        weight.view(-1)[3] += 1e-3
    assert weights_fingerprint(adapter.denoiser) != before


def _fake_key(model_dirs, batch_sizes=None):
    base = _key(model_dirs, "dit")
    return engine_key(base, batch_sizes=batch_sizes, device="cpu") if batch_sizes else base


def test_build_publishes_atomically_and_a_failed_build_leaves_nothing(model_dirs, tmp_path):
    cache, key = ExportCache(tmp_path), _fake_key(model_dirs)

    def crash(folder):
        (folder / "model.onnx").write_bytes(b"half a graph")
        raise RuntimeError("killed mid-export")

    with pytest.raises(RuntimeError, match="killed mid-export"):
        cache.build(key, crash)
    assert cache.lookup(key) is None
    assert not any(cache.root.rglob("model.onnx")), "a failed build must not leave its files"

    calls = []

    def good(folder):
        calls.append(folder)
        (folder / "model.onnx").write_bytes(b"graph")
        return {"note": "ok"}

    published = cache.build(key, good)
    assert cache.lookup(key) == published == cache.folder(key)
    assert calls[0] != published and not calls[0].exists()  # built elsewhere, then renamed
    meta = json.loads((published / "meta.json").read_text())
    assert meta["note"] == "ok" and meta["key"]["weights"] == key.weights
    assert [p.name for p in published.parent.iterdir()] == [published.name]


def test_a_build_killed_before_publishing_is_never_loaded(model_dirs, tmp_path):
    """What `kill -9` mid-build leaves: a temporary folder with a partial engine and no meta."""
    cache, key = ExportCache(tmp_path), _fake_key(model_dirs, (1, 8, 8))
    leftover = cache.folder(key).parent / f".tmp-{cache.folder(key).name}.12345.deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "model.plan").write_bytes(b"\x00" * 100)
    assert cache.lookup(key) is None and cache.find_engine(key, 8) is None
    # a final-named folder without meta.json (copied in by hand, say) is not trusted either
    cache.folder(key).mkdir()
    (cache.folder(key) / "model.plan").write_bytes(b"\x00" * 100)
    assert cache.lookup(key) is None and cache.find_engine(key, 8) is None


def test_the_next_build_removes_leftovers_of_dead_processes_once_stale(model_dirs, tmp_path):
    import os
    import subprocess
    import sys
    import time

    from fastgen.export.cache import STALE_SECONDS

    cache, key = ExportCache(tmp_path), _fake_key(model_dirs, (1, 8, 8))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, name = int(gone.stdout), cache.folder(key).name
    old = time.time() - STALE_SECONDS - 60
    folders = {
        "dead and stale": (dead_pid, old),
        "dead but recent": (dead_pid, time.time()),  # maybe a live build on another machine
        "alive and stale": (os.getpid(), old),
    }
    for label, (pid, mtime) in folders.items():
        path = cache.folder(key).parent / f".tmp-{name}.{pid}.{label.replace(' ', '')}"
        path.mkdir(parents=True)
        (path / "model.plan").write_bytes(b"\x00" * 10)
        os.utime(path, (mtime, mtime))
    cache.build(key, lambda folder: (folder / "model.plan").write_bytes(b"\x01") and None)
    left = sorted(p.name.rsplit(".", 1)[1] for p in cache.folder(key).parent.glob(".tmp-*"))
    assert left == ["aliveandstale", "deadbutrecent"]
    assert cache.lookup(key) == cache.folder(key)


def test_find_engine_reuses_any_profile_that_covers_the_batch(model_dirs, tmp_path):
    cache = ExportCache(tmp_path)
    wide = cache.build(_fake_key(model_dirs, (1, 32, 64)), lambda f: None)
    exact = cache.build(_fake_key(model_dirs, (1, 8, 8)), lambda f: None)
    wanted = _fake_key(model_dirs, (1, 16, 16))
    assert cache.lookup(wanted) is None
    assert cache.find_engine(wanted, 16) == wide
    assert cache.find_engine(wanted, 8) == exact  # the optimum closest to the batch size wins
    assert cache.find_engine(wanted, 128) is None
    other_capability = replace(wanted, compute_capability="sm_80")
    assert cache.find_engine(other_capability, 16) is None


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "timing.cache"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents" and [p.name for p in tmp_path.iterdir()] == ["timing.cache"]


def _tensorrt_installed() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_tensorrt_installed(), reason="tensorrt is installed; its absence cannot be shown")
def test_missing_tensorrt_names_the_extra(model_dirs, tmp_path, capsys):
    with pytest.raises(MissingDependency, match=r"pip install 'fastgen\[tensorrt\]'"):
        DiffusionClassifier.from_pretrained(
            model_dirs["dit"], classes=["class0", "class1"], device="cpu", backend="tensorrt", export_dir=tmp_path
        )
    args = [
        "export",
        "--model",
        str(model_dirs["dit"]),
        "--format",
        "tensorrt",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    assert main(args) == 2
    assert "fastgen[tensorrt]" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing is exported before the missing dependency is found"


@pytest.mark.skipif(
    not (_tensorrt_installed() and torch.cuda.is_available()),
    reason="TensorRT engines need the tensorrt package and a CUDA GPU; neither is here",
)
def test_tensorrt_engine_matches_eager_and_is_cached(model_dirs, tmp_path):
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 16, 16, generator=g) for _ in range(3)]
    options = {
        "classes": ["class0", "class1", "class2"],
        "device": "cuda",
        "policy": "exhaustive",
        "policy_options": {"n_samples": 5},
    }
    eager = DiffusionClassifier.from_pretrained(model_dirs["dit"], **options).classify(images)
    trt = DiffusionClassifier.from_pretrained(
        model_dirs["dit"], backend="tensorrt", export_dir=tmp_path, batch_size=8, **options
    )
    for got, want in zip(trt.classify(images), eager):
        assert got.prediction == want.prediction and abs(got.errors - want.errors).max() < 1e-3
    engines = list(tmp_path.rglob("model.plan"))
    DiffusionClassifier.from_pretrained(
        model_dirs["dit"], backend="tensorrt", export_dir=tmp_path, batch_size=8, **options
    )
    assert list(tmp_path.rglob("model.plan")) == engines
