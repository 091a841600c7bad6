"""Models that ship inside the package and load without any download.

`builtin:digits` is a small pixel-space, text-conditioned diffusion model trained on the
scikit-learn digits (8x8 grayscale); see `digits/TRAINING.md` and `train_digits.py`.
`builtin:numbers` is its 1,000-class sibling on handwritten three-digit numbers 000-999 (8x24,
three digits side by side); see `numbers/TRAINING.md`, `numbers_data.py` and
`training/train_numbers.py` at the repository root. `builtin:digits-flow` is a rectified-flow
transformer in the Stable Diffusion 3 layout on the same digits and split; see
`digits-flow/TRAINING.md` and `training/train_digits_flow.py`. `builtin:animals` is a pixel-space,
text-conditioned model of ten animals' silhouettes (Animal-Shape, 16x16); see `animals/TRAINING.md`,
`animals_data.py` and `training/train_animals.py`.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_DIR = Path(__file__).parent
BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS: dict[str, Path] = {
    "digits": BUILTIN_DIR / "digits",
    "numbers": BUILTIN_DIR / "numbers",
    "digits-flow": BUILTIN_DIR / "digits-flow",
    "animals": BUILTIN_DIR / "animals",
}


def resolve_builtin(name: str) -> Path:
    """Map `builtin:NAME` (or a bare `NAME`) to the folder of a shipped model."""
    key = name[len(BUILTIN_PREFIX) :] if name.startswith(BUILTIN_PREFIX) else name
    if key not in BUILTIN_MODELS:
        known = ", ".join(BUILTIN_PREFIX + k for k in sorted(BUILTIN_MODELS))
        raise ValueError(f"unknown builtin model {name!r}; known builtin models: {known}")
    return BUILTIN_MODELS[key]
