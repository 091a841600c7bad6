"""The Stable Diffusion folder layout: `model_index.json` plus one subfolder per component.

Every model kind fastgen serves is read from (and, in tests and training, written to) this one
layout, so a tiny model built from config takes the same `from_pretrained` path as a real
checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_INDEX = "model_index.json"
# Optional fastgen defaults next to the weights: class names, prompt templates, policy.
FASTGEN_DEFAULTS = "fastgen.json"


def _library_of(component: Any) -> str:
    module = type(component).__module__.split(".")[0]
    return "transformers" if module == "transformers" else "diffusers"


def save_model_folder(
    folder: str | Path,
    components: dict[str, Any],
    *,
    pipeline_class: str,
    extra: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> Path:
    """Save each component with its own `save_pretrained` and write `model_index.json`.

    `extra` holds non-component entries of the index (for example DiT's `id2label`);
    `defaults` is written to `fastgen.json` (class names, templates, policy) when given.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": pipeline_class}
    for name, component in components.items():
        component.save_pretrained(folder / name)
        index[name] = [_library_of(component), type(component).__name__]
    index.update(extra or {})
    (folder / MODEL_INDEX).write_text(json.dumps(index, indent=2), encoding="utf-8")
    if defaults is not None:
        (folder / FASTGEN_DEFAULTS).write_text(json.dumps(defaults, indent=2), encoding="utf-8")
    return folder


def read_model_index(folder: Path) -> dict[str, Any]:
    path = folder / MODEL_INDEX
    if not path.is_file():
        raise FileNotFoundError(
            f"model folder {folder} has no {MODEL_INDEX}; expected the diffusers layout "
            "(model_index.json plus unet/ or transformer/, scheduler/, and text_encoder/ + "
            "tokenizer/ or vae/ as the model needs)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def read_defaults(folder: Path) -> dict[str, Any]:
    """The model's own `fastgen.json` (classes, templates, policy, scoring); a file the policy
    names (a label tree, a noise profile) is resolved against the model folder."""
    path = folder / FASTGEN_DEFAULTS
    defaults = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    policy = defaults.get("policy")
    for key in ("tree", "noise_profile"):
        value = policy.get(key) if isinstance(policy, dict) else None
        if isinstance(value, str) and value:
            policy = defaults["policy"] = {**policy, key: str(folder / value)}
        elif isinstance(value, list):  # several noise profiles: the run uses the first fitted for it
            policy = defaults["policy"] = {**policy, key: [str(folder / v) for v in value]}
    return defaults
