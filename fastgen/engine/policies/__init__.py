"""Adaptive evaluation policies: how many shared-noise samples to score, and which classes stay.

`base.py` holds the interface; `fixed.py` the fixed schedules (exhaustive, Li et al.'s stages),
`paired.py` successive elimination by paired tests (with optional screening), `tree.py`
label-tree pruning. `POLICIES` is the registry the command line and `make_policy` read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastgen.engine.policies.base import Policy
from fastgen.engine.policies.fixed import LI_IMAGENET, Exhaustive, FixedStages
from fastgen.engine.policies.paired import PairedTest, paired_p_values
from fastgen.engine.policies.tree import LabelTreePolicy

POLICIES: dict[str, type[Policy]] = {
    "exhaustive": Exhaustive,
    "stages": FixedStages,
    "paired": PairedTest,
    "tree": LabelTreePolicy,
}
DEFAULT_POLICY = "paired"


def policy_options(policy: type[Policy] | Policy) -> tuple[str, ...]:
    """The option names a policy takes: its dataclass fields (not the `_` ones `bind` fills)."""
    return tuple(f.name for f in dataclasses.fields(policy) if not f.name.startswith("_"))


def make_policy(name: str | Policy | None = None, **options: Any) -> Policy:
    """Build a policy from its registry name and its options; options another policy takes
    (or left as None) are ignored, so one set of command-line options serves every policy."""
    if isinstance(name, Policy):
        return name
    name = name or DEFAULT_POLICY
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {tuple(POLICIES)}, got {name!r}")
    cls = POLICIES[name]
    return cls(**{k: options[k] for k in policy_options(cls) if options.get(k) is not None})


def policy_name(policy: Policy) -> str:
    """The registry name of a policy object (its class name for a policy defined elsewhere)."""
    return next((name for name, cls in POLICIES.items() if type(policy) is cls), type(policy).__name__)


def describe_policy(policy: Policy) -> dict[str, Any]:
    """`{"name": ..., option: value, ...}`: what `make_policy(**d)` rebuilds, and what results record."""
    values = {f: getattr(policy, f) for f in policy_options(policy)} if dataclasses.is_dataclass(policy) else {}
    return {"name": policy_name(policy), **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}


__all__ = [
    "DEFAULT_POLICY",
    "LI_IMAGENET",
    "POLICIES",
    "Exhaustive",
    "FixedStages",
    "LabelTreePolicy",
    "PairedTest",
    "Policy",
    "describe_policy",
    "make_policy",
    "paired_p_values",
    "policy_name",
    "policy_options",
]
