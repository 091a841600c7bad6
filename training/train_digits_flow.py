"""Train `builtin:digits-flow`: a rectified-flow transformer in the Stable Diffusion 3 layout on
the scikit-learn digits.

The denoiser is a `diffusers.SD3Transformer2DModel` (MMDiT: joint attention over image patches
and text tokens, adaLN on the timestep and pooled text) working directly on 8x8 grayscale pixels
(no VAE), conditioned like SD3 on two `CLIPTextModelWithProjection` encoders reading the real
CLIP BPE tokens of "a handwritten digit {name}" (no T5, as SD3 allows). The conditioning is
computed by `StableDiffusion3Pipeline.encode_prompt` (`fastgen.models.sd3_text`), in training
exactly as when fastgen classifies. Training follows SD3's recipe: x_t = (1 - s) x0 + s eps with
s drawn logit-normal (mean 0, std 1), the transformer fed the timestep 1000 s, and the loss the
mean squared error of the velocity v = eps - x0. Same digits and split as `builtin:digits`.

    python -m training.train_digits_flow --out fastgen/builtin/digits-flow --seed 0 --threads 1

trains with the shipped settings (the defaults), saves the folder, then measures held-out
accuracy through the engine users run for every timestep choice and weighting
(`--report-only` re-measures a saved folder) and writes `TRAINING.md` / `training.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastgen.builtin.digits_data import CLASS_NAMES, INPUT_DESCRIPTION, SPLIT_SEED, TEMPLATE, digits_split, prompts
from fastgen.models.sd3_text import encode_sd3_prompts, sd3_text_pipeline
from training.engine_report import engine_accuracy
from training.train_digits import (
    LossLog,
    OptimizerConfig,
    _cast_copy,
    build_tokenizer,
    clip_text_config,
    cpu_name,
    folder_size,
    lr_at,
    optimizer_and_emas,
    optimizer_step,
    to_model_input,
)

PIPELINE_CLASS = "StableDiffusion3Pipeline"
TEXT_PARTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


@dataclass
class FlowTrainConfig(OptimizerConfig):
    steps: int = 5000
    lr: float = 5e-4
    # Text encoders (two CLIPs, as SD3 has; no T5).
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 2
    text_intermediate: int = 64
    projection_dim: int = 32
    max_length: int = 8
    max_sequence_length: int = 0  # T5 tokens; with no T5 they are zeros, so none are kept
    # Transformer.
    num_layers: int = 6
    num_attention_heads: int = 4
    attention_head_dim: int = 16
    patch_size: int = 2
    qk_norm: str = "rms_norm"
    # Flow: timesteps s ~ sigmoid(N(logit_mean, logit_std)); the scheduler's shift at this size.
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    num_train_timesteps: int = 1000
    save_dtype: str = "float16"
    split_seed: int = SPLIT_SEED
    eval_samples: list[int] = field(default_factory=lambda: [25])
    eval_seed: int = 0


def build_models(cfg: FlowTrainConfig, tokenizer) -> dict[str, Any]:
    """Fresh transformer, two text encoders and scheduler for `cfg` (torch's RNG draws the weights)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    def text_encoder():
        return CLIPTextModelWithProjection(clip_text_config(cfg, tokenizer, projection_dim=cfg.projection_dim))

    inner = cfg.num_attention_heads * cfg.attention_head_dim
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=cfg.patch_size,
        in_channels=1,
        out_channels=1,
        num_layers=cfg.num_layers,
        attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=2 * cfg.text_hidden,  # the two CLIP widths side by side
        caption_projection_dim=inner,
        pooled_projection_dim=2 * cfg.projection_dim,
        pos_embed_max_size=8 // cfg.patch_size,
        qk_norm=cfg.qk_norm,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.num_train_timesteps, shift=cfg.shift)
    return {
        "transformer": transformer,
        "scheduler": scheduler,
        "text_encoder": text_encoder(),
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder(),
        "tokenizer_2": tokenizer,
    }


