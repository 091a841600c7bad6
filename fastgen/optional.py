"""Lazy imports of optional dependencies, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any


class MissingDependency(ModuleNotFoundError):
    """An optional dependency (onnx, onnxruntime, tensorrt, xformers ...) is not installed."""


def require(module: str, *, extra: str, purpose: str) -> Any:
    """Import `module`, or raise `MissingDependency` naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        install = f"pip install 'fastgen[{extra}]'" if extra else f"pip install {module}"
        raise MissingDependency(
            f"{purpose} needs the '{module}' package, which is not installed ({error}); install it with: {install}"
        ) from None


def installed_version(package: str) -> str | None:
    """The installed distribution's version, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
