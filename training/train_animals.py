"""Train `builtin:animals`: a text-conditioned pixel-space diffusion model on animal silhouettes.

A `diffusers.UNet2DConditionModel` on 1 x 16 x 16 pixels, conditioned through cross-attention on a
`transformers.CLIPTextModel` reading the real CLIP BPE tokens of "a silhouette of a {animal}" (each
of the ten animal names is one CLIP token), both trained from scratch with the epsilon objective
on the training split of Animal-Shape (`training/animals_data.py`: exact and near duplicates
removed, 75/25 by class), each image mirrored left-right with probability `flip_prob` (the data
hold animals facing either way). The building blocks are `builtin:digits`' (`train_digits.py`).

    python -m training.train_animals --out fastgen/builtin/animals --seed 0 --threads 1

trains with the shipped settings (about an hour on one CPU thread), saves the diffusers folder,
then measures held-out accuracy through the engine (`training/engine_report.py`, exhaustive
policy) on the shipped held-out split and writes `TRAINING.md` / `training.json`; `--eval-only`
re-measures a saved folder.

Resolution: 16x16. The same UNet took 0.51 s per training step of 64 images at 16x16 and 1.77 s
at the original 28x28, and scored 421 against 66 images x classes per second (one thread of the
shared 2-core AMD EPYC, no AVX512-BF16, torch 2.13): about 7,000 steps an hour against 2,000, and
the held-out evaluation at 10 + 25 samples per class in about half an hour against 3.5 hours.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastgen.builtin.animals_data import (
    CLASS_NAMES,
    HELDOUT_FILE,
    IMAGE_SIZE,
    INPUT_DESCRIPTION,
    SPLIT_SEED,
    TEMPLATE,
    load_heldout,
    prompts,
)
from training.animals_data import AnimalSplit, animal_split
from training.engine_report import engine_accuracy
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
    to_model_input,
    tokenize,
)

# The default policy until a noise profile is fitted for this model.
DEFAULT_POLICY = {"name": "sequential", "bound": "mixture", "confidence": 0.99, "min_samples": 3, "max_samples": 128}
DEFAULT_SCORING = {"timesteps": "stratified"}


@dataclass
class AnimalsConfig(OptimizerConfig):
    steps: int = 7000
    batch_size: int = 64
    # Augmentation: probability of mirroring a training image left-right.
    flip_prob: float = 0.5
    # Model sizes: 16 channels at 16x16 and attention only at 8x8 and 4x4 keep a step at half a
    # second on one thread (32 channels at 16x16 took 0.86 s and scored 3x slower).
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 2
    text_intermediate: int = 64
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
    split_seed: int = SPLIT_SEED
    eval_samples: list[int] = field(default_factory=lambda: [10, 25])


def model_defaults() -> dict[str, Any]:
    """The model's `fastgen.json`."""
    return {
        "classes": list(CLASS_NAMES),
        "templates": [TEMPLATE],
        "policy": dict(DEFAULT_POLICY),
        # Trained on bright silhouettes on black, as the data store them: fastgen inverts an
        # image whose border is mostly bright (a dark animal on white) to match.
        "input": {"polarity": "bright-on-dark", "description": INPUT_DESCRIPTION},
        "scoring": dict(DEFAULT_SCORING),
    }


def check_shipped_heldout(split: AnimalSplit) -> None:
    """Refuse to train or report against a held-out file that is not this split's."""
    shipped = load_heldout()
    images, labels = split.part("heldout")
    if not (np.array_equal(shipped.images, images) and np.array_equal(shipped.labels, labels)):
        raise ValueError(
            f"{HELDOUT_FILE} is not the held-out part of this split; run `python -m training.animals_data`"
        )


# ----------------------------------------------------------------------------- training