def train(cfg: FlowTrainConfig, workdir: Path, log_every: int = 250) -> dict[str, Any]:
    """Train from `cfg.seed`; returns the EMA models plus a loss log."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    tokenizer = build_tokenizer(workdir / "tokenizer", cfg.max_length)
    models = build_models(cfg, tokenizer)
    transformer = models["transformer"].train()
    texts = torch.nn.ModuleList([models["text_encoder"], models["text_encoder_2"]]).train()
    pipeline = sd3_text_pipeline(models)
    sigmas = models["scheduler"].sigmas.float()  # [T], descending: index i of the training grid

    train_x, train_y, _, _ = digits_split(cfg.split_seed)
    x_all = to_model_input(train_x)
    y_all = torch.as_tensor(train_y)
    class_prompts = prompts()
    opt, ema_transformer, ema_texts = optimizer_and_emas(transformer, texts, cfg)

    n = x_all.shape[0]
    perm, cursor = torch.randperm(n, generator=gen), 0
    progress = LossLog(cfg.steps, log_every)
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > n:
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        x0 = x_all[idx]
        # SD3's sampling of the training timestep: u logit-normal, then the scheduler's grid.
        u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(x0.shape[0], generator=gen))
        index = (u * cfg.num_train_timesteps).long().clamp(max=cfg.num_train_timesteps - 1)
        s = sigmas.flip(0)[index]  # ascending grid, so a larger u is more noise
        eps = torch.randn(x0.shape, generator=gen)
        x_t = (1 - s).view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * eps
        embeds, pooled = encode_sd3_prompts(
            pipeline, class_prompts, max_sequence_length=cfg.max_sequence_length, device="cpu"
        )
        labels = y_all[idx]
        prediction = transformer(
            x_t,
            encoder_hidden_states=embeds[labels],
            pooled_projections=pooled[labels],
            timestep=s * cfg.num_train_timesteps,
            return_dict=False,
        )[0]
        loss = torch.nn.functional.mse_loss(prediction, eps - x0)
        params = list(transformer.parameters()) + list(texts.parameters())
        value = optimizer_step(opt, loss, params, step, cfg, [(ema_transformer, transformer), (ema_texts, texts)])
        progress.add(step, value, lr_at(step, cfg))
    trained = dict(models)
    trained.update(
        transformer=ema_transformer.shadow, text_encoder=ema_texts.shadow[0], text_encoder_2=ema_texts.shadow[1]
    )
    return {"models": trained, "log": progress.log, "train_seconds": progress.seconds}


def defaults(cfg: FlowTrainConfig) -> dict[str, Any]:
    """The model's fastgen.json: classes, template, input convention and conditioning length."""
    return {
        "classes": list(CLASS_NAMES),
        "templates": [TEMPLATE],
        "policy": {},
        "conditioning": {"max_sequence_length": cfg.max_sequence_length},
        "input": {"polarity": "bright-on-dark", "description": INPUT_DESCRIPTION},
    }


def save(models: dict[str, Any], out: Path, cfg: FlowTrainConfig) -> Path:
    """The diffusers SD3 layout (no vae/, no T5), weights in `cfg.save_dtype`."""
    from fastgen.models.clip_vocab import write_clip_tokenizer
    from fastgen.models.layout import save_model_folder

    dtype = getattr(torch, cfg.save_dtype)
    for sub in ("transformer", "scheduler", *TEXT_PARTS):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    components = {
        "transformer": _cast_copy(models["transformer"], dtype),
        "scheduler": models["scheduler"],
        "text_encoder": _cast_copy(models["text_encoder"], dtype),
        "tokenizer": models["tokenizer"],
        "text_encoder_2": _cast_copy(models["text_encoder_2"], dtype),
        "tokenizer_2": models["tokenizer"],
    }
    # Absent components are recorded as diffusers records them: [null, null].
    absent = {name: [None, None] for name in ("vae", "text_encoder_3", "tokenizer_3")}
    save_model_folder(out, components, pipeline_class=PIPELINE_CLASS, extra=absent, defaults=defaults(cfg))
    for name in ("tokenizer", "tokenizer_2"):  # the compact vocab.json / merges.txt form
        shutil.rmtree(out / name)
        write_clip_tokenizer(out / name, model_max_length=cfg.max_length)
    return out


# ----------------------------------------------------------------------------- report

# Every timestep density x weighting a flow model can be scored with (fastgen.models.schedules).
REPORT_CHOICES = [
    (density, weighting)
    for density in ("uniform", "logit-normal", "shifted")
    for weighting in ("velocity", "sd3", "epsilon")
]


def report(out: Path, cfg: FlowTrainConfig, n_samples: int, choices=REPORT_CHOICES) -> list[dict[str, Any]]:
    """Held-out accuracy on all held-out digits for each (density, weighting), through the engine."""
    _, _, test_x, test_y = digits_split(cfg.split_seed)
    rows = []
    for density, weighting in choices:
        r = engine_accuracy(
            out, list(test_x), test_y, n_samples=n_samples, seed=cfg.eval_seed,
            scoring={"flow_timesteps": density, "flow_weighting": weighting},
        )  # fmt: skip
        print(f"{density:>12} {weighting:>8}  n={n_samples}: {r['accuracy']:.4f} ({r['n_errors']} errors)", flush=True)
        keys = ("n_samples", "n_images", "accuracy", "n_errors", "seconds")
        rows.append({"flow_timesteps": density, "flow_weighting": weighting, **{k: r[k] for k in keys}})
    return rows


