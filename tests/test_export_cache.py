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


def _flux_key(folder, *, model=None, **conditioning):
    adapter = load_adapter(folder, conditioning=conditioning)
    return onnx_key(adapter.denoiser, adapter_spec(adapter), model=str(model or folder), exporter="dynamo")


def _changed_fields(a, b) -> set[str]:
    return {name for name, value in vars(a).items() if getattr(b, name) != value}


def test_flux_settings_baked_into_the_graph_are_in_the_key(model_dirs, tmp_path):
    """Guidance, the latent size and num_train_timesteps are constants of the exported Flux graph:
    each one changes the key (and the guidance / schedule length change nothing else)."""
    import shutil

    folder = model_dirs["flux"]
    base = _flux_key(folder, guidance=1.0)
    assert base == _flux_key(folder, guidance=1.0)
    assert base.settings["guidance"] == "1.0" and base.opset is not None
    other_schedule = shutil.copytree(folder, tmp_path / "flux-500")
    config_path = other_schedule / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "num_train_timesteps": 500}))
    variants = {
        "guidance": _flux_key(folder, guidance=7.0),
        "num_train_timesteps": _flux_key(other_schedule, model=folder, guidance=1.0),
        "resolution": _flux_key(folder, guidance=1.0, resolution=[64, 32]),
        "text length": _flux_key(folder, guidance=1.0, max_sequence_length=8),
        "opset": replace(base, opset=base.opset - 1),
    }
    assert _changed_fields(base, variants["guidance"]) == {"settings"}
    assert _changed_fields(base, variants["num_train_timesteps"]) == {"settings"}
    assert "settings" in _changed_fields(base, variants["resolution"])
    assert _changed_fields(base, variants["text length"]) == {"io_spec"}
    digests = {name: key.digest() for name, key in variants.items()} | {"base": base.digest()}
    assert len(set(digests.values())) == len(digests), digests
    engine = engine_key(base, batch_sizes=(1, 4, 8), device="cpu")
    assert engine.settings == base.settings
    assert engine.digest() != engine_key(variants["guidance"], batch_sizes=(1, 4, 8), device="cpu").digest()


def _perturbed(value):
    """Another value of the same kind, or None for values this test does not vary."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return tuple(v + 2 for v in value)
    return None


@pytest.mark.parametrize("kind", ["flux", "sd3", "dit"])
def test_every_setting_the_denoiser_holds_is_in_the_key(model_dirs, kind):
    """Found by reading the wrapper's attributes, so a setting added later is covered too; one
    that cannot be keyed is refused by name instead of being left out."""
    from torch import nn

    adapter = load_adapter(model_dirs[kind])
    denoiser, spec = adapter.denoiser, adapter_spec(adapter)
    key = lambda: onnx_key(denoiser, spec, model=kind, exporter="dynamo").digest()
    base = key()
    settings = {name: value for name, value in vars(denoiser).items() if name not in vars(nn.Module())}
    varied = [name for name, value in settings.items() if _perturbed(value) is not None]
    assert set(varied) >= ({"latent_channels"} if kind == "dit" else {"num_train_timesteps"})
    for name in varied:
        original = getattr(denoiser, name)
        setattr(denoiser, name, _perturbed(original))
        assert key() != base, f"{kind} denoiser setting {name!r} is not in the export key"
        setattr(denoiser, name, original)
    assert key() == base
    denoiser.added_later = 0.25
    assert key() != base
    denoiser.added_later = lambda x: x
    with pytest.raises(TypeError, match="'added_later'"):
        key()


def test_flux_exported_for_one_guidance_is_not_reused_for_another(model_dirs, tmp_path, monkeypatch):
    """The guidance scale is traced into the Flux graph: an export for guidance 1 is not the one
    for guidance 7. An export made unverified is verified on its first verified use, once."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    from fastgen.export import pipeline

    verified = []
    real_verify = pipeline.verify_onnx
    monkeypatch.setattr(pipeline, "verify_onnx", lambda *a, **k: verified.append(a[0]) or real_verify(*a, **k))
    cache = ExportCache(tmp_path)

    def export(guidance, verify):
        adapter = load_adapter(model_dirs["flux"], conditioning={"guidance": guidance})
        spec = adapter_spec(adapter)
        return pipeline.ensure_onnx(adapter.denoiser, spec, model=adapter.name, cache=cache, verify=verify), adapter

    first, _ = export(1.0, verify=False)
    second, adapter = export(7.0, verify=True)
    assert first.built and second.built and first.path != second.path
    assert len(verified) == 1  # while it was built
    # the guidance-7 export matches torch at guidance 7 (a reused guidance-1 graph was 0.16 off)
    assert pipeline.verify_onnx(second.path, adapter.denoiser, adapter_spec(adapter)) <= 1e-4
    verified.clear()
    again, _ = export(1.0, verify=True)
    assert not again.built and again.path == first.path and verified == [first.path]
    assert json.loads((first.path.parent / "meta.json").read_text())["parity_max_rel_diff"] <= 1e-4
    export(1.0, verify=True)
    assert verified == [first.path], "a verified export is not verified again"


