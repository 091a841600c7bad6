"""Train the built-in `digits` model: a small text-conditioned pixel-space diffusion model.

The model is a `diffusers.UNet2DConditionModel` working directly on 8x8 grayscale pixels,
conditioned through cross-attention on a `transformers.CLIPTextModel` that reads the real CLIP
BPE tokens of "a handwritten digit {name}". Both are trained together from scratch with the
standard epsilon-prediction objective on the training split of the scikit-learn digits, and
saved in the diffusers folder layout (no VAE) that fastgen loads.

    python -m training.train_digits --out fastgen/builtin/digits --seed 0 --threads 1

(about 15 minutes of training on one CPU thread, then the evaluation; pass `--eval-timesteps`
with fewer or no values to shorten it, `--eval-only` to re-measure an existing folder.)

The held-out accuracy is measured on the saved files through the engine users run
(`training/engine_report.py`: `fastgen.DiffusionClassifier`, exhaustive policy, every class on
the same shared-noise samples) and written to `TRAINING.md` and `training.json` inside the
output folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastgen.builtin.digits_data import CLASS_NAMES, INPUT_DESCRIPTION, SPLIT_SEED, TEMPLATE, digits_split, prompts
from training.engine_report import engine_accuracy
from training.portable_weights import prefix_text_model

PIPELINE_CLASS = "PixelTextToImage"


@dataclass
class OptimizerConfig:
    """What every embedded model's training shares: AdamW with warm-up and cosine decay to
    `final_lr_fraction`, weight decay on the denoiser's matrices, EMA weights, gradient
    clipping. Each model's config subclasses it and sets its own defaults."""

    seed: int = 0
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 200
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    grad_clip: float = 1.0


@dataclass
class TrainConfig(OptimizerConfig):
    # Augmentation: probability of shifting a training image by one pixel (padding with
    # background), and of replacing its prompt by the empty prompt.
    shift_prob: float = 0.0
    uncond_prob: float = 0.0
    # Model sizes.
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 2
    text_intermediate: int = 64
    max_length: int = 8
    block_out_channels: tuple[int, ...] = (32, 64)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 8
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    save_dtype: str = "float16"
    split_seed: int = SPLIT_SEED
    eval_timesteps: list[int] = field(default_factory=lambda: [10, 25, 50, 100])
    eval_seed: int = 0


# ----------------------------------------------------------------------------- models


def build_tokenizer(folder: Path, max_length: int):
    from transformers import CLIPTokenizer

    from fastgen.models.clip_vocab import write_clip_tokenizer

    write_clip_tokenizer(folder, model_max_length=max_length)
    return CLIPTokenizer.from_pretrained(str(folder))


def clip_text_config(cfg: Any, tokenizer, **extra: Any):
    """A CLIP text encoder's config from a training config's text sizes (`text_hidden`,
    `text_intermediate`, `text_layers`, `text_heads`, `max_length`) and the tokenizer's special
    tokens; `extra` adds fields such as `projection_dim`."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_models(cfg: TrainConfig, tokenizer, sample_size: int | tuple[int, int] = 8) -> tuple[Any, Any, Any]:
    """Fresh (unet, text_encoder, scheduler) for `cfg` on one-channel images of `sample_size`
    (a side or (H, W)); weights drawn from torch's RNG."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(clip_text_config(cfg, tokenizer))
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=cfg.attention_head_dim,
        cross_attention_dim=cfg.text_hidden,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
    )
    return unet, text_encoder, scheduler


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def to_model_input(images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, 8, 8] -> float32 [N, 1, 8, 8] in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images_u8), dtype=torch.float32)
    return (x / 255.0 * 2.0 - 1.0).unsqueeze(1)


def load_folder(folder: str | Path) -> dict[str, Any]:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = str(folder)
    return {
        "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32).eval(),
        "text_encoder": CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch.float32).eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        "scheduler": DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
    }


# ----------------------------------------------------------------------------- evaluation


def evaluate(folder: Path, n_samples: int, *, split_seed: int = SPLIT_SEED) -> dict[str, Any]:
    """Held-out accuracy of the saved model, through the engine (`engine_report`)."""
    _, _, test_x, test_y = digits_split(split_seed)
    return engine_accuracy(folder, list(test_x), test_y, n_samples=n_samples)


# ----------------------------------------------------------------------------- training


