"""Where exported ONNX files and TensorRT engines live, and what they are keyed on.

An export is only valid for the exact thing it was built from, so its key holds everything it
is tied to: the model name, a hash of its config, a fingerprint of its weights, the settings the
denoiser wrapper bakes into the graph (`fastgen.export.settings`: Flux's guidance, ...), the
dtype, the I/O spec, the exporter and opset, the library versions, and for engines the shape
profile and the GPU's compute capability. Each export is a folder
`<root>/<model>/<format>-<dtype>-...-<digest>/` with `meta.json` (the full key) next to the files;
a folder whose meta.json is missing or unreadable is a miss, replaced by the next build.

Builds write into a temporary sibling folder and rename it into place only once complete, so a
crash or a kill mid-build leaves a `.tmp-*` folder that is never loaded, never a half engine
under the final name. The next build in the same model folder removes such leftovers once their
process is gone and they have not changed for `STALE_SECONDS`; both, because a cache on a
shared disk may hold the folder of a live build on another machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastgen.optional import installed_version

log = logging.getLogger(__name__)

CACHE_ENV = "FASTGEN_CACHE"
META = "meta.json"
TMP_PREFIX = ".tmp-"
STALE_SECONDS = 6 * 3600


def default_cache_dir() -> Path:
    """$FASTGEN_CACHE, else $XDG_CACHE_HOME/fastgen/exports, else ~/.cache/fastgen/exports."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastgen" / "exports"


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _wrapped_model(denoiser: nn.Module) -> nn.Module:
    for name in ("unet", "transformer"):
        if isinstance(getattr(denoiser, name, None), nn.Module):
            return getattr(denoiser, name)
    return denoiser


def config_hash(denoiser: nn.Module) -> str:
    """Hash of the wrapped diffusers model's class and config; the wrapper's own settings are
    keyed apart (`ExportKey.settings`), in full."""
    model = _wrapped_model(denoiser)
    config = dict(getattr(model, "config", {}))
    config = {k: v for k, v in config.items() if not k.startswith("_")}  # drops _name_or_path etc.
    return _sha([type(denoiser).__name__, type(model).__name__, config])[:16]


@torch.no_grad()
def weights_fingerprint(denoiser: nn.Module) -> str:
    """A cheap content fingerprint: per tensor its name, shape, dtype, sum and sum of squares.

    Two checkpoints with one config (a fine-tune, or fresh random weights) get different keys;
    it reads every weight once on its own device and syncs once.
    """
    names, shapes, stats = [], [], []
    for name, tensor in list(denoiser.named_parameters()) + list(denoiser.named_buffers()):
        names.append(name)
        shapes.append([list(tensor.shape), str(tensor.dtype)])
        value = tensor.detach().double()
        stats.append(torch.stack([value.sum(), value.square().sum()]))
    sums = torch.stack(stats).cpu().tolist() if stats else []
    return _sha([names, shapes, [[f"{a:.12e}", f"{b:.12e}"] for a, b in sums]])[:16]


def library_versions(*packages: str) -> dict[str, str]:
    return {p: installed_version(p) or "none" for p in ("fastgen", "torch", "diffusers", *packages)}


def compute_capability(device: torch.device | str) -> str:
    """`sm_90` for an H100 and so on; TensorRT engines only run on the capability they were built for."""
    device = torch.device(device)
    if device.type != "cuda":
        return "none"
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