def random_flip(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image [N, 1, H, W] left-right with probability `prob`."""
    if prob <= 0:
        return x
    flip = torch.rand(x.shape[0], generator=gen) < prob
    out = x.clone()
    out[flip] = x[flip].flip(-1)
    return out


def train(cfg: AnimalsConfig, split: AnimalSplit, workdir: Path, log_every: int = 250) -> dict[str, Any]:
    """Train from `cfg.seed` on the split's training part; returns the EMA models and a loss log."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    tokenizer = build_tokenizer(workdir / "tokenizer", cfg.max_length)
    unet, text_encoder, scheduler = build_models(cfg, tokenizer, sample_size=IMAGE_SIZE)
    unet.train()
    text_encoder.train()

    train_x, train_y = split.part("train")
    x_all = to_model_input(train_x)
    y_all = torch.as_tensor(train_y)
    ids = tokenize(tokenizer, prompts())
    abar = scheduler.alphas_cumprod.float()
    opt, ema_unet, ema_text = optimizer_and_emas(unet, text_encoder, cfg)
    params = list(unet.parameters()) + list(text_encoder.parameters())

    n = x_all.shape[0]
    perm, cursor = torch.randperm(n, generator=gen), 0
    progress = LossLog(cfg.steps, log_every)
    cpu_start = time.process_time()
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > n:  # a new epoch: every image once per epoch
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        x0 = random_flip(x_all[idx], cfg.flip_prob, gen)
        t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        # The ten distinct prompts are encoded once per step and gathered per image.
        cond = text_encoder(ids).last_hidden_state[y_all[idx]]
        loss = torch.nn.functional.mse_loss(unet(xt, t, encoder_hidden_states=cond).sample, eps)
        value = optimizer_step(opt, loss, params, step, cfg, [(ema_unet, unet), (ema_text, text_encoder)])
        progress.add(step, value, lr_at(step, cfg))
    return {
        "unet": ema_unet.shadow,
        "text_encoder": ema_text.shadow,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "log": progress.log,
        "train_seconds": progress.seconds,
        # On shared cores the wall time counts the other processes too; the CPU time does not.
        "train_cpu_seconds": time.process_time() - cpu_start,
    }


# ----------------------------------------------------------------------------- evaluation


def evaluate(folder: Path, n_samples: int, n_images: int | None = None) -> dict[str, Any]:
    """Held-out accuracy of the saved model through the engine (exhaustive policy, the model's
    own scoring settings), on the shipped held-out split (its first `n_images`, or all)."""
    heldout = load_heldout()
    images, labels = heldout.images[:n_images], heldout.labels[:n_images]
    return engine_accuracy(folder, list(images), labels, n_samples=n_samples)


def evaluation_rows(out: Path, cfg: AnimalsConfig, n_images: int | None) -> list[dict[str, Any]]:
    rows = []
    for n in cfg.eval_samples:
        cpu_start = time.process_time()
        r = evaluate(out, n, n_images)
        r["cpu_seconds"] = round(time.process_time() - cpu_start, 1)
        print(
            f"held-out accuracy, {n:3d} samples per class: {r['accuracy']:.4f} "
            f"({r['n_errors']} errors of {r['n_images']}, {r['seconds']:.0f}s)",
            flush=True,
        )
        keys = (
            "policy",
            "n_samples",
            "n_images",
            "accuracy",
            "n_errors",
            "unet_evals_per_image",
            "seconds",
            "cpu_seconds",
        )
        row = {k: r[k] for k in keys}
        row["per_class_accuracy"] = per_class_accuracy(np.asarray(r["predicted"]), load_heldout().labels[:n_images])
        rows.append(row)
    return rows


def per_class_accuracy(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Accuracy on each class's images (None for a class with no image among those scored)."""
    return {
        name: round(float((predicted[labels == k] == k).mean()), 4) if (labels == k).any() else None
        for k, name in enumerate(CLASS_NAMES)
    }


# ----------------------------------------------------------------------------- reports


def accuracy_section(result: dict[str, Any]) -> list[str]:
    """The held-out accuracy through the engine, or how to measure it."""
    if not result.get("evaluation"):
        return [
            "The exhaustive policy at fixed sample counts is not measured here; "
            "`python -m training.train_animals --out DIR --eval-only --eval-samples 10 25 --threads 1` measures it."
        ]
    rows = result["evaluation"]
    threads = result["eval_threads"]
    return [
        "Measured through the engine users run (`training/engine_report.py`): the saved folder is loaded",
        "with `fastgen.DiffusionClassifier.from_pretrained` and every held-out 16x16 image is scored",
        "against all ten prompts with the exhaustive policy on the same `n` shared (timestep, noise)",
        "samples for every class (seed 0, l2 loss, uniform weighting, the model's stratified timesteps);",
        "the class with the lowest mean error wins. This is `fastgen classify --policy exhaustive",
        f"--n-samples n` on these images ({threads} CPU thread{'s' if threads != 1 else ''}).",
        "",
        "```",
        result["eval_command"],
        "```",
        "",
        "| samples per class | accuracy | errors | UNet evaluations per image | seconds (CPU seconds) |",
        "|---|---|---|---|---|",
        *(
            f"| {r['n_samples']} | {r['accuracy']:.4f} | {r['n_errors']} / {r['n_images']} | "
            f"{r['unet_evals_per_image']:.0f} | {r['seconds']:.0f}"
            + (f" ({r['cpu_seconds']:.0f})" if "cpu_seconds" in r else "")
            + " |"
            for r in rows
        ),
        "",
        "Per class:",
        "",
        "| samples | " + " | ".join(CLASS_NAMES) + " |",
        "|---" * (len(CLASS_NAMES) + 1) + "|",
        *(
            f"| {r['n_samples']} | " + " | ".join(_percent(r["per_class_accuracy"][c]) for c in CLASS_NAMES) + " |"
            for r in rows
        ),
    ]


def default_policy_section(result: dict[str, Any]) -> list[str]:
    """The default policy's held-out figures, as `fastgen demo` printed them (`--demo-json`)."""
    demo = result.get("default_policy")
    if not demo:
        return []
    policy = demo["config"]["policy"]
    return [
        "",
        f"With the model's default policy ({policy['name']}, {policy['bound']} boundary, confidence "
        f"{policy['confidence']}: a {1 - policy['confidence']:.0%} chance per image of dropping its best class),",
        f"through `{demo['command']}` ({demo['threads']} CPU thread):",
        "",
        f"* accuracy {demo['accuracy']:.4f} on {demo['images']:,} held-out images, "
        f"{demo['unet_evals_per_image']:.1f} UNet evaluations per image;",
        f"* {demo['undecided']} images reached the sample limit undecided ({demo['undecided_errors']} of them wrong);",
        f"* {demo['seconds']:.0f} s ({demo['images_per_s']:.2f} images/s) on {result['machine']}.",
    ]


def record_demo(result: dict[str, Any], path: Path) -> None:
    """Keep the figures of `fastgen demo --model builtin:animals --n-images all --threads 1 --json`,
    whose printed output is in `path` (its last line is the JSON object)."""
    last = path.read_text(encoding="utf-8").strip().splitlines()[-1]
    demo = json.loads(last)
    n_images = "all" if demo["images"] == len(load_heldout()) else demo["images"]
    keep = ("config", "accuracy", "images", "unet_evals_per_image", "undecided", "undecided_errors", "seconds")
    result["default_policy"] = {
        **{k: demo[k] for k in keep},
        "images_per_s": demo["images_per_s"],
        "threads": demo["threads"]["threads"],
        "command": f"fastgen demo --model builtin:animals --n-images {n_images} --threads "
        f"{demo['threads']['threads']} --json",
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_training_md(out: Path, cfg: AnimalsConfig, result: dict[str, Any]) -> None:
    data = result["data"]
    threads = result["threads"]
    lines = [
        "# builtin:animals",
        "",
        "A small text-conditioned pixel-space diffusion model on Animal-Shape silhouettes (the",
        "`animal-mnist` wheel on PyPI, MIT licence; ten animals), for zero-shot diffusion classification.",
        "",
        f"* `unet`: `UNet2DConditionModel`, 1 -> 1 channel at {IMAGE_SIZE}x{IMAGE_SIZE}, blocks "
        f"{list(cfg.block_out_channels)}, cross-attention on the text at 8x8 and 4x4.",
        "* `text_encoder`: `CLIPTextModel`, conditioning = `last_hidden_state` "
        f"([B, {cfg.max_length}, {cfg.text_hidden}]).",
        f"* `tokenizer`: the real CLIP BPE vocabulary (49,408 tokens), padded to {cfg.max_length}.",
        f"* `scheduler`: `DDPMScheduler`, {cfg.num_train_timesteps} steps, `{cfg.beta_schedule}`, epsilon prediction.",
        f"* prompts: `{TEMPLATE}` with the class names {', '.join(CLASS_NAMES)} (each one CLIP token).",
        f"* input: uint8 image -> `u8 / 255 * 2 - 1`, shape [1, {IMAGE_SIZE}, {IMAGE_SIZE}]; bright silhouettes",
        "  on a black background, exactly as the data store them (the median border pixel of every one",
        f"  of the 10,000 originals is dark: {data['images_with_bright_border']} have a bright border).",
        '  `fastgen.json` declares `"input": {"polarity": "bright-on-dark"}`, so fastgen inverts an image',
        "  whose border is mostly bright, such as a dark animal on white. A 28x28 original is brought to",
        "  16x16 by the engine's own resize, the rule the training images were made with.",
        f"* default policy: `{json.dumps(DEFAULT_POLICY)}`, scoring `{json.dumps(DEFAULT_SCORING)}`.",
        "",
        "## Data",
        "",
        "`training/animals_data.py` fetches `animal-mnist==0.4` with pip (sha256 pinned and checked),",
        "reads its pickled arrays from the wheel as a zip (no TensorFlow), and:",
        "",
        f"* drops {data['exact_duplicate_copies']} exact copies (identical 28x28 images): "
        f"{data['distinct_images']:,} distinct images;",
        f"* near duplicates: {data['near_duplicate_rule']}; {data['near_duplicate_pairs']} such pairs among",
        f"  {data['distinct_images_with_a_near_duplicate']} distinct images. In the wheel's order an image is dropped",
        f"  when it is a near duplicate of one already kept: {data['near_duplicates_removed']} dropped (mostly thin",
        "  giraffes, which at 16x16 differ by a few pixels), so no two kept images are near duplicates;",
        f"* splits the {data['kept_images']:,} kept images 75/25 stratified by class (seed {data['split_seed']}): "
        f"{data['train_images']:,} train / {data['heldout_images']:,} held-out",
        f"  (held-out per class: {', '.join(f'{c} {k}' for c, k in zip(CLASS_NAMES, data['heldout_per_class']))}).",
        "",
        "The held-out split ships as `heldout.npz` (16x16 and 28x28 uint8 images, labels, positions in",
        "the wheel), read by `fastgen.builtin.animals_data.load_heldout`.",
        "",
        "## Reproduce",
        "",
        "```",
        "python -m training.animals_data",
        result["command"],
        "```",
        "",
        f"Trained from seed {cfg.seed} for {cfg.steps:,} steps of {cfg.batch_size} images. Training took "
        f"{result['train_seconds']:.0f} s{cpu_share(result)} with {threads} CPU thread{'s' if threads != 1 else ''}",
        f"({result['machine']}), while other jobs shared the cores. With the same thread count and torch",
        "build the weights reproduce bit for bit; other thread counts can differ in the last bits.",
        *(
            [f"The training run's timings and loss log: {result['train_log_note']}."]
            if "train_log_note" in result
            else []
        ),
        "",
        "## Held-out accuracy",
        "",
        *accuracy_section(result),
        *default_policy_section(result),
        "",
        "Discriminative baselines on the same split and resolution (logistic regression, RBF SVC, a",
        "small CNN) are in `baselines.json`, written by `python -m training.train_animals_baselines`.",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(asdict(cfg), indent=2),
        "```",
        "",
        f"Parameters: UNet {result['unet_params']:,}; text encoder {result['text_params']:,}, "
        f"of which token embeddings {result['token_embedding_params']:,}.",
        f"Weights are stored as {cfg.save_dtype} safetensors; load with an explicit float32 dtype",
        "(`torch_dtype=torch.float32` for diffusers, `dtype=torch.float32` for transformers) to",
        "run in fp32 (transformers otherwise keeps the stored dtype).",
        f"Folder size: {result['folder_bytes'] / 1e6:.2f} MB{heldout_share(out)}.",
        "",
    ]
    (out / "TRAINING.md").write_text("\n".join(lines), encoding="utf-8")


def cpu_share(result: dict[str, Any]) -> str:
    cpu = result.get("train_cpu_seconds")
    return f" ({cpu:.0f} s of CPU time)" if cpu is not None else ""


def heldout_share(out: Path) -> str:
    heldout = out / HELDOUT_FILE.name
    return f" (of which `{heldout.name}` {heldout.stat().st_size / 1e6:.2f} MB)" if heldout.is_file() else ""


def write_reports(out: Path, cfg: AnimalsConfig, result: dict[str, Any]) -> None:
    for _ in range(2):  # the size written includes the reports themselves
        result["folder_bytes"] = folder_size(out)
        (out / "training.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        write_training_md(out, cfg, result)


def config_from_json(data: dict[str, Any]) -> AnimalsConfig:
    data = dict(data)
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        data[key] = tuple(data[key])
    return AnimalsConfig(**data)


def training_command(out: Path, cfg: AnimalsConfig, threads: int) -> str:
    command = f"python -m training.train_animals --out {out} --seed {cfg.seed} --threads {threads}"
    for flag, value, default in (
        ("--steps", cfg.steps, AnimalsConfig.steps),
        ("--batch-size", cfg.batch_size, AnimalsConfig.batch_size),
        ("--lr", cfg.lr, AnimalsConfig.lr),
        ("--flip-prob", cfg.flip_prob, AnimalsConfig.flip_prob),
    ):
        if value != default:
            command += f" {flag} {value}"
    return command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="model folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=AnimalsConfig.steps)
    parser.add_argument("--batch-size", type=int, default=AnimalsConfig.batch_size)
    parser.add_argument("--lr", type=float, default=AnimalsConfig.lr)
    parser.add_argument("--flip-prob", type=float, default=AnimalsConfig.flip_prob)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: all cores)")
    parser.add_argument("--cache-dir", default=None, help="where the Animal-Shape wheel is kept")
    parser.add_argument(
        "--eval-samples", type=int, nargs="*", default=AnimalsConfig().eval_samples,
        help="samples per class to measure held-out accuracy at, through the engine (none: skip)",
    )  # fmt: skip
    parser.add_argument("--eval-images", type=int, default=None, help="only the first N held-out images")
    parser.add_argument("--eval-only", action="store_true", help="re-measure the model in --out, rewrite its reports")
    parser.add_argument(
        "--demo-json", type=Path, default=None,
        help="with --eval-only: the saved output of `fastgen demo --model builtin:animals --n-images all --json`, "
        "recorded as the default policy's figures",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    split = animal_split(args.cache_dir)
    check_shipped_heldout(split)

    if args.eval_only:
        result = json.loads((out / "training.json").read_text(encoding="utf-8"))
        cfg = config_from_json(result["config"])
        # With no --eval-samples the reports are only rewritten from training.json.
        cfg.eval_samples = list(args.eval_samples) or cfg.eval_samples
        measure = bool(args.eval_samples)
    else:
        cfg = AnimalsConfig(
            seed=args.seed,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            flip_prob=args.flip_prob,
            eval_samples=list(args.eval_samples),
        )
        measure = bool(cfg.eval_samples)
        with tempfile.TemporaryDirectory() as tmp:
            trained = train(cfg, split, Path(tmp))
            save(trained, out, cfg, defaults=model_defaults())
        models = load_folder(out)
        result = {
            "command": training_command(out, cfg, args.threads),
            "threads": torch.get_num_threads(),
            "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "cpu": cpu_name(),
            "torch": torch.__version__,
            "train_seconds": round(trained["train_seconds"], 1),
            "train_cpu_seconds": round(trained["train_cpu_seconds"], 1),
            "seconds_per_step": round(trained["train_seconds"] / cfg.steps, 3),
            "data": split.stats,
            "unet_params": sum(p.numel() for p in models["unet"].parameters()),
            "text_params": sum(p.numel() for p in models["text_encoder"].parameters()),
            "token_embedding_params": models["text_encoder"].get_input_embeddings().weight.numel(),
            "loss_log": trained["log"],
        }
    result["config"] = asdict(cfg)
    if args.demo_json is not None:
        record_demo(result, args.demo_json)
    if measure:
        result["evaluation"] = evaluation_rows(out, cfg, args.eval_images)
        result["eval_threads"] = torch.get_num_threads()
        result["eval_command"] = (
            f"python -m training.train_animals --out {out} --eval-only --threads {args.threads} "
            f"--eval-samples {' '.join(map(str, cfg.eval_samples))}"
            + (f" --eval-images {args.eval_images}" if args.eval_images else "")
        )
    write_reports(out, cfg, result)
    print(f"saved {out} ({folder_size(out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
