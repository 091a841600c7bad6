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

Classes in subtrees never entered get no score (NaN, 0 samples), like pruned classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fastgen.engine.policies.base import Policy, best_row, mean_errors
from fastgen.engine.policies.paired import paired_p_values
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
    # Filled by `bind` for one set of classes: unit -> children units (inner nodes only),
    # the first round's units, and the inner nodes' (name, prompts).
    _children: dict[int, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)
    _roots: tuple[int, ...] = field(default=(), repr=False, compare=False)
    _nodes: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), repr=False, compare=False)

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
        return dataclasses.replace(self, _children=children, _roots=roots, _nodes=nodes)

    def extra_units(self) -> list[tuple[str, tuple[str, ...]]]:
        return list(self._nodes)

    def initial_units(self, n_classes: int) -> list[int]:
        if not self._roots:
            raise RuntimeError("the tree policy was not bound to the classes (Policy.bind)")
        return list(self._roots)

    # -- decisions ------------------------------------------------------------------------------
    def first_round(self) -> int:
        return self.node_samples

    def next_round(self, class_errors, alive):
        n_done = class_errors.shape[1]
        best = best_row(class_errors, alive)
        p = paired_p_values(class_errors, best)
        if any(u in self._children for u in alive):
            return self._descend(class_errors, alive, p, best), n_done
        if n_done < self.min_samples:
            return list(alive), self.min_samples
        kept = [c for i, c in enumerate(alive) if i == best or p[i] >= self.alpha]
        if len(kept) == 1 or n_done >= self.max_samples:
            return kept, None
        return kept, min(n_done + self.check_every, self.max_samples)

    def _descend(self, class_errors, alive: list[int], p: np.ndarray, best: int) -> list[int]:
        """The `beam` best units that pass the test, inner nodes replaced by their children."""
        means = mean_errors(class_errors).numpy()
        passing = [i for i in range(len(alive)) if i == best or p[i] >= self.alpha]
        chosen = sorted(passing, key=lambda i: (means[i], alive[i]))[: self.beam]
        next_units: list[int] = []
        for i in sorted(chosen):
            unit = alive[i]
            next_units.extend(self._children.get(unit, (unit,)))
        return next_units
