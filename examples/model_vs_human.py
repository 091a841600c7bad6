"""A diffusion model as a model-vs-human model: 16 category prompts -> (N, 1000) ImageNet logits.

    python examples/model_vs_human.py --model stabilityai/stable-diffusion-2-base --dtype fp16 \
        --images path/to/cue-conflict            # files named <shape><n>-<texture><n>.png

Without --model, a tiny random-weight model is built in a temporary folder (the plumbing runs,
the decisions are chance); without --images, a few synthetic cue-conflict-named images are used.
The images go through model-vs-human's preprocessing (224 px, ImageNet normalisation), then
`forward_batch` and `softmax` exactly as model-vs-human calls them. One JSON line per image and
a summary line (accuracy against the shape label, shape bias) are printed.

To evaluate inside model-vs-human, register a function returning the wrapper in its PyTorch
model zoo, for example:

    wrapper = ModelVsHumanWrapper(model_vs_human_classifier("stabilityai/stable-diffusion-2-base",
                                                            dtype="fp16", device="cuda"))
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from fastgen.api.module import IMAGENET_MEAN, IMAGENET_STD
from fastgen.eval.metrics import accuracy, cue_conflict_scores, parse_cue_conflict
from fastgen.eval.model_vs_human import CATEGORIES_16, ModelVsHumanWrapper, model_vs_human_classifier
from fastgen.inputs.images import find_images, load_pixels


def synthetic_cue_conflict_images(folder: Path, n: int = 4) -> list[Path]:
    """Seeded noise images with cue-conflict names, so the example runs with no data."""
    g = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        shape, texture = CATEGORIES_16[i % 16], CATEGORIES_16[(i + 5) % 16]
        pixels = (torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
        path = folder / f"{shape}{i + 1}-{texture}{i + 1}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def imagenet_batch(paths: list[Path]) -> torch.Tensor:
    """model-vs-human's input: 224 x 224 center crops, normalised with ImageNet mean/std."""
    pixels = torch.stack([load_pixels(p, size=224, channels=3) for p in paths])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def tiny_model(folder: Path) -> Path:
    from fastgen.testing import make_pixel_text

    return make_pixel_text(folder / "tiny-pixel-text", seed=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="hub id or folder (default: a tiny random model)")
    parser.add_argument("--images", help="folder of cue-conflict images (default: synthetic ones)")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--n-samples", type=int, default=8, help="shared samples per category (exhaustive)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward_batch call")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or tiny_model(Path(scratch))
        paths = find_images([args.images]) if args.images else synthetic_cue_conflict_images(Path(scratch) / "images")
        clf = model_vs_human_classifier(
            model, dtype=args.dtype, device=args.device, policy="exhaustive",
            policy_options={"n_samples": args.n_samples},
        )  # fmt: skip
        wrapper = ModelVsHumanWrapper(clf)
        decisions: list[str] = []
        for start in range(0, len(paths), args.batch_size):
            chunk = paths[start : start + args.batch_size]
            logits = wrapper.forward_batch(imagenet_batch(chunk))  # (N, 1000), as model-vs-human calls it
            probabilities = wrapper.softmax(logits)
            for path, decision, row in zip(chunk, wrapper.decisions(logits), probabilities):
                decisions.append(decision)
                print(json.dumps({"image": path.name, "decision": decision, "top_probability": float(row.max())}))
        shapes = [parse_cue_conflict(p)[0] for p in paths]
        scores = cue_conflict_scores(decisions, paths)
        bias = None if math.isnan(scores.shape_bias) else scores.shape_bias  # NaN: no cue matched
        summary = {"images": len(paths), "shape_accuracy": accuracy(decisions, shapes), "shape_bias": bias}
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
