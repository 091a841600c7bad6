"""Ink polarity: bright ink on a dark background, or dark ink on a bright one.

A model trained on one polarity reads the other as something else entirely: `builtin:digits`
learnt bright ink on black (as scikit-learn stores the digits), and dark-on-white digits (how most
people save one) score near chance. A model declares its polarity in its `fastgen.json`:

    "input": {"polarity": "bright-on-dark", "description": "..."}

and each image is matched to it. With `invert="auto"` (the default for a model that declares a
polarity) an image whose background has the other polarity is inverted (1 - x). The background is
the median brightness of the image's outermost ring of pixels, as the model sees the image (after
resizing and cropping): strokes may touch the border, but rarely cover half of it. On the 1,797
scikit-learn digits this rule is right for every image in both polarities (median border
brightness at most 0.03 of the range). `invert="always"` / `"never"` (or True / False;
`--invert` on the command line) overrides the rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INVERT_MODES = ("auto", "always", "never")


POLARITIES = ("bright-on-dark", "dark-on-bright")
_LUMA = (0.299, 0.587, 0.114)


def border_brightness(pixels: torch.Tensor) -> float:
    """Median brightness of the outermost ring of `pixels` [C, H, W] in [0, 1]."""
    if pixels.shape[0] == 3:
        gray = (pixels * torch.tensor(_LUMA, dtype=pixels.dtype).view(3, 1, 1)).sum(dim=0)
    else:
        gray = pixels.mean(dim=0)
    if min(gray.shape) <= 2:
        ring = gray.flatten()
    else:
        ring = torch.cat([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return float(ring.median())


def background_is_bright(pixels: torch.Tensor) -> bool:
    return border_brightness(pixels) > 0.5


@dataclass(frozen=True)
class PolarityRule:
    """When to invert an image for a model of a given polarity."""

    mode: str = "never"  # one of INVERT_MODES
    polarity: str | None = None  # the model's, when it declares one

    def needs_inverting(self, pixels: torch.Tensor) -> bool:
        if self.mode != "auto":
            return self.mode == "always"
        wants_bright_background = self.polarity == "dark-on-bright"
        return background_is_bright(pixels) != wants_bright_background

    def apply(self, pixels: torch.Tensor) -> torch.Tensor:
        return 1.0 - pixels if self.needs_inverting(pixels) else pixels

    def settings(self) -> dict[str, str | None]:
        return {"invert": self.mode, "polarity": self.polarity}


def declared_polarity(defaults: dict, model: str) -> str | None:
    """The polarity a model's `fastgen.json` declares under `input.polarity`, if any."""
    value = (defaults.get("input") or {}).get("polarity")
    if value is not None and value not in POLARITIES:
        raise ValueError(
            f"fastgen.json of model {model!r} declares input.polarity {value!r}; expected one of "
            f"{', '.join(POLARITIES)}"
        )
    return value


def polarity_rule(invert: bool | str | None, polarity: str | None, model: str = "") -> PolarityRule:
    """The rule for `invert` (None: `auto` when the model declares a polarity, else `never`)."""
    if invert is None:
        mode = "auto" if polarity is not None else "never"
    elif isinstance(invert, bool):
        mode = "always" if invert else "never"
    elif invert in INVERT_MODES:
        mode = invert
    else:
        raise ValueError(f"invert must be one of {INVERT_MODES}, True or False; got {invert!r}")
    if mode == "auto" and polarity is None:
        raise ValueError(
            f"invert='auto' needs the model to declare its polarity, and {model or 'this model'} "
            'declares none (fastgen.json: "input": {"polarity": "bright-on-dark"} or '
            "\"dark-on-bright\"); pass invert='always' or 'never' instead"
        )
    return PolarityRule(mode, polarity)