@dataclass(frozen=True)
class ExportKey:
    """Everything an exported file is tied to; two exports share a folder only if all agree."""

    model: str
    format: str  # "onnx" or "tensorrt"
    family: str
    config_hash: str
    weights: str
    dtype: str
    io_spec: str  # hash of the I/O spec
    exporter: str
    versions: dict[str, str] = field(default_factory=dict)
    batch_sizes: tuple[int, int, int] | None = None  # the engine's (min, opt, max) profile
    compute_capability: str = "none"
    # What the wrapper bakes into the graph (`fastgen.export.settings`), as JSON data.
    settings: dict[str, Any] = field(default_factory=dict)
    opset: int | None = None

    def digest(self) -> str:
        return _sha(asdict(self))[:16]

    @property
    def folder_name(self) -> str:
        profile = "" if self.batch_sizes is None else "-b" + "_".join(map(str, self.batch_sizes))
        cc = "" if self.compute_capability == "none" else f"-{self.compute_capability}"
        return f"{self.format}-{self.dtype}{profile}{cc}-{self.digest()}"

    @property
    def model_slug(self) -> str:
        name = Path(self.model).name if Path(self.model).is_dir() else self.model
        slug = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-.")[-60:] or "model"
        return f"{slug}-{self.config_hash[:8]}"

    def without_profile(self) -> ExportKey:
        return replace(self, batch_sizes=None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportKey:
        data = dict(data)
        if data.get("batch_sizes") is not None:
            data["batch_sizes"] = tuple(data["batch_sizes"])
        return cls(**data)

    @classmethod
    def parse(cls, data: Any) -> ExportKey | None:
        """The key a meta.json holds, or None when it holds none this version can read
        (hand-edited, truncated, or written by a version with other fields)."""
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError):
            return None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ExportCache:
    """A folder of exports keyed by `ExportKey`; see the module docstring."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def folder(self, key: ExportKey) -> Path:
        return self.root / key.model_slug / key.folder_name

    def lookup(self, key: ExportKey) -> Path | None:
        """The folder of a complete export with exactly this key, or None."""
        folder = self.folder(key)
        return folder if self.key_of(folder) == key else None

    def key_of(self, folder: Path) -> ExportKey | None:
        """The key of the complete export in `folder`; None for anything else (no folder, no
        meta.json, or one that cannot be read or parsed)."""
        meta = self.meta(folder)
        return None if meta is None else ExportKey.parse(meta.get("key"))

    @staticmethod
    def meta(folder: Path) -> dict[str, Any] | None:
        """The meta.json of `folder` as a dict, or None when it is missing or unreadable."""
        meta = _read_meta(folder)
        return meta if isinstance(meta, dict) else None

    def record(self, folder: Path, **facts: Any) -> None:
        """Add `facts` to the meta.json of a published export (atomically: readers see the old
        meta or the new one)."""
        meta = {**(self.meta(folder) or {}), **facts}
        atomic_write_bytes(folder / META, json.dumps(meta, indent=2, default=str).encode())

    def find_engine(self, key: ExportKey, batch_size: int) -> Path | None:
        """A complete export equal to `key` but for its profile, whose profile covers
        `batch_size`; one whose optimum is `batch_size` is preferred."""
        wanted = key.without_profile()
        best: tuple[int, Path] | None = None
        model_dir = self.root / key.model_slug
        for folder in sorted(model_dir.glob(f"{key.format}-*")) if model_dir.is_dir() else []:
            found = self.key_of(folder)
            if found is None:
                continue
            low, opt, high = found.batch_sizes or (0, 0, 0)
            if found.without_profile() == wanted and low <= batch_size <= high:
                rank = abs(opt - batch_size)
                if best is None or rank < best[0]:
                    best = (rank, folder)
        return None if best is None else best[1]

    def build(self, key: ExportKey, builder: Callable[[Path], dict[str, Any] | None]) -> Path:
        """Run `builder(tmp_folder)`, then publish the folder under the key's name atomically.

        `builder` writes its files into the folder it is given and may return extra facts for
        `meta.json`. On any error the temporary folder is removed and nothing is published.
        """
        final = self.folder(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_builds(final.parent)
        tmp = final.parent / f"{TMP_PREFIX}{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            started = time.time()
            facts = builder(tmp) or {}
            meta = {"key": asdict(key), "built_s": round(time.time() - started, 3), **facts}
            (tmp / META).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
            self._publish(tmp, final, key)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _publish(self, tmp: Path, final: Path, key: ExportKey) -> None:
        """Rename `tmp` to `final`. A concurrent build that published first wins; a broken
        export under the final name (its meta.json missing or unreadable, so never loaded) is
        replaced: left there, it would block every rebuild."""
        for attempt in range(2):
            try:
                os.rename(tmp, final)
                return
            except OSError:
                if self.lookup(key) is not None:
                    log.info("another process published %s first; keeping its copy", final)
                    return
                if attempt or not (final.exists() or final.is_symlink()):
                    raise
                log.warning("replacing %s: its %s is missing or unreadable", final, META)
                _discard(final)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_builds(folder: Path, *, now: float | None = None) -> list[Path]:
    """Remove `.tmp-*` build folders in `folder` left by processes that are gone, once they
    have been untouched for STALE_SECONDS; returns what was removed."""
    now = time.time() if now is None else now
    removed = []
    for tmp in folder.glob(f"{TMP_PREFIX}*"):
        parts = tmp.name.rsplit(".", 2)  # .tmp-<name>.<pid>.<random>
        if len(parts) != 3 or not parts[1].isdigit() or not tmp.is_dir():
            continue
        try:
            idle = now - tmp.stat().st_mtime
        except OSError:
            continue
        if idle >= STALE_SECONDS and not _process_alive(int(parts[1])):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
            log.info("removed %s, a build left by a process that is gone", tmp)
    return removed


def _discard(path: Path) -> None:
    """Remove a broken export: first renamed aside (so the final name is free at once, and a
    crash mid-removal leaves a `.tmp-*` leftover, cleaned up as such), then deleted. A symbolic
    link is removed as a link: whatever it points to, outside the cache perhaps, is left alone."""
    aside = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    os.rename(path, aside)
    if aside.is_symlink() or not aside.is_dir():
        aside.unlink()
    else:
        shutil.rmtree(aside, ignore_errors=True)


def _read_meta(folder: Path) -> Any:
    try:
        return json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