def random_shift(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by one pixel (8 directions) with probability `prob`; pad = background."""
    if prob <= 0:
        return x
    n = x.shape[0]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(-1, 2, (n,), generator=gen)
    dx = torch.randint(-1, 2, (n,), generator=gen)
    keep = torch.rand(n, generator=gen) >= prob
    dy[keep] = 0
    dx[keep] = 0
    out = torch.empty_like(x)
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            sel = (dy == oy) & (dx == ox)
            if sel.any():
                out[sel] = padded[sel, :, 1 + oy : 9 + oy, 1 + ox : 9 + ox]
    return out


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)
        self.step = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        for ema_p, p in zip(self.shadow.parameters(), module.parameters()):
            ema_p.lerp_(p.detach(), 1 - d)
        for ema_b, b in zip(self.shadow.buffers(), module.buffers()):
            ema_b.copy_(b)


def optimizer_and_emas(unet: torch.nn.Module, text_encoder: torch.nn.Module, cfg: Any) -> tuple[Any, EMA, EMA]:
    """AdamW with weight decay on the UNet's matrices only, and EMA copies of both models."""
    decay, no_decay = [], []
    for p in unet.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    params = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": list(text_encoder.parameters()), "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99))
    return opt, EMA(unet, cfg.ema_decay), EMA(text_encoder, cfg.ema_decay)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * cosine)


class LossLog:
    """The mean training loss every `every` steps (and at the last), printed and kept."""

    def __init__(self, steps: int, every: int = 250):
        self.steps, self.every = steps, every
        self.losses: list[float] = []
        self.log: list[dict[str, float]] = []
        self.start = time.time()

    def add(self, step: int, loss: float, lr: float) -> None:
        self.losses.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == self.steps:
            mean_loss = float(np.mean(self.losses[-self.every :]))
            elapsed = time.time() - self.start
            self.log.append({"step": step + 1, "loss": round(mean_loss, 5), "seconds": round(elapsed, 1)})
            print(f"step {step + 1:6d}/{self.steps}  loss {mean_loss:.4f}  lr {lr:.2e}  {elapsed:7.1f}s", flush=True)

    @property
    def seconds(self) -> float:
        return time.time() - self.start


def optimizer_step(
    opt: Any, loss: torch.Tensor, params: list[torch.Tensor], step: int, cfg: Any, emas: list[tuple[EMA, Any]]
) -> float:
    """One AdamW step at the scheduled learning rate, with gradient clipping, then the EMA
    updates; returns the loss value."""
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    for ema, module in emas:
        ema.update(module)
    return loss.item()