BROKEN_META = {
    "missing": None,
    "not json": b'{"key": {"model": ',
    "not utf-8": b"\xff\xfe\x00garbage",
    "a list": b"[1, 2]",
    "no key": b'{"built_s": 1.0}',
    "unknown key field": b'{"key": {"model": "m", "from_a_newer_version": 1}}',
}


@pytest.mark.parametrize("broken", list(BROKEN_META))
def test_a_broken_export_folder_is_a_miss_and_rebuilt(model_dirs, tmp_path, broken):
    cache, key = ExportCache(tmp_path / "cache"), _fake_key(model_dirs, (1, 8, 8))
    folder = cache.folder(key)
    folder.mkdir(parents=True)
    (folder / "model.plan").write_bytes(b"\x00" * 10)
    if BROKEN_META[broken] is not None:
        (folder / "meta.json").write_bytes(BROKEN_META[broken])
    assert cache.lookup(key) is None and cache.find_engine(key, 8) is None
    assert cache.build(key, lambda f: (f / "model.plan").write_bytes(b"engine") and None) == folder
    assert cache.lookup(key) == folder and (folder / "model.plan").read_bytes() == b"engine"
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_a_link_under_an_export_name_is_replaced_and_its_target_kept(model_dirs, tmp_path):
    """A symbolic link in the cache, pointing at a user's folder outside it, is not an export:
    the rebuild replaces the link and never deletes what it points to."""
    cache, key = ExportCache(tmp_path / "cache"), _fake_key(model_dirs)
    user_folder = tmp_path / "my-files"
    user_folder.mkdir()
    (user_folder / "model.onnx").write_bytes(b"mine")
    cache.folder(key).parent.mkdir(parents=True)
    cache.folder(key).symlink_to(user_folder, target_is_directory=True)
    built = cache.build(key, lambda f: (f / "model.onnx").write_bytes(b"graph") and None)
    assert not built.is_symlink() and cache.lookup(key) == built
    assert (built / "model.onnx").read_bytes() == b"graph"
    assert [p.name for p in user_folder.iterdir()] == ["model.onnx"]
    assert (user_folder / "model.onnx").read_bytes() == b"mine"


def test_an_engine_built_unverified_is_verified_before_a_verified_use(model_dirs, tmp_path, monkeypatch):
    """TensorRT's steps stood in for: an engine cached with verify=False is checked against torch
    on the next call that asks for verification, recorded once it passes, and refused (not
    served) while it fails."""
    from fastgen.export import pipeline

    adapter = load_adapter(model_dirs["dit"])
    spec, cache = adapter_spec(adapter), ExportCache(tmp_path)
    onnx = pipeline.ExportResult(tmp_path / "model.onnx", _fake_key(model_dirs), built=False)
    monkeypatch.setattr(pipeline, "import_tensorrt", lambda purpose: None)
    monkeypatch.setattr(pipeline, "engine_device", lambda denoiser: torch.device("cpu"))
    monkeypatch.setattr(pipeline, "engine_source", lambda *a, **k: onnx)
    monkeypatch.setattr(pipeline, "build_engine", lambda src, plan, spec, **k: plan.write_bytes(b"plan") and {})
    checks = []

    def verify_engine(plan, denoiser, spec, batch_sizes, *, cached=False):
        checks.append((plan, batch_sizes, cached))
        if len(checks) == 1:
            raise RuntimeError("engine differs from torch (stand-in)")
        return 0.002

    monkeypatch.setattr(pipeline, "verify_engine", verify_engine)
    common = {"model": str(model_dirs["dit"]), "cache": cache, "batch_sizes": (1, 4, 8)}
    built = pipeline.ensure_engine(adapter.denoiser, spec, verify=False, **common)
    assert built.built and checks == []
    with pytest.raises(RuntimeError, match="stand-in"):
        pipeline.ensure_engine(adapter.denoiser, spec, **common)
    assert "parity_max_rel_diff" not in json.loads((built.path.parent / "meta.json").read_text())
    found = pipeline.ensure_engine(adapter.denoiser, spec, **common)
    assert not found.built and found.path == built.path
    assert checks == [(built.path, (1, 4, 8), True)] * 2
    assert json.loads((built.path.parent / "meta.json").read_text())["parity_max_rel_diff"] == 0.002
    pipeline.ensure_engine(adapter.denoiser, spec, **common)
    assert len(checks) == 2, "a verified engine is not verified again"
