"""Save a CLIP text encoder so that every transformers release fastgen allows can load it.

transformers 5 writes a `CLIPTextModel`'s weights without the `text_model.` prefix of its module
names and maps them back when it loads them; transformers 4 expects the prefix and, without it,
initialises the whole encoder at random (it only warns). Weights stored with the prefix load the
same in both. `prefix_text_model(folder)` rewrites a saved `text_encoder*/model.safetensors` so,
tensor for tensor; the training scripts call it after saving, and

    python -m training.portable_weights fastgen/builtin/digits fastgen/builtin/numbers

rewrites models already saved.
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

PREFIX = "text_model."
OUTSIDE_PREFIX = ("text_projection.",)  # a CLIPTextModelWithProjection's own head sits beside it


def prefix_text_model(model_folder: Path) -> list[Path]:
    """Add the prefix to every text encoder's weights in `model_folder` that lack it; the files
    rewritten."""
    rewritten = []
    for weights in sorted(Path(model_folder).glob("text_encoder*/model.safetensors")):
        with safe_open(weights, "pt") as handle:
            keys = list(handle.keys())
            if all(k.startswith(PREFIX) or k.startswith(OUTSIDE_PREFIX) for k in keys):
                continue
            metadata = handle.metadata() or {"format": "pt"}
            tensors = {
                (k if k.startswith(PREFIX) or k.startswith(OUTSIDE_PREFIX) else PREFIX + k): handle.get_tensor(k)
                for k in keys
            }
        save_file(tensors, str(weights), metadata=metadata)
        rewritten.append(weights)
    return rewritten


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        for path in prefix_text_model(Path(folder)):
            print(f"rewrote {path}")
