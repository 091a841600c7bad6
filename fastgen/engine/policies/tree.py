"""Label-tree pruning: score inner nodes' prompts first and descend into the best subtrees
(in the spirit of Shanbhag et al. 2024), then eliminate among the leaves reached by paired
tests. Only the structure a user gives (`fastgen.inputs.label_tree`) is used.

Round by round:
* while inner nodes are alive, every alive unit is scored on `node_samples` shared samples;
  units whose paired test against the best gives p < `alpha` are dropped, at most `beam` of the
  rest survive, and each surviving node is replaced by its children (scored from sample 0 on the
  same samples, so they compare directly with the units already there);
* once only classes are alive, it is `PairedTest`: from `min_samples` on, every `check_every`
  samples, drop classes with p < `alpha`, until one is left or `max_samples`.

With `confidence` set, every test is the sequential rule instead (`SequentialElimination`: a
boundary that holds under repeated looks) and node levels get adaptive sample counts: a level is
first looked at after `node_min_samples`, then every `look_every` samples; it descends as soon
as at most `beam` units are left standing, or at `node_samples` (then the `beam` best by mean
error go on). Leaves are then looked at every `look_every` samples from the first round they are
all classes, until one is left or `max_samples` (undecided, with its survivors, otherwise).
With `noise_profile` as well, the tests use the known-variance boundary of that profile, with
its noise check (`SequentialElimination`'s `bound="profile"`: `coverage`, `check_level`,
`self_normalised_share`; `fastgen.engine.policies.profile_bound`) instead of the t-test.

Classes in subtrees never entered get no score (NaN, 0 samples), like pruned classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from fastgen.engine.policies.base import Policy, best_row, mean_errors
from fastgen.engine.policies.noise_profile import NoiseProfile
from fastgen.engine.policies.paired import paired_p_values
from fastgen.engine.policies.profile_bound import (
    CHECK_LEVEL,
    SELF_NORMALISED_SHARE,
    ImageWatch,
    check_watch_options,
    profile_decisions,
)
from fastgen.engine.policies.sequential import choose_profile, load_profiles, look_level
from fastgen.inputs.label_tree import LabelTree, load_label_tree


@dataclass(frozen=True)
class LabelTreePolicy(Policy):
    tree: str = ""  # path of the label-tree JSON file
    beam: int = 3
    node_samples: int = 16
    alpha: float = 2e-3
    min_samples: int = 16
    max_samples: int = 200
    check_every: int = 8
    confidence: float | None = None
    node_min_samples: int = 4
    look_every: int = 2
    noise_profile: str | tuple[str, ...] = ""  # with `confidence`: the known-variance boundary of a profile
    coverage: str = "per-image"  # with `noise_profile`: the error per image, or on average over pairs
    check_level: float = CHECK_LEVEL  # with `noise_profile`: the noise check's level per look
    self_normalised_share: float = SELF_NORMALISED_SHARE  # with `noise_profile`: error kept for switched images
    # Filled by `bind` for one set of classes: unit -> children units (inner nodes only),
    # the first round's units, and the inner nodes' (name, prompts).
    _children: dict[int, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)
    _roots: tuple[int, ...] = field(default=(), repr=False, compare=False)
    _nodes: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), repr=False, compare=False)
    # For the sequential rule: the most units one level can hold and the number of levels.
    _width: int = field(default=0, repr=False, compare=False)
    _depth: int = field(default=0, repr=False, compare=False)
    _profiles: tuple[tuple[str, NoiseProfile], ...] = field(default=(), repr=False, compare=False)
    _profile: NoiseProfile | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if not self.tree:
            raise ValueError("the tree policy needs tree=PATH, a label-tree JSON file (see fastgen.inputs.label_tree)")
        if self.beam < 1 or self.node_samples < 2:
            raise ValueError(f"need beam >= 1 and node_samples >= 2, got {self.beam}, {self.node_samples}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 2 <= self.min_samples <= self.max_samples or self.node_samples > self.max_samples:
            raise ValueError(
                f"need 2 <= min_samples <= max_samples and node_samples <= max_samples, got "
                f"{self.min_samples}, {self.max_samples}, {self.node_samples}"
            )
        if self.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.check_every}")
        if self.confidence is not None and not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        # node_min_samples is read only by the sequential rule; node_samples caps it there.
        most = self.node_samples if self.confidence is not None else self.node_min_samples
        if not 2 <= self.node_min_samples <= most:
            raise ValueError(
                f"need 2 <= node_min_samples <= node_samples, got {self.node_min_samples}, {self.node_samples}"
            )
        if self.look_every < 1:
            raise ValueError(f"look_every must be >= 1, got {self.look_every}")
        if self.noise_profile and self.confidence is None:
            raise ValueError("noise_profile is used by the sequential rule: give confidence as well")
        check_watch_options(self.coverage, self.check_level, self.self_normalised_share)
        if self.coverage == "pair-average" and not self.noise_profile:
            raise ValueError("coverage='pair-average' needs a noise profile")
        load_profiles(self)

    def check_scoring(self, settings: dict) -> None:
        """Refuse scoring settings none of the noise profiles was fitted for (flow settings are
        compared by `for_run`, once the model's schedule has filled them in)."""
        choose_profile(self, {k: v for k, v in settings.items() if not k.startswith("flow_")})

    @property
    def needs_run_facts(self) -> bool:
        return bool(self._profiles)

    def for_run(self, run: dict) -> LabelTreePolicy:
        """This policy with the profile fitted for `run`, or a `ProfileMismatch`."""
        return choose_profile(self, run)

    def start_image(self) -> ImageWatch | None:
        return ImageWatch() if self._profile is not None and self.confidence is not None else None

    def image_record(self, state) -> dict | None:
        return {"noise_check": state.as_record()} if isinstance(state, ImageWatch) else None

    # -- binding to a set of classes ------------------------------------------------------------
    def bind(self, class_names: Sequence[str]) -> LabelTreePolicy:
        tree = load_label_tree(self.tree)
        return self.bind_tree(tree, class_names)

    def bind_tree(self, tree: LabelTree, class_names: Sequence[str]) -> LabelTreePolicy:
        tree.check_classes(list(class_names))
        unit = {name: k for k, name in enumerate(class_names)}
        unit.update({node.name: len(class_names) + i for i, node in enumerate(tree.nodes)})
        children = {unit[n.name]: tuple(unit[c] for c in n.children) for n in tree.nodes}
        has_parent = {c for kids in children.values() for c in kids}
        roots = tuple(u for u in range(len(unit)) if u not in has_parent)
        nodes = tuple((n.name, n.prompts) for n in tree.nodes)
        widest = max((len(kids) for kids in children.values()), default=1)
        return dataclasses.replace(
            self, _children=children, _roots=roots, _nodes=nodes,
            _width=max(len(roots), self.beam * widest), _depth=_levels(children, roots),
        )  # fmt: skip

    def extra_units(self) -> list[tuple[str, tuple[str, ...]]]:
        return list(self._nodes)

    def initial_units(self, n_classes: int) -> list[int]:
        if not self._roots:
            raise RuntimeError("the tree policy was not bound to the classes (Policy.bind)")
        return list(self._roots)

    # -- decisions ------------------------------------------------------------------------------
    def first_round(self) -> int:
        return self.node_samples if self.confidence is None else self.node_min_samples

    def pair_alpha(self) -> float:
        """The sequential rule's error per comparison: 1 - `confidence` split evenly over the
        tree's levels (the leaves' round included), and within a level over the comparisons with
        the leader (a union bound over the widest level)."""
        return (1.0 - self.confidence) / max(self._depth, 1) / max(self._width - 1, 1)

    def next_round(self, class_errors, alive, state=None):
        if self.confidence is not None:
            return self._next_round_sequential(class_errors, alive, state)
        n_done = class_errors.shape[1]
        best = best_row(class_errors, alive)
        p = paired_p_values(class_errors, best)
        if any(u in self._children for u in alive):
            passing = [i for i in range(len(alive)) if i == best or p[i] >= self.alpha]
            return self._descend(class_errors, alive, passing), n_done
        if n_done < self.min_samples:
            return list(alive), self.min_samples
        kept = [c for i, c in enumerate(alive) if i == best or p[i] >= self.alpha]
        if len(kept) == 1 or n_done >= self.max_samples:
            return kept, None
        return kept, min(n_done + self.check_every, self.max_samples)

    def _next_round_sequential(self, class_errors, alive, state=None):
        n_done = class_errors.shape[1]
        best = best_row(class_errors, alive)
        if self._profile is not None:
            worse = profile_decisions(
                class_errors, best, self._profile, self.pair_alpha(), tightest_at=1.0,
                coverage=self.coverage, max_samples=self.max_samples, check_level=self.check_level,
                self_normalised_share=self.self_normalised_share, watch=state,
            )  # fmt: skip
        else:
            worse = paired_p_values(class_errors, best) < look_level("mixture", n_done, 0, self.pair_alpha(), 2.0)
        standing = [i for i in range(len(alive)) if i == best or not worse[i]]
        if any(u in self._children for u in alive):
            if len(standing) <= self.beam or n_done >= self.node_samples:
                return self._descend(class_errors, alive, standing), n_done
            return [alive[i] for i in standing], min(n_done + self.look_every, self.node_samples)
        kept = [alive[i] for i in standing]
        if len(kept) == 1 or n_done >= self.max_samples:
            return kept, None
        return kept, min(n_done + self.look_every, self.max_samples)

    def decided(self, alive: list[int]) -> bool:
        """Whether the run ended with one class standing (False: `max_samples` came first)."""
        return len(alive) == 1

    def _descend(self, class_errors, alive: list[int], passing: list[int]) -> list[int]:
        """The `beam` best of the units that pass the test (rows `passing`), inner nodes replaced
        by their children."""
        means = mean_errors(class_errors).numpy()
        chosen = sorted(passing, key=lambda i: (means[i], alive[i]))[: self.beam]
        next_units: list[int] = []
        for i in sorted(chosen):
            unit = alive[i]
            next_units.extend(self._children.get(unit, (unit,)))
        return next_units


def _levels(children: dict[int, tuple[int, ...]], roots: tuple[int, ...]) -> int:
    """The number of rounds a descent can take: the inner levels on the longest path, plus the
    leaves' round."""

    def inner_depth(unit: int) -> int:
        kids = children.get(unit)
        return 0 if kids is None else 1 + max(inner_depth(k) for k in kids)

    return max((inner_depth(r) for r in roots), default=0) + 1
