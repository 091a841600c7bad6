"""Options shared by the subcommands, and the one `KEY=VALUE` parser every command uses.

Choices come from the registries (`LOSSES`, `POLICIES`, `BACKENDS`, `TIMESTEP_MODES`), so a new
loss, policy or backend appears on the command line without an edit here. Numeric options are
checked by argparse types, so an error names the option the user typed.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastgen.api import DTYPES
from fastgen.backends import BACKENDS
from fastgen.commands.outputs import check_folder
from fastgen.commands.types import (
    error_weights_value,
    finite_float,
    int_in,
    open_probability,
    positive_float,
    positive_int,
    positive_int_list,
    seed_value,
    threads_value,
)
from fastgen.engine.policies import POLICIES, policy_options
from fastgen.engine.policies.profile_bound import COVERAGES
from fastgen.engine.policies.sequential import BOUNDS
from fastgen.engine.sampling import TIMESTEP_MODES
from fastgen.export.loading import EXPORT_OPTIONS
from fastgen.inputs.classes import AGGREGATES
from fastgen.inputs.images import DEFAULT_MAX_PIXELS
from fastgen.inputs.polarity import INVERT_MODES
from fastgen.losses import LOSSES
from fastgen.models.schedules import FLOW_TIMESTEPS, FLOW_WEIGHTINGS


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


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and scoring")
    group.add_argument("--model", default="builtin:digits", help="hub id, folder or builtin:NAME")
    group.add_argument(
        "--classes",
        help="file with one name per line, a prompt CSV, a comma list, or builtin:NAME, a shipped label set "
        "(imagenet, cifar10, ...: docs/label-sets.md) (default: the model's)",
    )
    group.add_argument(
        "--template", action="append", dest="templates",
        help="prompt template with {} (repeatable; default: the model's own, with or without --classes)",
    )  # fmt: skip
    group.add_argument(
        "--aggregate", choices=AGGREGATES, default=None,
        help="combine several prompts of a class (default: the classes file's, else the model's, else mean)",
    )  # fmt: skip
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    group.add_argument("--dtype", choices=DTYPES, default=None, help="default fp32")
    group.add_argument("--batch-size", type=positive_int, default=64, help="denoiser rows per batch")
    group.add_argument("--seed", type=seed_value, default=0, help="fixes every (timestep, noise) sample; 0..2**32-1")
    group.add_argument("--loss", choices=LOSSES, default="l2")
    group.add_argument(
        "--timesteps", choices=TIMESTEP_MODES, default=None,
        help="the order of the (timestep, noise) samples (default: the model's, else even)",
    )  # fmt: skip
    group.add_argument(
        "--weighting", type=finite_float, default=0.0, help="epsilon/v models: k in w(t)=exp(-k t); 0 is uniform"
    )
    group.add_argument(
        "--error-weights", type=error_weights_value, default=None, metavar="W1,W2,...|none",
        help="weight of each band of timesteps in a class's score (default: the model's fitted ones; none: equal)",
    )  # fmt: skip
    group.add_argument(
        "--flow-timesteps", choices=FLOW_TIMESTEPS, default=None,
        help="flow models (SD3, Flux): density of the noise levels scored (default: the model's, else uniform)",
    )  # fmt: skip
    group.add_argument(
        "--flow-weighting", choices=FLOW_WEIGHTINGS, default=None,
        help="flow models: weight of each velocity error (default: the model's, else velocity)",
    )  # fmt: skip
    group.add_argument(
        "--conditioning", type=parse_option, action="append", dest="conditioning", metavar="KEY=VALUE",
        help="flow models: max_sequence_length=N; Flux also resolution=H,W and guidance=G (repeatable)",
    )  # fmt: skip
    group.add_argument(
        "--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
        help=f"refuse image files with more pixels than this, from their header (default {DEFAULT_MAX_PIXELS:,})",
    )  # fmt: skip
    group.add_argument(
        "--invert", choices=INVERT_MODES, default=None,
        help="match images to the model's ink polarity: auto (the default for a model that declares one) inverts "
        "an image whose background has the other polarity; always; never",
    )  # fmt: skip
    group.add_argument("--local-files-only", action="store_true", help="never touch the network")
    group.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints (trusted only)")
    add_backend_options(parser)
    policy = parser.add_argument_group("adaptive evaluation")
    policy.add_argument("--policy", choices=POLICIES, default=None, help="default: the model's, else paired")
    policy.add_argument("--n-samples", type=positive_int_list, help="exhaustive: N; stages: N1,N2,...")
    policy.add_argument("--to-keep", type=positive_int_list, help="stages: K1,K2,...")
    policy.add_argument("--alpha", type=open_probability, help="paired, tree: drop a class when p < alpha")
    policy.add_argument(
        "--confidence", type=open_probability,
        help="sequential, tree: for each image, the probability that its best class is never dropped (default "
        "0.99; with a noise profile and --coverage pair-average only on average over pairs)",
    )  # fmt: skip
    policy.add_argument(
        "--bound", choices=BOUNDS,
        help="sequential: the boundary; profile needs --noise-profile (default mixture; builtin:digits: profile)",
    )  # fmt: skip
    policy.add_argument(
        "--noise-profile", help="sequential, tree: a model's noise-profile JSON file (fastgen.eval.noise_fit)"
    )
    policy.add_argument(
        "--coverage", choices=COVERAGES,
        help="sequential, tree with a noise profile: per-image (the default: --confidence is each image's chance "
        "of keeping its best class, for images as quiet as the profile; noisier images are checked and bounded "
        "without it) or pair-average (a weaker statement: the chance only on average over pairs like the "
        "training pairs)",
    )  # fmt: skip
    policy.add_argument(
        "--check-level", type=open_probability,
        help="sequential, tree with a noise profile: the noise check's false-alarm level per look (default 0.1); "
        "a false alarm moves the image to the self-normalised boundary (more calls), a late one lets an image "
        "noisier than the profile be judged by it",
    )  # fmt: skip
    policy.add_argument(
        "--tightest-at", type=positive_float, help="sequential: samples where the mixture boundary is tightest"
    )
    policy.add_argument(
        "--min-samples", type=int_in(2), help="paired, sequential, tree: samples before the first test (>= 2)"
    )
    policy.add_argument("--max-samples", type=positive_int, help="paired, sequential, tree: cap on samples per class")
    policy.add_argument("--check-every", type=positive_int, help="paired, sequential, tree: samples between tests")
    policy.add_argument(
        "--screen-samples", type=positive_int, help="paired: samples of a first screening round for every class"
    )
    policy.add_argument("--screen-keep", type=positive_int, help="paired: classes kept after the screening round")
    policy.add_argument("--tree", help="tree: label-tree JSON file (inner nodes with prompts over the classes)")
    policy.add_argument("--beam", type=positive_int, help="tree: inner nodes kept per round")
    policy.add_argument("--node-samples", type=int_in(2), help="tree: samples per inner-node round")
    policy.add_argument(
        "--node-min-samples", type=int_in(2), help="tree with --confidence: samples before a level's first look"
    )
    policy.add_argument("--look-every", type=positive_int, help="tree with --confidence: samples between looks")


def _sequence_options() -> frozenset[str]:
    """Backend options whose value is a sequence (`providers`, `batch_sizes`), read from the
    backends' signatures so that a new backend's list option is collected without an edit here."""
    names = set()
    for cls in BACKENDS.values():
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if str(parameter.annotation).startswith(("list[", "tuple[", "Sequence[")):
                names.add(name)
    return frozenset(names)


SEQUENCE_OPTIONS = _sequence_options()
# Backends that run an exported file, kept in an export cache (`--export-dir`).
EXPORT_BACKENDS = tuple(EXPORT_OPTIONS)


def backend_options_from_pairs(pairs: Iterable[tuple[str, Any]] | None) -> dict[str, Any]:
    """`--backend-option` pairs as one dict. A sequence option collects its values in order, so
    `providers=A,B` and `providers=A` then `providers=B` both give ('A', 'B'), and `providers=A`
    alone gives ('A',), never the characters of A. Any other option given twice is refused: one
    of its values would be ignored."""
    options: dict[str, Any] = {}
    for key, value in pairs or []:
        if key in SEQUENCE_OPTIONS:
            options[key] = (*options.get(key, ()), *(value if isinstance(value, tuple) else (value,)))
        elif key in options:
            raise ValueError(f"--backend-option {key}= is given twice ({options[key]!r} and {value!r}): give it once")
        else:
            options[key] = value
    return options


def check_backend_args(backend: str | None, export_dir: Path | None, backend_options: dict[str, Any]) -> None:
    """Refuse, before any model loads, `--backend-option` without a backend to take it, and
    `--export-dir` without a backend that exports (it would be ignored)."""
    check_folder(export_dir, "--export-dir")
    if backend is None and backend_options:
        raise ValueError(f"--backend-option needs a backend: add --backend {' or '.join(BACKENDS)}")
    if export_dir is not None and backend not in EXPORT_BACKENDS:
        chosen = f"--backend {backend}, which exports nothing" if backend else "no --backend"
        raise ValueError(
            f"--export-dir is the export cache of --backend {' or '.join(EXPORT_BACKENDS)}; with {chosen} "
            "it would be ignored: add one of those backends or leave --export-dir out"
        )


def add_backend_options(parser: argparse.ArgumentParser, *, backends: tuple[str, ...] = ()) -> None:
    """`--backend` (the registry's names, plus `backends`), `--export-dir`, `--backend-option`."""
    group = parser.add_argument_group("denoiser backend")
    group.add_argument(
        "--backend", choices=(*backends, *BACKENDS), default=None,
        help="default: the model as loaded, in eager torch",
    )  # fmt: skip
    group.add_argument("--export-dir", type=Path, help="export cache (default: ~/.cache/fastgen/exports)")
    group.add_argument(
        "--threads", type=threads_value, default=None, metavar="N|auto",
        help="CPU threads for torch (default auto: the cores other processes leave idle, re-chosen as they come "
        "and go; FASTGEN_THREADS or OMP_NUM_THREADS, when set, give a fixed count)",
    )  # fmt: skip
    group.add_argument(
        "--backend-option", type=parse_option, action="append", dest="backend_options", metavar="KEY=VALUE",
        help="e.g. compile=true, cuda_graphs=true, exporter=torchscript, batch_sizes=1,32,64 (repeatable; a list "
        "option such as providers= takes commas or repeats)",
    )  # fmt: skip


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def given_policy_options(args: argparse.Namespace) -> dict[str, Any]:
    """The policy options (of any registered policy) given on the command line."""
    names = sorted({name for cls in POLICIES.values() for name in policy_options(cls)})
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def check_policy_options(given: dict[str, Any], policy: str, *, chosen: bool) -> dict[str, Any]:
    """The options `policy` takes, or a ValueError naming, as typed, the given options it would
    silently ignore; `--n-samples N` is the exhaustive policy's one count."""
    whose = f"--policy {policy}" if chosen else f"the model's default policy ({policy})"
    takes = policy_options(POLICIES[policy])
    unused = [name for name in given if name not in takes]
    if unused:
        raise ValueError(
            f"{', '.join(_flag(d) for d in unused)} does not apply to {whose}, which takes "
            f"{', '.join(_flag(d) for d in takes)}; choose the policy with --policy"
        )
    options = dict(given)
    low, high = options.get("min_samples"), options.get("max_samples")
    if low is not None and high is not None and low > high:
        raise ValueError(f"--min-samples {low} is more than --max-samples {high}")
    stages, keep = options.get("n_samples"), options.get("to_keep")
    if policy == "stages" and stages is not None and keep is not None and len(stages) != len(keep):
        raise ValueError(f"--n-samples and --to-keep need one value per stage each, got {len(stages)} and {len(keep)}")
    if policy == "exhaustive" and "n_samples" in options:
        if len(options["n_samples"]) != 1:
            raise ValueError(
                f"--n-samples takes one number with {whose}, got {','.join(map(str, options['n_samples']))}"
            )
        options["n_samples"] = options["n_samples"][0]
    return options


def policy_options_from_args(args: argparse.Namespace, policy: str | None = None) -> dict[str, Any]:
    """The given policy options, checked against `policy` (default: `--policy`) when known."""
    given = given_policy_options(args)
    policy = policy or args.policy
    return check_policy_options(given, policy, chosen=args.policy is not None) if policy else given


def set_threads_from_args(args: argparse.Namespace) -> None:
    """torch's CPU threads for this run (`--threads`; see `fastgen.cpu_threads`)."""
    from fastgen.cpu_threads import apply_threads, choose_threads

    apply_threads(choose_threads(getattr(args, "threads", None)))


def classifier_from_args(args: argparse.Namespace, *, device: str | None = None):
    """The classifier the model and scoring options describe; `device` overrides `--device`.
    Policy options are checked against `--policy` before the model loads, and against the
    model's default policy after."""
    from fastgen.engine.policies import PolicyOptionError, policy_name

    backend_options = backend_options_from_pairs(args.backend_options)
    check_backend_args(args.backend, args.export_dir, backend_options)
    set_threads_from_args(args)
    try:
        clf = _load_classifier(args, device, backend_options)
    except PolicyOptionError as error:  # restated in flags, as typed
        whose = f"--policy {error.policy}" if args.policy else f"the model's default policy ({error.policy})"
        raise ValueError(
            f"{', '.join(_flag(d) for d in error.unknown)} does not apply to {whose}, which takes "
            f"{', '.join(_flag(d) for d in error.valid)}; choose the policy with --policy"
        ) from None
    if args.policy is None and policy_name(clf.policy) in POLICIES:
        check_policy_options(given_policy_options(args), policy_name(clf.policy), chosen=False)
    return clf


def _load_classifier(args: argparse.Namespace, device: str | None, backend_options: dict[str, Any]):
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
        error_weights=args.error_weights,
        flow_timesteps=args.flow_timesteps,
        flow_weighting=args.flow_weighting,
        conditioning=dict(args.conditioning or []) or None,
        seed=args.seed,
        batch_size=args.batch_size,
        max_pixels=args.max_pixels,
        invert=args.invert,
        local_files_only=args.local_files_only or None,
        allow_pickle=args.allow_pickle,
        backend=args.backend,
        backend_options=backend_options,
        export_dir=args.export_dir,
    )
