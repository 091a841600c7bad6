"""Train `builtin:numbers`: a text-conditioned pixel-space diffusion model on handwritten
three-digit numbers 000-999 (8x24 grayscale, three scikit-learn digits side by side).

A `diffusers.UNet2DConditionModel` on 1 x 8 x 24 pixels, conditioned through cross-attention on
a `transformers.CLIPTextModel` reading the real CLIP BPE tokens of
"a handwritten number four two seven" (one token per digit word). Both are trained from scratch
with the epsilon objective on numbers composed on the fly from the TRAINING split of the digits
only (`fastgen.builtin.numbers_data.training_numbers`). Some prompts name fewer digits: the
unknown trailing digits become the word `any` ("four any any", "four two any"), so the model
also answers the parent prompts of the label tree in `label_tree.json`.

    python training/train_numbers.py --out fastgen/builtin/numbers --seed 0 --threads 1

trains (the settings of the shipped model are the defaults), saves the folder, then measures
held-out accuracy through the engine (`fastgen.DiffusionClassifier`, exhaustive policy) and
writes `TRAINING.md` / `training.json`. `--report-only` re-measures a saved folder;
`--check N` prints a quick position-wise check (own scorer, pilots only) instead.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastgen.builtin import numbers_data as nd
from training.train_digits import (
    LossLog,
    OptimizerConfig,
    build_models,
    build_tokenizer,
    cpu_name,
    folder_size,
    load_folder,
    lr_at,
    optimizer_and_emas,
    optimizer_step,
    save,
    tokenize,
)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class NumbersConfig(OptimizerConfig):
    steps: int = 4500
    batch_size: int = 64
    # Prompts: full number with p_full, units masked ("four two any") with p_mask1, tens and
    # units masked ("four any any") otherwise.
    p_full: float = 0.6
    p_mask1: float = 0.2
    # Augmentation: probability of shifting each digit by one pixel left or right inside its
    # 8-pixel cell (the column that leaves is dropped, the new one is background).
    shift_prob: float = 0.3
    # Model sizes.
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_intermediate: int = 128
    max_length: int = 8
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 8
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    save_dtype: str = "float16"
    split_seed: int = nd.SPLIT_SEED


# ----------------------------------------------------------------------------- prompts


class PromptIds:
    """Token ids of "a handwritten number w1 w2 w3" built by indexing, checked against the
    tokenizer: each digit word and `any` is one CLIP token, and the prompt fills max_length."""

    def __init__(self, tokenizer):
        words = list(nd.DIGIT_WORDS) + [nd.ANY]
        word_ids = []
        for word in words:
            ids = tokenizer(word).input_ids
            if len(ids) != 3:
                raise ValueError(f"{word!r} is not a single CLIP token: {ids}")
            word_ids.append(ids[1])
        self.word_ids = torch.tensor(word_ids)  # index 10 = "any"
        probe = tokenize(tokenizer, [nd.TEMPLATE.format("zero zero zero")])[0]
        self.base = probe.clone()
        self.slots = [int(i) for i in torch.nonzero(probe == self.word_ids[0]).flatten()]
        if len(self.slots) != nd.N_DIGITS:
            raise ValueError(f"the prompt does not fit max_length {tokenizer.model_max_length}: {probe}")
        examples = [(4, 2, 7), (4, 2, 10), (4, 10, 10), (0, 0, 9)]
        for digits in examples:
            name = " ".join(words[d] for d in digits)
            expected = tokenize(tokenizer, [nd.TEMPLATE.format(name)])[0]
            if not torch.equal(self.ids(torch.tensor([digits]))[0], expected):
                raise ValueError(f"token ids built for {name!r} differ from the tokenizer's")

    def ids(self, words: torch.Tensor) -> torch.Tensor:
        """[n, 3] word indices (0-9 digits, 10 = any) -> token ids [n, max_length]."""
        out = self.base.repeat(words.shape[0], 1)
        out[:, self.slots] = self.word_ids[words]
        return out


def masked_words(digits: np.ndarray, cfg: NumbersConfig, rng: np.random.Generator) -> np.ndarray:
    """Digits [n, 3] -> word indices with trailing positions replaced by `any` (10)."""
    words = digits.copy()
    r = rng.random(len(words))
    mask1 = (r >= cfg.p_full) & (r < cfg.p_full + cfg.p_mask1)
    mask2 = r >= cfg.p_full + cfg.p_mask1
    words[mask1 | mask2, 2] = 10
    words[mask2, 1] = 10
    return words


# ----------------------------------------------------------------------------- training


def jitter_digits(parts: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 [n, 3, 8, 8] digit cells; each shifted one column left or right with `prob`."""
    if prob <= 0:
        return parts
    n = parts.shape[0]
    shift = rng.integers(0, 2, size=(n, 3)) * 2 - 1
    shift[rng.random((n, 3)) >= prob] = 0
    out = parts.copy()
    left, right = shift == -1, shift == 1
    out[left] = 0
    out[left, :, :-1] = parts[left, :, 1:]
    out[right] = 0
    out[right, :, 1:] = parts[right, :, :-1]
    return out


