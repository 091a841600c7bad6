"""The settings a denoiser wrapper bakes into an exported graph, read off the wrapper itself.

An exported graph holds the wrapped model's weights (keyed by `weights_fingerprint`) and config
(`config_hash`), and also every value the wrapper's `forward` reads from `self`: Flux's guidance
scale and latent size, the flow models' `num_train_timesteps`, DiT's latent channel count. Those
are traced in as constants, so an export made with one value is wrong for another.

Rather than a list of such settings that a new one could be missing from, the key takes every
instance attribute of the wrapper (and of any submodule that is not a configured diffusers model,
whose config is hashed instead). A value that cannot be keyed (a function, say) raises, naming the
attribute, so a new setting is keyed or refused, never silently left out.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import types
from typing import Any

import torch
from torch import nn

# nn.Module's own bookkeeping (hooks, the parameter and buffer dicts, `training`): not settings.
# Submodules, parameters and buffers are keyed by the config hash and the weights fingerprint.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_MAX_DEPTH = 4  # plain objects nest a level or two (UNetSplit: a unet and a block index)
# Code has no value to key on: what it computes may change while its name stays.
_CODE = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial, type)


def denoiser_settings(denoiser: nn.Module) -> dict[str, Any]:
    """Every setting the wrapper (and its unconfigured submodules) holds, as plain JSON values:
    equal settings give an equal dict, and any change to one changes it."""
    names = {id(module): name or "<denoiser>" for name, module in denoiser.named_modules()}
    settings = _module_settings(denoiser, names)
    return json.loads(json.dumps(settings, sort_keys=True))  # tuples -> lists, as meta.json stores them


def _module_settings(module: nn.Module, names: dict[int, str], prefix: str = "") -> dict[str, Any]:
    settings = {
        prefix + name: _describe(value, names, prefix + name, 0)
        for name, value in sorted(vars(module).items())
        if name not in _MODULE_INTERNALS
    }
    for name, child in module.named_children():
        if getattr(child, "config", None) is None:  # a configured model is keyed by its config hash
            settings.update(_module_settings(child, names, f"{prefix}{name}."))
    return settings


def _describe(value: Any, names: dict[int, str], where: str, depth: int) -> Any:
    """`value` as JSON data that changes whenever the value does."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)  # exact, and NaN / inf stay distinct
    if isinstance(value, enum.Enum):
        return f"{type(value).__qualname__}.{value.name}"
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, torch.Tensor):
        return _tensor_fingerprint(value)
    if isinstance(value, nn.Module):
        if id(value) not in names:
            raise TypeError(
                f"denoiser attribute {where!r} is a module that is not registered: its weights are not keyed"
            )
        return f"<module {names[id(value)]}>"
    if depth >= _MAX_DEPTH:
        raise TypeError(f"denoiser attribute {where!r} nests too deep to be keyed")
    if isinstance(value, (tuple, list)):
        return [_describe(v, names, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _describe(v, names, f"{where}[{k!r}]", depth + 1) for k, v in value.items()}
    fields = _plain_fields(value)
    if fields is None:
        raise TypeError(
            f"denoiser attribute {where!r} of type {type(value).__name__} cannot be keyed; an export bakes it "
            "in, so hold it as plain values (numbers, strings, tuples, dataclasses) on the denoiser"
        )
    described = {k: _describe(v, names, f"{where}.{k}", depth + 1) for k, v in sorted(fields.items())}
    return {"type": type(value).__qualname__, **described}


def _plain_fields(value: Any) -> dict[str, Any] | None:
    """The fields of a dataclass or of a plain object; None for functions and the like."""
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, _CODE) or not hasattr(value, "__dict__"):
        return None
    return dict(vars(value))


@torch.no_grad()
def _tensor_fingerprint(value: torch.Tensor) -> dict[str, Any]:
    data = value.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
    return {"shape": list(value.shape), "dtype": str(value.dtype), "sha256": hashlib.sha256(data).hexdigest()[:16]}