def train(cfg: TrainConfig, workdir: Path, log_every: int = 250) -> dict[str, Any]:
    """Train from `cfg.seed`; returns the EMA models plus a loss log."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    tokenizer = build_tokenizer(workdir / "tokenizer", cfg.max_length)
    unet, text_encoder, scheduler = build_models(cfg, tokenizer)
    unet.train()
    text_encoder.train()

    train_x, train_y, _, _ = digits_split(cfg.split_seed)
    x_all = to_model_input(train_x)
    y_all = torch.as_tensor(train_y)
    # Row 10 is the empty prompt, used for prompt dropout.
    ids = tokenize(tokenizer, prompts() + [""])
    abar = scheduler.alphas_cumprod.float()

    opt, ema_unet, ema_text = optimizer_and_emas(unet, text_encoder, cfg)

    n = x_all.shape[0]
    perm = torch.randperm(n, generator=gen)
    cursor = 0
    progress = LossLog(cfg.steps, log_every)
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > n:
            perm = torch.randperm(n, generator=gen)
            cursor = 0
        idx = perm[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        x0 = random_shift(x_all[idx], cfg.shift_prob, gen)
        labels = y_all[idx].clone()
        if cfg.uncond_prob > 0:
            labels[torch.rand(labels.shape[0], generator=gen) < cfg.uncond_prob] = len(CLASS_NAMES)
        t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        # Encode the eleven distinct prompts once and gather per sample.
        cond = text_encoder(ids).last_hidden_state[labels]
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred, eps)
        params = list(unet.parameters()) + list(text_encoder.parameters())
        value = optimizer_step(opt, loss, params, step, cfg, [(ema_unet, unet), (ema_text, text_encoder)])
        progress.add(step, value, lr_at(step, cfg))
    return {
        "unet": ema_unet.shadow,
        "text_encoder": ema_text.shadow,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "log": progress.log,
        "train_seconds": progress.seconds,
    }


# ----------------------------------------------------------------------------- saving


def save(models: dict[str, Any], out: Path, cfg: TrainConfig, defaults: dict[str, Any] | None = None) -> Path:
    """Write the diffusers layout; weights are stored in `cfg.save_dtype`. `defaults` (the
    digits' classes, template and policy unless given) go to `fastgen.json`."""
    from fastgen.models.clip_vocab import write_clip_tokenizer
    from fastgen.models.layout import save_model_folder

    dtype = getattr(torch, cfg.save_dtype)
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    unet = _cast_copy(models["unet"], dtype)
    text_encoder = _cast_copy(models["text_encoder"], dtype)
    if defaults is None:
        defaults = {
            "classes": list(CLASS_NAMES),
            "templates": [TEMPLATE],
            "policy": {},
            # Trained on bright ink on black: fastgen inverts dark-on-white images to match.
            "input": {"polarity": "bright-on-dark", "description": INPUT_DESCRIPTION},
        }
    save_model_folder(
        out,
        {
            "unet": unet,
            "text_encoder": text_encoder,
            "tokenizer": models["tokenizer"],
            "scheduler": models["scheduler"],
        },
        pipeline_class=PIPELINE_CLASS,
        defaults=defaults,
    )
    # `save_pretrained` of a transformers 5 tokenizer writes a 3.6 MB `tokenizer.json`; the
    # vocab.json / merges.txt pair holds the same CLIP BPE in 1.5 MB and loads faster.
    shutil.rmtree(out / "tokenizer")
    write_clip_tokenizer(out / "tokenizer", model_max_length=models["tokenizer"].model_max_length)
    prefix_text_model(out)  # loadable by transformers 4 as well as 5 (training/portable_weights.py)
    return out


def _cast_copy(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of `module` with floating-point parameters and buffers stored in `dtype`."""
    module = copy.deepcopy(module)
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(dtype)
    return module


def cpu_name() -> str:
    """The CPU model, and whether it has native bf16 (AVX512-BF16), as /proc/cpuinfo says."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    bf16 = "with AVX512-BF16" if "avx512_bf16" in text else "no AVX512-BF16"
    return f"{names[0] if names else platform.machine()} ({bf16})"


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_report(out: Path, cfg: TrainConfig, result: dict[str, Any]) -> None:
    (out / "training.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    rows = "\n".join(
        f"| {r['n_samples']} | {r['accuracy']:.4f} | {r['n_errors']} / {r['n_images']} | {r['seconds']:.0f} |"
        for r in result["evaluation"]
    )
    lines = [
        "# builtin:digits",
        "",
        "A small text-conditioned pixel-space diffusion model on the scikit-learn digits",
        "(8x8 grayscale, ink bright, pixels `round(v * 255 / 16)`), for zero-shot diffusion",
        "classification.",
        "",
        "* `unet`: `UNet2DConditionModel`, 1 -> 1 channel at 8x8, cross-attention on the text.",
        "* `text_encoder`: `CLIPTextModel`, conditioning = `last_hidden_state` "
        f"([B, {cfg.max_length}, {cfg.text_hidden}]).",
        f"* `tokenizer`: the real CLIP BPE vocabulary (49,408 tokens), padded to {cfg.max_length}.",
        f"* `scheduler`: `DDPMScheduler`, {cfg.num_train_timesteps} steps, `{cfg.beta_schedule}`, epsilon prediction.",
        f"* prompts: `{TEMPLATE}` with the class names {', '.join(CLASS_NAMES)}.",
        "* input: uint8 image -> `u8 / 255 * 2 - 1`, shape [1, 8, 8]; bright ink on a black",
        '  background (`fastgen.json` declares `"input": {"polarity": "bright-on-dark"}`, so',
        "  fastgen inverts an image whose border is mostly bright, such as dark ink on white paper).",
        "",
        "## Reproduce",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"Trained from seed {cfg.seed} on the stratified 75/25 split (`digits_split({cfg.split_seed})`:",
        f"{result['n_train']} train / {result['n_test']} held-out images). "
        f"Training took {result['train_seconds']:.0f} s with {result['threads']} CPU "
        f"thread{'s' if result['threads'] != 1 else ''}",
        f"({result['machine']}). With the same thread count and torch build the weights",
        "reproduce bit for bit; other thread counts can differ in the last bits.",
        "",
        "## Held-out accuracy",
        "",
        "Measured through the engine users run (`training/engine_report.py`): the saved folder",
        "is loaded with `fastgen.DiffusionClassifier.from_pretrained` and every held-out image is",
        "scored against all ten prompts with the exhaustive policy, on the same `n` shared",
        "(timestep, noise) samples for every class (the engine's nested even timestep grid, seed 0,",
        "l2 loss, uniform weighting); the class with the lowest mean error wins. This is",
        "`fastgen classify --policy exhaustive --n-samples n` on these images",
        f"({result['eval_threads']} CPU thread{'s' if result['eval_threads'] != 1 else ''}).",
        "",
        "| samples per class | accuracy | errors | seconds |",
        "|---|---|---|---|",
        rows,
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
        f"Folder size: {result['folder_bytes'] / 1e6:.2f} MB.",
        "",
    ]
    (out / "TRAINING.md").write_text("\n".join(lines), encoding="utf-8")


def _config_from_json(data: dict[str, Any]) -> TrainConfig:
    data = dict(data)
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        data[key] = tuple(data[key])
    return TrainConfig(**data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="model folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--shift-prob", type=float, default=TrainConfig.shift_prob)
    parser.add_argument("--uncond-prob", type=float, default=TrainConfig.uncond_prob)
    parser.add_argument(
        "--eval-timesteps",
        type=int,
        nargs="*",
        default=TrainConfig().eval_timesteps,
        help="samples per class to measure held-out accuracy at, through the engine (none: skip)",
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="do not train: re-evaluate the model in --out and rewrite its reports",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out: Path = args.out

    if args.eval_only:
        previous = json.loads((out / "training.json").read_text(encoding="utf-8"))
        cfg = _config_from_json(previous["config"])
        cfg.eval_timesteps = list(args.eval_timesteps)
        result = {k: previous[k] for k in ("command", "threads", "machine", "train_seconds")}
        loss_log = previous.get("loss_log", [])
    else:
        cfg = TrainConfig(
            seed=args.seed,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            shift_prob=args.shift_prob,
            uncond_prob=args.uncond_prob,
            eval_timesteps=list(args.eval_timesteps),
        )
        command = (
            f"python -m training.train_digits --out {out} --seed {cfg.seed} "
            f"--steps {cfg.steps} --threads {args.threads}"
        )
        for flag, value, default in (
            ("--batch-size", cfg.batch_size, TrainConfig.batch_size),
            ("--lr", cfg.lr, TrainConfig.lr),
            ("--shift-prob", cfg.shift_prob, TrainConfig.shift_prob),
            ("--uncond-prob", cfg.uncond_prob, TrainConfig.uncond_prob),
        ):
            if value != default:
                command += f" {flag} {value}"
        with tempfile.TemporaryDirectory() as tmp:
            trained = train(cfg, Path(tmp))
            save(trained, out, cfg)
        result = {
            "command": command,
            "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, torch {torch.__version__}",
            "train_seconds": round(trained["train_seconds"], 1),
        }
        loss_log = trained["log"]

    models = load_folder(out)
    evaluation = []
    for n in cfg.eval_timesteps:
        r = evaluate(out, n, split_seed=cfg.split_seed)
        print(
            f"held-out accuracy, {n:3d} samples per class: {r['accuracy']:.4f} "
            f"({r['n_errors']} errors, {r['seconds']:.0f}s)",
            flush=True,
        )
        keys = ("policy", "n_samples", "n_images", "accuracy", "n_errors", "seconds")
        evaluation.append({k: r[k] for k in keys})
    train_x, _, test_x, _ = digits_split(cfg.split_seed)
    emb = models["text_encoder"].get_input_embeddings().weight
    result.update(
        {
            "config": asdict(cfg),
            "eval_threads": torch.get_num_threads(),
            "n_train": int(len(train_x)),
            "n_test": int(len(test_x)),
            "unet_params": sum(p.numel() for p in models["unet"].parameters()),
            "text_params": sum(p.numel() for p in models["text_encoder"].parameters()),
            "token_embedding_params": emb.numel(),
            "evaluation": evaluation,
            "loss_log": loss_log,
        }
    )
    # Two passes so that the size written includes the reports themselves.
    for _ in range(2):
        result["folder_bytes"] = folder_size(out)
        write_report(out, cfg, result)
    print(f"saved {out} ({result['folder_bytes'] / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
