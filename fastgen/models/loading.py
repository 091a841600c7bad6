"""Load model components with diffusers' and transformers' own `from_pretrained`.

A model is a hub id or a local folder in the Stable Diffusion layout. Each component is loaded
from its subfolder with the class named in `model_index.json`. Weights load from safetensors
only, unless the caller explicitly allows pickle checkpoints.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fastgen.models.layout import read_defaults, read_model_index


class ModelLoadError(ValueError):
    """The model folder or hub id does not hold what its kind needs."""


@contextlib.contextmanager
def hub_offline(enabled: bool) -> Iterator[None]:
    """Within the block, put huggingface_hub itself in offline mode when `enabled`.

    `local_files_only=True` is not enough on its own: the hub client still makes requests of its
    own (it fetches metadata while building request headers) unless its offline flag is set,
    and it reads HF_HUB_OFFLINE only once, at import.
    """
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    saved_flag, saved_env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def model_index(model: str | Path, *, local_files_only: bool) -> tuple[dict[str, Any], Path | None]:
    """The model's `model_index.json` and its local folder (None for a hub id)."""
    path = Path(model)
    if path.is_dir():
        return read_model_index(path), path
    if path.exists() or str(model).startswith((".", "/")):
        raise ModelLoadError(f"model {str(model)!r} is not a folder; pass a model folder or hub id")
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(str(model), local_files_only=local_files_only)
    except Exception as error:  # hub errors come in many types; all mean the same to the user
        raise ModelLoadError(
            f"cannot read model_index.json of {str(model)!r} ({error}); pass a local model "
            "folder, or a hub id with network access (or a populated cache)"
        ) from None
    return dict(index), None


def present(index: dict[str, Any], name: str) -> bool:
    """Whether `model_index.json` names a component; diffusers records an absent optional one
    (an SD3 checkpoint without T5, a pixel model without a VAE) as [null, null]."""
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) >= 2 and entry[1] is not None


def require_components(
    index: dict[str, Any], folder: Path | None, names: tuple[str, ...], kind: str, model: str
) -> None:
    for name in names:
        missing = not present(index, name) or (folder is not None and not (folder / name).is_dir())
        if missing:
            raise ModelLoadError(
                f"model {model!r} is missing the component '{name}/' that a {kind} model needs "
                f"(needs: {', '.join(n + '/' for n in names)}); check the folder is a complete "
                "diffusers model"
            )


def _innermost_import_error(error: BaseException) -> BaseException:
    """The deepest ImportError under `error`: diffusers and transformers import lazily and wrap
    the real failure (a missing module, a name another package shadows) in a RuntimeError."""
    found, seen = error, set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ImportError):
            found = current
        current = current.__cause__ or current.__context__
    return found


def _library_version(library: str) -> str:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def component_class(library: str, class_name: str, component: str) -> type:
    """The class `model_index.json` names for `component`, or a ModelLoadError that says what
    failed: an import that breaks (its module, file and error) or a class the library lacks."""
    try:
        return getattr(importlib.import_module(library), class_name)
    except AttributeError as error:
        cause = _innermost_import_error(error)
        if not isinstance(cause, ImportError):
            raise ModelLoadError(
                f"component '{component}' names class {library}.{class_name}, which {library} "
                f"{_library_version(library)} does not have"
            ) from None
    except (ImportError, RuntimeError) as error:
        cause = _innermost_import_error(error)
    where = []
    if isinstance(cause, ImportError):
        where = [f"module {cause.name!r}"] if cause.name else []
        where += [f"file {cause.path}"] if cause.path else []
    raise ModelLoadError(
        f"component '{component}' needs class {library}.{class_name}, and importing it failed"
        + (f" ({', '.join(where)})" if where else "")
        + f": {type(cause).__name__}: {cause}"
    ) from cause


def dtype_argument(library: str) -> str:
    """The name `from_pretrained` takes the dtype by: diffusers' `torch_dtype`; transformers'
    `dtype` from 4.56 on (where `torch_dtype` became a deprecated alias), `torch_dtype` before
    (older releases take an unknown `dtype` into the model's config, which then cannot be saved)."""
    if library != "transformers":
        return "torch_dtype"
    major_minor = tuple(int(part) for part in re.findall(r"\d+", _library_version("transformers"))[:2])
    return "dtype" if major_minor >= (4, 56) else "torch_dtype"


def load_component(
    model: str | Path,
    index: dict[str, Any],
    name: str,
    *,
    local_files_only: bool,
    allow_pickle: bool,
    dtype: torch.dtype | None = None,
) -> Any:
    library, class_name = index[name][:2]
    cls = component_class(library, class_name, name)
    kwargs: dict[str, Any] = {"subfolder": name, "local_files_only": local_files_only}
    is_weights = hasattr(cls, "save_pretrained") and hasattr(cls, "state_dict")
    if is_weights:
        # True: safetensors or nothing. None (allowed): safetensors first, else the pickle file;
        # False would refuse a component that does ship safetensors.
        kwargs["use_safetensors"] = None if allow_pickle else True
        if dtype is not None:
            kwargs[dtype_argument(library)] = dtype
        if library == "diffusers":
            kwargs["low_cpu_mem_usage"] = False
    try:
        component = cls.from_pretrained(str(model), **kwargs)
    except (OSError, ValueError) as error:
        hint = ""
        if is_weights and not allow_pickle:
            hint = (
                " Weights load from safetensors only; a pickle checkpoint (.bin/.ckpt) is "
                "refused unless you trust its source and pass allow_pickle=True (--allow-pickle "
                "on the command line)."
            )
        reason = str(error).rstrip(". ")
        raise ModelLoadError(f"cannot load component '{name}' of {str(model)!r}: {reason}.{hint}") from None
    return component


def folder_defaults(folder: Path | None) -> dict[str, Any]:
    return read_defaults(folder) if folder is not None else {}


def quiet_hub_libraries() -> None:
    """Progress bars of weight loading are noise inside a classifier's own progress bar."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