def training_batch(pool: nd.DigitPool, cfg: NumbersConfig, rng: np.random.Generator):
    """(x0 [B, 1, 8, 24] in [-1, 1], word indices [B, 3]) from the training pool only."""
    labels = rng.integers(0, nd.N_CLASSES, size=cfg.batch_size)
    picks = pool.draw(labels, rng)
    parts = jitter_digits(pool.images[picks], cfg.shift_prob, rng)  # [B, 3, 8, 8]
    images = parts.transpose(0, 2, 1, 3).reshape(len(labels), nd.HEIGHT, nd.WIDTH)
    x0 = torch.from_numpy(images.astype(np.float32) / 255.0 * 2 - 1).unsqueeze(1)
    return x0, torch.from_numpy(masked_words(nd.digits_of(labels), cfg, rng))


def train(
    cfg: NumbersConfig, workdir: Path, log_every: int = 100, snapshot_every: int = 0, snapshot_dir: Path | None = None
) -> dict[str, Any]:
    """Train from `cfg.seed`; returns the EMA models plus a loss log. With `snapshot_every`,
    the EMA models are also saved to `snapshot_dir` every that many steps (for checks while
    training runs; snapshots do not change the training)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + 1)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    tokenizer = build_tokenizer(workdir / "tokenizer", cfg.max_length)
    prompt_ids = PromptIds(tokenizer)
    unet, text_encoder, scheduler = build_models(cfg, tokenizer, sample_size=(nd.HEIGHT, nd.WIDTH))
    unet.train()
    text_encoder.train()
    pool = nd.DigitPool("train", cfg.split_seed)
    abar = scheduler.alphas_cumprod.float()

    opt, ema_unet, ema_text = optimizer_and_emas(unet, text_encoder, cfg)
    all_params = list(unet.parameters()) + list(text_encoder.parameters())

    progress = LossLog(cfg.steps, log_every)
    for step in range(cfg.steps):
        x0, words = training_batch(pool, cfg, rng)
        t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        cond = text_encoder(prompt_ids.ids(words)).last_hidden_state
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred, eps)
        value = optimizer_step(opt, loss, all_params, step, cfg, [(ema_unet, unet), (ema_text, text_encoder)])
        progress.add(step, value, lr_at(step, cfg))
        if snapshot_every and snapshot_dir is not None and (step + 1) % snapshot_every == 0:
            snap = {
                "unet": ema_unet.shadow,
                "text_encoder": ema_text.shadow,
                "tokenizer": tokenizer,
                "scheduler": scheduler,
            }
            save(snap, snapshot_dir, cfg, defaults=_defaults())
            print(f"snapshot at step {step + 1} -> {snapshot_dir}", flush=True)
    return {
        "unet": ema_unet.shadow,
        "text_encoder": ema_text.shadow,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "log": progress.log,
        "train_seconds": progress.seconds,
    }


# ----------------------------------------------------------------------------- label tree


def label_tree() -> dict[str, Any]:
    """Roots "d any any" -> "d e any" -> leaves "d e f" (class names), with prompts."""
    nodes: dict[str, Any] = {}
    roots = []
    for h in range(10):
        name = nd.parent_name((h,))
        roots.append(name)
        children = []
        for t in range(10):
            child = nd.parent_name((h, t))
            children.append(child)
            nodes[child] = {
                "prompt": nd.TEMPLATE.format(child),
                "children": [nd.parent_name((h, t, u)) for u in range(10)],
            }
        nodes[name] = {"prompt": nd.TEMPLATE.format(name), "children": children}
    return {
        "format": "fastgen-label-tree-1",
        "description": (
            "Inner nodes with their prompts; each child is an inner node or a leaf. Leaves are "
            "class names of fastgen.json and take the model's template. Numbers: hundreds, "
            "then tens, then units; unknown digits are the word 'any'."
        ),
        "roots": roots,
        "nodes": nodes,
    }


def write_label_tree(out: Path) -> None:
    (out / "label_tree.json").write_text(json.dumps(label_tree(), indent=1) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- checks


@torch.no_grad()
def quick_check(folder: Path, n_images: int = 100, n_samples: int = 8) -> dict[str, float]:
    """Pilot check with an own scorer (not the report): per position, the 10 prompts that
    change only that digit of the true number, shared noise on an even timestep grid; also the
    parent prompts ("d any any" over 10 hundreds, "d e any" over 10 tens given the hundreds)."""
    models = load_folder(folder)
    unet, text_encoder, tokenizer, scheduler = (models[k] for k in ("unet", "text_encoder", "tokenizer", "scheduler"))
    images, labels = nd.heldout_numbers(n_images)
    x0 = torch.from_numpy(images.astype(np.float32) / 255.0 * 2 - 1).unsqueeze(1)
    digits = nd.digits_of(labels)
    ts = ((torch.arange(n_samples) + 0.5) * 1000 / n_samples).long()
    abar = scheduler.alphas_cumprod.float()[ts]
    eps = torch.randn((n_samples, 1, nd.HEIGHT, nd.WIDTH), generator=torch.Generator().manual_seed(0))
    out: dict[str, float] = {}
    variants = {
        "hundreds": lambda d, v: (v, d[1], d[2]),
        "tens": lambda d, v: (d[0], v, d[2]),
        "units": lambda d, v: (d[0], d[1], v),
        "parent1": lambda d, v: (v, 10, 10),
        "parent2": lambda d, v: (d[0], v, 10),
    }
    words = list(nd.DIGIT_WORDS) + [nd.ANY]
    correct = {k: 0 for k in variants}
    full = 0
    for i in range(n_images):
        d = digits[i]
        prompts, keys = [], []
        for key, f in variants.items():
            for v in range(10):
                prompts.append(nd.TEMPLATE.format(" ".join(words[w] for w in f(d, v))))
                keys.append(key)
        cond = text_encoder(tokenize(tokenizer, prompts)).last_hidden_state
        xt = abar.sqrt().view(-1, 1, 1, 1) * x0[i] + (1 - abar).sqrt().view(-1, 1, 1, 1) * eps  # [S, 1, H, W]
        c = len(prompts)
        pred = unet(
            xt.repeat_interleave(c, 0), ts.repeat_interleave(c), encoder_hidden_states=cond.repeat(n_samples, 1, 1)
        ).sample
        err = (pred - eps.repeat_interleave(c, 0)).pow(2).flatten(1).mean(1).view(n_samples, c).mean(0)
        ok = True
        for j, key in enumerate(variants):
            best = int(err[j * 10 : (j + 1) * 10].argmin())
            pos = {"hundreds": 0, "tens": 1, "units": 2, "parent1": 0, "parent2": 1}[key]
            correct[key] += best == d[pos]
            if key in ("hundreds", "tens", "units"):
                ok &= best == d[pos]
        full += ok
    out = {k: v / n_images for k, v in correct.items()}
    out["all three"] = full / n_images
    return out


# ----------------------------------------------------------------------------- report


def report(
    folder: Path, n_images: int, n_samples: int, batch_size: int, seed: int = nd.HELDOUT_SEED, max_seconds: float = 0
) -> dict[str, Any]:
    """Held-out accuracy through the engine users run (exhaustive policy, all 1,000 classes).

    Images are classified 10 at a time; with `max_seconds`, it stops after the chunk that
    passes that time and reports on the images done (the first n of the generator, recorded
    with the command that measures exactly those)."""
    import fastgen
    from fastgen.builtin import BUILTIN_MODELS

    model = "builtin:numbers" if folder.resolve() == BUILTIN_MODELS["numbers"].resolve() else str(folder)
    clf = fastgen.DiffusionClassifier.from_pretrained(
        model, policy="exhaustive", policy_options={"n_samples": n_samples}, batch_size=batch_size, device="cpu"
    )
    images, labels = nd.heldout_numbers(n_images, seed)
    names = clf.classes.names
    start = time.perf_counter()
    results = []
    for i in range(0, n_images, 10):
        results += clf.classify(list(images[i : i + 10]))
        done = len(results)
        rate = done / (time.perf_counter() - start)
        print(
            f"  {done}/{n_images} images  {rate:.3f} images/s  acc {np.mean([names.index(r.prediction) == l for r, l in zip(results, labels)]):.4f}",
            flush=True,
        )
        if max_seconds and time.perf_counter() - start > max_seconds:
            break
    seconds = time.perf_counter() - start
    n_images = len(results)
    images, labels = images[:n_images], labels[:n_images]
    predicted = np.array([names.index(r.prediction) for r in results])
    true_d, pred_d = nd.digits_of(labels), nd.digits_of(predicted)
    right = predicted == labels
    per_number: dict[int, list[int]] = {}
    for label, ok in zip(labels.tolist(), right.tolist()):
        per_number.setdefault(label, []).append(ok)
    seen = len(per_number)
    always = sum(all(v) for v in per_number.values())
    never = sum(not any(v) for v in per_number.values())
    wrong = [
        {"number": f"{int(l):03d}", "predicted": f"{int(p):03d}"} for l, p in zip(labels[~right], predicted[~right])
    ]
    evals = float(np.mean([r.unet_evals for r in results]))
    return {
        "command": None,
        "model": model,
        "policy": "exhaustive",
        "n_samples": n_samples,
        "batch_size": batch_size,
        "heldout_seed": seed,
        "n_images": n_images,
        "threads": torch.get_num_threads(),
        "accuracy": round(float(right.mean()), 4),
        "n_errors": int((~right).sum()),
        "position_accuracy": {
            p: round(float((true_d[:, i] == pred_d[:, i]).mean()), 4) for i, p in enumerate(nd.POSITIONS)
        },
        "numbers_seen": seen,
        "numbers_always_right": always,
        "numbers_never_right": never,
        "images_per_number": round(n_images / seen, 2),
        "unet_evals_per_image": evals,
        "seconds": round(seconds, 1),
        "images_per_s": round(n_images / seconds, 4),
        "rows_per_s": round(n_images * evals / seconds, 1),
        "errors": wrong,
    }


def write_training_md(out: Path, cfg: NumbersConfig, result: dict[str, Any]) -> None:
    rep = result.get("report")
    rep_lines = ["Not measured yet."]
    if rep:
        pos = rep["position_accuracy"]
        errs = rep["errors"]
        err_text = ", ".join(f"{e['number']}->{e['predicted']}" for e in errs[:40]) + (" ..." if len(errs) > 40 else "")
        rep_lines = [
            "Measured through the engine users run, on the saved folder:",
            "",
            "```",
            rep["command"],
            "```",
            "",
            "i.e. `fastgen.DiffusionClassifier.from_pretrained("
            f'"{rep["model"]}", policy="exhaustive", policy_options={{"n_samples": {rep["n_samples"]}}}, '
            f"batch_size={rep['batch_size']})` then `.classify(...)` on the first {rep['n_images']} images "
            f"of `heldout_numbers(seed={rep['heldout_seed']})` (uint8 8x24 arrays): all 1,000 classes, "
            f'{rep["n_samples"]} shared (timestep, noise) samples per class (`timesteps="even"`, seed 0), '
            f"{rep['unet_evals_per_image']:.0f} UNet evaluations per image.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| 1,000-way accuracy | {rep['accuracy']:.4f} ({rep['n_errors']} errors / {rep['n_images']} images) |",
            f"| hundreds digit right | {pos['hundreds']:.4f} |",
            f"| tens digit right | {pos['tens']:.4f} |",
            f"| units digit right | {pos['units']:.4f} |",
            f"| numbers present | {rep['numbers_seen']} ({rep['images_per_number']} images each) |",
            f"| numbers always right | {rep['numbers_always_right']} |",
            f"| numbers never right | {rep['numbers_never_right']} |",
            f"| time | {rep['seconds']:.0f} s, {rep['images_per_s']:.3f} images/s, {rep['rows_per_s']:.0f} UNet rows/s ({rep['threads']} CPU thread{'s' if rep['threads'] != 1 else ''}, fp32) |",
            "",
            f"Misclassified images (true -> predicted): {err_text or 'none'}.",
        ]
        if rep["n_images"] < nd.N_CLASSES:
            rep_lines += [
                "",
                f"Only {rep['n_images']} images: exhaustive scoring costs {rep['unet_evals_per_image']:.0f} UNet evaluations per image, and",
                "on this 2-core machine, shared with other jobs while the report ran, the plain fp32 model",
                f"managed {rep['rows_per_s']:.0f} rows/s, so the report was capped at about 25 minutes",
                "(`--report-seconds`). With so few images the figure is rough (2 errors in 50 has a 95%",
                "interval of about 0.86-0.995); more images and samples: raise `--report-images`,",
                "`--report-samples`.",
            ]
    lines = [
        "# builtin:numbers",
        "",
        "A small text-conditioned pixel-space diffusion model on handwritten three-digit numbers",
        "000-999 (1,000 classes): three scikit-learn digits side by side, 8x24 grayscale, ink",
        "bright (pixels `round(v * 255 / 16)`), for zero-shot diffusion classification.",
        "",
        "* `unet`: `UNet2DConditionModel`, 1 -> 1 channel, `sample_size` [8, 24], three levels",
        f"  (8x24, 4x12, 2x6; channels {', '.join(map(str, cfg.block_out_channels))}), cross-attention at 4x12, 2x6 and",
        "  the middle block; none at 8x24, so fastgen runs the 8x24 down level (the class-independent",
        "  prefix) once per noised input, not once per class.",
        "* `text_encoder`: `CLIPTextModel`, conditioning = `last_hidden_state` "
        f"([B, {cfg.max_length}, {cfg.text_hidden}]).",
        f"* `tokenizer`: the real CLIP BPE vocabulary (49,408 tokens), max_length {cfg.max_length}:",
        "  `<start> a handwritten number four two seven <end>` is exactly 8 tokens; every digit",
        "  word and `any` is one token (checked by the training script).",
        f"* `scheduler`: `DDPMScheduler`, {cfg.num_train_timesteps} steps, `{cfg.beta_schedule}`, epsilon prediction.",
        "* classes: `zero zero zero` ... `nine nine nine` (class i is the number i, hundreds first);",
        f"  template `{nd.TEMPLATE}` (`fastgen.json`).",
        "* input: uint8 8x24 image -> `u8 / 255 * 2 - 1`, shape [1, 8, 24]. Other sizes are scaled",
        "  to cover 8x24 and center-cropped (`fastgen.inputs.images`).",
        "",
        "## Data",
        "",
        "Digits come from the fixed stratified split of `builtin:digits` (`digits_split("
        f"{cfg.split_seed})`: {result['n_train']} train / {result['n_test']} held-out digit images).",
        "Training composes numbers on the fly from the training digits only",
        '(`fastgen.builtin.numbers_data.training_numbers` / `DigitPool("train")`): a uniformly',
        "random number, a random training image of each of its digits. The held-out test set is",
        "the seeded generator `heldout_numbers(n, seed=0)`: image i shows number `i % 1000`, each",
        "digit a random held-out image of that digit. No held-out digit image is ever seen in",
        "training (tested in `tests/test_builtin_numbers.py`).",
        "",
        "Augmentation: each digit of a training number is shifted one pixel left or right inside",
        f"its cell with probability {cfg.shift_prob} (background fills the gap).",
        "",
        "## Parent prompts and the label tree",
        "",
        "So that a label-tree policy can score parents first, the model is trained with some",
        "digit positions masked by the word `any` (a single CLIP token): per training example",
        f"the full prompt with probability {cfg.p_full}, the units masked (`four two any`) with",
        f"{cfg.p_mask1}, tens and units masked (`four any any`) with {round(1 - cfg.p_full - cfg.p_mask1, 4)}. A masked prompt",
        "is trained on the same images, so it learns the noise prediction averaged over the",
        "unknown digits. Masking only trailing positions matches the tree: hundreds, then tens,",
        "then units.",
        "",
        "`label_tree.json` (format `fastgen-label-tree-1`):",
        "",
        "```",
        '{"format": "fastgen-label-tree-1",',
        ' "roots": ["zero any any", ..., "nine any any"],',
        ' "nodes": {"four any any": {"prompt": "a handwritten number four any any",',
        '                             "children": ["four zero any", ..., "four nine any"]},',
        '           "four two any": {"prompt": "a handwritten number four two any",',
        '                             "children": ["four two zero", ..., "four two nine"]}, ...}}',
        "```",
        "",
        "`roots` are the top-level nodes; `nodes` maps each inner node's name to its prompt and",
        "its children in order. A child that is not a key of `nodes` is a leaf: a class name of",
        "`fastgen.json`, whose prompt is the model's template applied to it. Every class is a leaf",
        "exactly once. 10 roots, 100 second-level nodes, 1,000 leaves.",
        "",
        "## Reproduce",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"Trained from seed {cfg.seed}: {cfg.steps} steps of {cfg.batch_size} composed images. Training took",
        f"{result['train_seconds']:.0f} s with {result['threads']} CPU thread{'s' if result['threads'] != 1 else ''} "
        f"({result['machine']}; the machine was shared with other jobs, so times are upper bounds).",
        "With the same thread count and torch build the weights reproduce bit for bit; other",
        "thread counts can differ in the last bits.",
        "",
        "## Held-out accuracy",
        "",
        *rep_lines,
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(asdict(cfg), indent=2),
        "```",
        "",
        f"Parameters: UNet {result['unet_params']:,}; text encoder {result['text_params']:,}, "
        f"of which token embeddings {result['token_embedding_params']:,}.",
        f"Weights are stored as {cfg.save_dtype} safetensors. Folder size: {result['folder_bytes'] / 1e6:.2f} MB.",
        "",
        "Loss (mean over the last 100 steps):",
        "",
        "| step | loss | seconds |",
        "|---|---|---|",
        *[f"| {r['step']} | {r['loss']:.4f} | {r['seconds']:.0f} |" for r in result["loss_log"][4::5]],
        "",
    ]
    (out / "TRAINING.md").write_text("\n".join(lines), encoding="utf-8")


def _config_from_json(data: dict[str, Any]) -> NumbersConfig:
    data = dict(data)
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        data[key] = tuple(data[key])
    return NumbersConfig(**data)


# The label-tree policy chosen on training compositions in bench/bench_numbers.py (the tree path is
# relative to the model folder).
DEFAULT_POLICY = {
    "name": "tree",
    "tree": "label_tree.json",
    "beam": 2,
    "node_samples": 8,
    "min_samples": 8,
    "check_every": 4,
    "max_samples": 64,
}


def _defaults() -> dict[str, Any]:
    return {"classes": nd.class_names(), "templates": [nd.TEMPLATE], "policy": DEFAULT_POLICY}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="model folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=NumbersConfig.steps)
    parser.add_argument("--batch-size", type=int, default=NumbersConfig.batch_size)
    parser.add_argument("--lr", type=float, default=NumbersConfig.lr)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: all cores)")
    parser.add_argument(
        "--report-only", action="store_true", help="do not train: re-measure --out and rewrite its reports"
    )
    parser.add_argument("--no-report", action="store_true", help="train and save, skip the engine report")
    parser.add_argument(
        "--check", type=int, default=0, metavar="N", help="after training, a quick check on N held-out images (pilots)"
    )
    parser.add_argument(
        "--snapshot-every", type=int, default=0, help="save the EMA model every N steps to --snapshot-dir"
    )
    parser.add_argument("--snapshot-dir", type=Path, default=None)
    parser.add_argument("--check-only", action="store_true", help="only the quick check of --out (pilots)")
    parser.add_argument("--report-images", type=int, default=200)
    parser.add_argument("--report-samples", type=int, default=4, help="samples per class (exhaustive)")
    parser.add_argument("--report-batch-size", type=int, default=1000)
    parser.add_argument(
        "--report-seconds", type=float, default=0, help="stop the report after the 10-image chunk that passes this time"
    )
    parser.add_argument("--report-threads", type=int, default=0, help="threads for the report (0: --threads)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out: Path = args.out

    if args.check_only:
        print(json.dumps(quick_check(out, args.check or 40)), flush=True)
        return
    if args.report_only:
        result = json.loads((out / "training.json").read_text(encoding="utf-8"))
        cfg = _config_from_json(result["config"])
    else:
        cfg = NumbersConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
        command = f"python training/train_numbers.py --out {out} --seed {cfg.seed} --steps {cfg.steps} --threads {args.threads}"
        for flag, value, default in (
            ("--batch-size", cfg.batch_size, NumbersConfig.batch_size),
            ("--lr", cfg.lr, NumbersConfig.lr),
        ):
            if value != default:
                command += f" {flag} {value}"
        with tempfile.TemporaryDirectory() as tmp:
            trained = train(cfg, Path(tmp), snapshot_every=args.snapshot_every, snapshot_dir=args.snapshot_dir)
            save(trained, out, cfg, defaults=_defaults())
        write_label_tree(out)
        models = load_folder(out)
        emb = models["text_encoder"].get_input_embeddings().weight
        pool_train, pool_test = nd.DigitPool("train", cfg.split_seed), nd.DigitPool("heldout", cfg.split_seed)
        result = {
            "command": command,
            "threads": torch.get_num_threads(),
            "machine": f"{cpu_name()}, {torch.get_num_threads()} of {os.cpu_count()} cores, torch {torch.__version__}",
            "train_seconds": round(trained["train_seconds"], 1),
            "config": asdict(cfg),
            "n_train": len(pool_train.images),
            "n_test": len(pool_test.images),
            "unet_params": sum(p.numel() for p in models["unet"].parameters()),
            "text_params": sum(p.numel() for p in models["text_encoder"].parameters()),
            "token_embedding_params": emb.numel(),
            "loss_log": trained["log"],
        }
    if args.check:
        check = quick_check(out, args.check)
        print("quick check (own scorer, 10 alternatives per position):", json.dumps(check), flush=True)
        result["quick_check"] = {"n_images": args.check, **check}
    if args.report_only or not (args.no_report or args.check):
        if args.report_threads > 0:
            torch.set_num_threads(args.report_threads)
        rep = report(
            out, args.report_images, args.report_samples, args.report_batch_size, max_seconds=args.report_seconds
        )
        rep["command"] = (
            f"python training/train_numbers.py --out {out} --report-only --report-images {rep['n_images']} "
            f"--report-samples {args.report_samples} --report-batch-size {args.report_batch_size} "
            f"--threads {torch.get_num_threads()}"
        )
        print(json.dumps({k: v for k, v in rep.items() if k != "errors"}), flush=True)
        result["report"] = rep
    for _ in range(2):  # the size written includes the reports themselves
        result["folder_bytes"] = folder_size(out)
        (out / "training.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        write_training_md(out, cfg, result)
    print(f"saved {out} ({result['folder_bytes'] / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
