"""Cue-conflict images for `builtin:animals`: the shape of one animal with the texture of another.

    python -m training.make_animal_cue_conflict --out runs/animal-cue-conflict [--per-class 20]

Animal-Shape's silhouettes are bright on black and, but for the zebras, filled plain (nearly white);
only zebras carry texture: a mid-grey body with dark stripes. So the conflict this data allows is
between a silhouette's outline and a zebra's fill:

* **zebra texture** (`strength-S/zebra-texture/`): every held-out silhouette of the nine other
  animals (or the first `--per-class` of each), its inside filled with drawn zebra stripes. The fill is the zebra texture measured on the
  held-out zebras (their inside: mean grey 147, 24% of it dark) drawn as stripes: a grey of 170 with
  dark stripes of 70, one pixel in four (period 4 px at 28 px, like the zebras' own, whose
  brightness decorrelates within 4-5 px), at an orientation and phase drawn per image; strength S
  blends the silhouette's own fill (S = 0) into the stripes (S = 1). Names follow model-vs-human:
  `<shape><i>-zebra<i>.png` (i: the image's position in the held-out split), so `fastgen eval
  shape-bias` counts a `zebra` answer as a texture decision and the animal's own as a shape one.
* **plain fill** (`strength-S/plain-fill/`): every held-out zebra with its inside (the silhouette,
  stripes included: holes filled) blended towards plain white by S, as the other animals are filled.
  Named `zebra<i>-plain<i>.png`: "plain" is no class, so shape bias leaves these out; the report
  counts how often a zebra filled plain is still called a zebra.

The images are 28x28 uint8 PNGs, bright on black, like the originals; the model scales them to its
16x16. Seeded (`--seed`): the same command writes the same files. `manifest.json` lists every image
with its source index, class, strength and stripe parameters.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from fastgen.builtin.animals_data import CLASS_NAMES, load_heldout

ZEBRA = CLASS_NAMES.index("zebra")
STRIPE_LIGHT, STRIPE_DARK = 170.0, 70.0  # the zebras' measured inside: mean 147, a quarter of it dark
STRIPE_PERIOD, STRIPE_DARK_WIDTH = 4.0, 1.0  # px at 28 px
INSIDE = 40  # a pixel brighter than this is part of the silhouette


def stripes(shape: tuple[int, int], angle: float, phase: float) -> np.ndarray:
    """Zebra fill [H, W] in 0..255: light with a dark stripe of STRIPE_DARK_WIDTH every STRIPE_PERIOD."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    position = (cols * math.cos(angle) + rows * math.sin(angle) + phase) % STRIPE_PERIOD
    return np.where(position < STRIPE_DARK_WIDTH, STRIPE_DARK, STRIPE_LIGHT)


def zebra_texture(image: np.ndarray, strength: float, angle: float, phase: float) -> np.ndarray:
    """A silhouette whose inside is blended towards zebra stripes by `strength`; its outline (the
    anti-aliased edge) is kept: the fill is scaled by how much of each pixel the silhouette covers."""
    silhouette = image.astype(np.float64)
    coverage = np.clip(silhouette / max(float(silhouette.max()), 1.0), 0.0, 1.0)
    inside = silhouette > INSIDE
    fill = np.where(inside, (1.0 - strength) * silhouette + strength * stripes(image.shape, angle, phase), silhouette)
    out = np.where(inside, fill, silhouette * (1.0 - strength) + strength * coverage * STRIPE_LIGHT)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def plain_fill(image: np.ndarray, strength: float) -> np.ndarray:
    """A zebra whose inside (holes of dark stripes filled) is blended towards plain white by `strength`."""
    silhouette = image.astype(np.float64)
    inside = ndimage.binary_fill_holes(silhouette > INSIDE)
    out = np.where(inside, (1.0 - strength) * silhouette + strength * 255.0, silhouette)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a new folder")
    parser.add_argument("--strengths", default="0.25,0.5,0.75,1.0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--per-class", type=int, default=None,
        help="only the first N held-out images of each class (default: all 2,397)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} exists and is not empty: name a new folder")
    heldout = load_heldout()
    rng = np.random.default_rng(args.seed)
    angles = rng.uniform(0.0, math.pi, len(heldout))
    phases = rng.uniform(0.0, STRIPE_PERIOD, len(heldout))
    # Drawn for every held-out image first, so an image's stripes do not depend on --per-class.
    chosen = first_of_each_class(heldout.labels, args.per_class)
    manifest = []
    for strength in (float(s) for s in args.strengths.split(",")):
        root = args.out / f"strength-{strength:.2f}"
        for kind in ("zebra-texture", "plain-fill"):
            (root / kind).mkdir(parents=True, exist_ok=True)
        for i in chosen:
            image, label = heldout.images_source[i], heldout.labels[i]
            name = CLASS_NAMES[int(label)]
            if int(label) == ZEBRA:
                path = root / "plain-fill" / f"zebra{i}-plain{i}.png"
                Image.fromarray(plain_fill(image, strength)).save(path)
                entry = {"kind": "plain-fill"}
            else:
                path = root / "zebra-texture" / f"{name}{i}-zebra{i}.png"
                Image.fromarray(zebra_texture(image, strength, angles[i], phases[i])).save(path)
                entry = {
                    "kind": "zebra-texture",
                    "angle": round(float(angles[i]), 4),
                    "phase": round(float(phases[i]), 4),
                }
            manifest.append({
                "path": str(path.relative_to(args.out)), "heldout_index": i,
                "source_index": int(heldout.source_index[i]), "shape": name, "strength": strength, **entry,
            })  # fmt: skip
    (args.out / "manifest.json").write_text(
        json.dumps(
            {
                "command": "python -m training.make_animal_cue_conflict "
                + " ".join(sys.argv[1:] if argv is None else argv),
                "seed": args.seed,
                "per_class": args.per_class,
                "images": manifest,
            },
            indent=1,
        )
        + "\n"  # fmt: skip
    )
    print(f"{len(manifest)} images in {args.out}")


def first_of_each_class(labels: np.ndarray, per_class: int | None) -> list[int]:
    """Positions of the first `per_class` images of each class, in split order (None: all)."""
    if per_class is None:
        return list(range(len(labels)))
    return sorted(i for c in np.unique(labels) for i in np.flatnonzero(labels == c)[:per_class].tolist())


if __name__ == "__main__":
    main()
