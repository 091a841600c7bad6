"""Adaptive evaluation policies: how many shared-noise samples to score, and which classes stay.

`base.py` holds the interface; `fixed.py` the fixed schedules (exhaustive, Li et al.'s stages),
`paired.py` successive elimination by paired tests (with optional screening), `sequential.py`
the same with a boundary that holds under repeated looks (a stated error), `tree.py`
label-tree pruning. `POLICIES` is the registry the command line and `make_policy` read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastgen.engine.policies.base import Policy
from fastgen.engine.policies.fixed import LI_IMAGENET, Exhaustive, FixedStages
from fastgen.engine.policies.paired import PairedTest, paired_p_values
from fastgen.engine.policies.sequential import SequentialElimination
from fastgen.engine.policies.tree import LabelTreePolicy

POLICIES: dict[str, type[Policy]] = {
    "exhaustive": Exhaustive,
    "stages": FixedStages,
    "paired": PairedTest,
    "sequential": SequentialElimination,
    "tree": LabelTreePolicy,
}
DEFAULT_POLICY = "paired"


def policy_options(policy: type[Policy] | Policy) -> tuple[str, ...]:
    """The option names a policy takes: its dataclass fields (not the `_` ones `bind` fills)."""
    return tuple(f.name for f in dataclasses.fields(policy) if not f.name.startswith("_"))


class PolicyOptionError(ValueError):
    """Options a policy does not take: named, with the ones it does take, so that a caller (the
    command line) can restate them in its own terms (flags)."""

    def __init__(
        self, unknown: list[str], policy: str, valid: tuple[str, ...], *, whose: str | None = None, hint: str = ""
    ):
        self.unknown, self.policy, self.valid = list(unknown), policy, tuple(valid)
        whose = whose or f"policy {policy!r}"
        super().__init__(
            f"{', '.join(self.unknown)} {'does' if len(self.unknown) == 1 else 'do'} not apply to {whose}, "
            f"which takes {', '.join(self.valid) or 'no options'}" + (f"; {hint}" if hint else "")
        )


def make_policy(name: str | Policy | None = None, **options: Any) -> Policy:
    """Build a policy from its registry name and its options. An option left as None means the
    policy's default; an option the policy does not take is a `PolicyOptionError` (a misspelt
    one would otherwise be dropped without a word)."""
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(name, Policy):
        if given:
            raise ValueError(
                f"policy options {sorted(given)} cannot change the ready-made policy {name!r}: build it with "
                "them, or name the policy by its registry name"
            )
        return name
    name = name or DEFAULT_POLICY
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {tuple(POLICIES)}, got {name!r}")
    cls = POLICIES[name]
    valid = policy_options(cls)
    unknown = [k for k in given if k not in valid]
    if unknown:
        raise PolicyOptionError(unknown, name, valid)
    return cls(**given)


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
    "PolicyOptionError",
    "SequentialElimination",
    "describe_policy",
    "make_policy",
    "paired_p_values",
    "policy_name",
    "policy_options",
]
