"""Options shared by the subcommands, and the one `KEY=VALUE` parser every command uses.

Choices come from the registries (`LOSSES`, `POLICIES`, `BACKENDS`, `TIMESTEP_MODES`), so a new
loss, policy or backend appears on the command line without an edit here. Numeric options are
checked by argparse types, so an error names the option the user typed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fastgen.backends import BACKENDS
from fastgen.engine.policies import POLICIES, policy_options
from fastgen.engine.sampling import TIMESTEP_MODES
from fastgen.inputs.classes import AGGREGATES
from fastgen.losses import LOSSES


def parse_option(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` with VALUE as bool, int, float, a comma list of those, or a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    parts = [_scalar(v) for v in value.split(",")]
    return key.strip().replace("-", "_"), tuple(parts) if len(parts) > 1 else parts[0]


def _scalar(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and scoring")
    group.add_argument("--model", default="builtin:digits", help="hub id, folder or builtin:NAME")
    group.add_argument("--classes", help="file with one name per line, a prompt CSV, or a comma list")
    group.add_argument("--template", action="append", dest="templates", help="prompt template with {} (repeatable)")
    group.add_argument("--aggregate", choices=AGGREGATES, default="mean", help="combine several prompts of a class")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    group.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default fp32)")
    group.add_argument("--batch-size", type=int, default=64, help="denoiser rows per batch")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--loss", choices=LOSSES, default="l2")
    group.add_argument("--timesteps", choices=TIMESTEP_MODES, default="even")
    group.add_argument("--weighting", type=float, default=0.0, help="k in w(t)=exp(-k t); 0 is uniform")
    group.add_argument("--local-files-only", action="store_true", help="never touch the network")
    group.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints (trusted only)")
    add_backend_options(parser)
    policy = parser.add_argument_group("adaptive evaluation")
    policy.add_argument("--policy", choices=POLICIES, default=None, help="default: the model's, else paired")
    policy.add_argument("--n-samples", type=int_list, help="exhaustive: N; stages: N1,N2,...")
    policy.add_argument("--to-keep", type=int_list, help="stages: K1,K2,...")
    policy.add_argument("--alpha", type=float, help="paired, tree: drop a class when p < alpha")
    policy.add_argument("--min-samples", type=int, help="paired, tree: samples before the first test")
    policy.add_argument("--max-samples", type=int, help="paired, tree: cap on samples per class")
    policy.add_argument("--check-every", type=int, help="paired, tree: samples between tests")
    policy.add_argument("--screen-samples", type=int, help="paired: samples of a first screening round for every class")
    policy.add_argument("--screen-keep", type=int, help="paired: classes kept after the screening round")
    policy.add_argument("--tree", help="tree: label-tree JSON file (inner nodes with prompts over the classes)")
    policy.add_argument("--beam", type=int, help="tree: inner nodes kept per round")
    policy.add_argument("--node-samples", type=int, help="tree: samples per inner-node round")


def add_backend_options(parser: argparse.ArgumentParser, *, backends: tuple[str, ...] = ()) -> None:
    """`--backend` (the registry's names, plus `backends`), `--export-dir`, `--backend-option`."""
    group = parser.add_argument_group("denoiser backend")
    group.add_argument(
        "--backend", choices=(*backends, *BACKENDS), default=None,
        help="default: the model as loaded, in eager torch",
    )  # fmt: skip
    group.add_argument("--export-dir", type=Path, help="export cache (default: ~/.cache/fastgen/exports)")
    group.add_argument(
        "--backend-option", type=parse_option, action="append", dest="backend_options", metavar="KEY=VALUE",
        help="e.g. compile=true, cuda_graphs=true, exporter=torchscript, batch_sizes=1,32,64 (repeatable)",
    )  # fmt: skip


def policy_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options of every registered policy that were given; `make_policy` keeps the chosen one's."""
    names = {name for cls in POLICIES.values() for name in policy_options(cls)} - {"n_samples"}
    options = {name: getattr(args, name, None) for name in sorted(names)}
    if args.n_samples is not None:
        options["n_samples"] = args.n_samples[0] if args.policy == "exhaustive" else args.n_samples
    return {k: v for k, v in options.items() if v is not None}


def classifier_from_args(args: argparse.Namespace, *, device: str | None = None):
    """The classifier the model and scoring options describe; `device` overrides `--device`."""
    from fastgen.api import DiffusionClassifier

    return DiffusionClassifier.from_pretrained(
        args.model,
        classes=args.classes,
        templates=args.templates,
        aggregate=args.aggregate,
        device=device or args.device,
        dtype=args.dtype,
        policy=args.policy,
        policy_options=policy_options_from_args(args),
        loss=args.loss,
        timesteps=args.timesteps,
        weighting=args.weighting,
        seed=args.seed,
        batch_size=args.batch_size,
        local_files_only=args.local_files_only or None,
        allow_pickle=args.allow_pickle,
        backend=args.backend,
        backend_options=dict(args.backend_options or []),
        export_dir=args.export_dir,
    )