def write_training_md(out: Path, cfg: FlowTrainConfig, result: dict[str, Any]) -> None:
    rows = "\n".join(
        f"| `{r['flow_timesteps']}` | `{r['flow_weighting']}` | {r['n_samples']} | {r['accuracy']:.4f} | "
        f"{r['n_errors']} / {r['n_images']} | {r['seconds']:.0f} |"
        for r in result.get("evaluation", [])
    )
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    lines = [
        "# builtin:digits-flow",
        "",
        "A rectified-flow transformer in the Stable Diffusion 3 layout, trained by the project on the",
        "scikit-learn digits (8x8 grayscale, the same 75/25 split as `builtin:digits`), so that the",
        "real SD3 code path (diffusers' `SD3Transformer2DModel` and `StableDiffusion3Pipeline.encode_prompt`)",
        "is what classifies.",
        "",
        f"* `transformer`: `SD3Transformer2DModel` on 1 x 8 x 8 pixels (no VAE), patch {cfg.patch_size}, "
        f"{cfg.num_layers} joint blocks, width {inner} ({cfg.num_attention_heads} heads), qk norm `{cfg.qk_norm}`.",
        f"* `text_encoder`, `text_encoder_2`: `CLIPTextModelWithProjection` (width {cfg.text_hidden}, "
        f"{cfg.text_layers} layers, projection {cfg.projection_dim}) on the real CLIP BPE vocabulary, "
        f"{cfg.max_length} tokens; no T5 (`text_encoder_3` absent, as SD3 allows) and "
        f"`max_sequence_length` {cfg.max_sequence_length} (`fastgen.json` `conditioning`), so the",
        f"  joint-attention sequence is the {cfg.max_length} CLIP tokens.",
        f"* `scheduler`: `FlowMatchEulerDiscreteScheduler`, {cfg.num_train_timesteps} steps, shift {cfg.shift} "
        "(an 8x8 image needs no resolution shift, so `shifted` timesteps equal `uniform` ones here).",
        f"* training: x_t = (1 - s) x0 + s eps, s ~ sigmoid(N({cfg.logit_mean}, {cfg.logit_std})) (SD3's logit-normal),",
        "  the transformer fed 1000 s, loss the mean squared velocity error (v = eps - x0); AdamW with",
        "  warm-up and cosine decay, EMA weights saved.",
        f"* prompts: `{TEMPLATE}` with the class names {', '.join(CLASS_NAMES)}.",
        "* input: uint8 image -> `u8 / 255 * 2 - 1`, bright ink on black (`fastgen.json` declares the",
        "  polarity, so dark-on-white digits are inverted first).",
        "",
        "## Reproduce",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"Training took {result['train_seconds']:.0f} s on {result['threads']} CPU thread(s) ({result['machine']}).",
        "",
        "## Held-out accuracy",
        "",
        "Measured through the engine users run (`training/engine_report.py`: the saved folder loaded",
        "with `fastgen.DiffusionClassifier.from_pretrained`, exhaustive policy, every class on the same",
        "shared (noise level, noise) samples, seed 0, l2 loss), on all held-out digits, for every",
        "timestep density and weighting (`docs/flow_matching.md`); the defaults are `uniform` and",
        "`velocity`.",
        "",
        "| flow_timesteps | flow_weighting | samples per class | accuracy | errors | seconds |",
        "|---|---|---|---|---|---|",
        rows,
        "",
        "The defaults were chosen before this measurement, from what the score means",
        "(`docs/flow_matching.md`), not from these held-out numbers. Seconds are wall time on one",
        "thread of a machine that was running other jobs on its other core.",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(asdict(cfg), indent=2),
        "```",
        "",
        f"Parameters: transformer {result['transformer_params']:,}; text encoders {result['text_params']:,} "
        "(mostly the two 49,408-token embedding tables).",
        f"Weights are stored as {cfg.save_dtype} safetensors. Folder size: {result.get('folder_bytes', 0) / 1e6:.2f} MB.",
        "",
    ]
    (out / "TRAINING.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="model folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=FlowTrainConfig.steps)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    parser.add_argument("--eval-samples", type=int, nargs="*", default=FlowTrainConfig().eval_samples)
    parser.add_argument("--report-only", action="store_true", help="re-measure the model in --out")
    parser.add_argument("--train-only", action="store_true", help="train and save; measure later")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    if args.report_only:
        result = json.loads((out / "training.json").read_text(encoding="utf-8"))
        cfg = FlowTrainConfig(**{**result["config"], "eval_samples": list(args.eval_samples)})
    else:
        cfg = FlowTrainConfig(seed=args.seed, steps=args.steps, eval_samples=list(args.eval_samples))
        command = f"python -m training.train_digits_flow --out {out} --seed {cfg.seed} --threads {args.threads}"
        if cfg.steps != FlowTrainConfig.steps:
            command += f" --steps {cfg.steps}"
        with tempfile.TemporaryDirectory() as tmp:
            trained = train(cfg, Path(tmp))
            save(trained["models"], out, cfg)
        models = trained["models"]
        result = {
            "command": command,
            "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {cpu_name()}, torch {torch.__version__}",
            "train_seconds": round(trained["train_seconds"], 1),
            "config": asdict(cfg),
            "transformer_params": sum(p.numel() for p in models["transformer"].parameters()),
            "text_params": sum(
                p.numel() for name in ("text_encoder", "text_encoder_2") for p in models[name].parameters()
            ),
            "loss_log": trained["log"],
        }
        (out / "training.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        if args.train_only:
            return
    result["config"] = asdict(cfg)
    result["eval_threads"] = torch.get_num_threads()
    result["evaluation"] = [row for n in cfg.eval_samples for row in report(out, cfg, n)]
    for _ in range(2):  # twice, so that the size written includes the reports themselves
        result["folder_bytes"] = folder_size(out)
        (out / "training.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        write_training_md(out, cfg, result)


if __name__ == "__main__":
    main()
