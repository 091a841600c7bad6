"""A label tree: inner nodes with their own prompts, over the classes as leaves.

The label-tree policy scores a node's prompt before its subtree, so a hierarchy lets a large
label set be searched top-down. The file is JSON:

```json
{"nodes": [
  {"name": "4..", "prompts": ["a handwritten number four any any"], "children": ["40.", "41."]},
  {"name": "40.", "prompt": "a handwritten number four zero any", "children": ["four zero zero"]}
]}
```

* `name`: unique, and different from every class name.
* `prompts` (a list) or `prompt` (one string): what the model is conditioned on for the node.
  A node's prompt should describe what all of its leaves share, in words the model was trained
  on; a model that never saw such prompts gives the policy nothing to go on.
* `children`: names of nodes or of classes. Each node and class has at most one parent. Nodes
  that are nobody's child are the roots; classes under no node are scored from the start.

`nodes` may also be an object mapping each name to its `prompt(s)` and `children`; other
top-level keys (a description, a list of roots) are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class LabelTreeError(ValueError):
    """A label-tree file is malformed; the message says where."""


@dataclass(frozen=True)
class TreeNode:
    name: str
    prompts: tuple[str, ...]
    children: tuple[str, ...]


@dataclass(frozen=True)
class LabelTree:
    nodes: tuple[TreeNode, ...]

    def __post_init__(self):
        names = [n.name for n in self.nodes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise LabelTreeError(f"label tree: node names {duplicates} are used more than once")
        parents: dict[str, str] = {}
        for node in self.nodes:
            if not node.children:
                raise LabelTreeError(f"label tree: node {node.name!r} has no children")
            if not node.prompts or any(not p.strip() for p in node.prompts):
                raise LabelTreeError(f"label tree: node {node.name!r} needs a non-empty prompt")
            for child in node.children:
                if child in parents:
                    raise LabelTreeError(
                        f"label tree: {child!r} is a child of both {parents[child]!r} and {node.name!r}"
                    )
                parents[child] = node.name
        self._check_acyclic(parents)

    def _check_acyclic(self, parents: dict[str, str]) -> None:
        for start in parents:
            seen, current = {start}, start
            while current in parents:
                current = parents[current]
                if current in seen:
                    raise LabelTreeError(f"label tree: the nodes under {current!r} form a cycle")
                seen.add(current)

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def check_classes(self, class_names: tuple[str, ...] | list[str]) -> None:
        """Every child must be a node or a class; no node may share a class's name."""
        known = set(class_names)
        clash = sorted(known & set(self.node_names))
        if clash:
            raise LabelTreeError(f"label tree: node names {clash[:5]} are also class names; rename the nodes")
        nodes = set(self.node_names)
        unknown = sorted({c for n in self.nodes for c in n.children if c not in nodes and c not in known})
        if unknown:
            raise LabelTreeError(
                f"label tree: children {unknown[:5]} are neither nodes nor classes of this classifier "
                f"({len(unknown)} unknown)"
            )


def parse_label_tree(data: Any, *, source: str = "label tree") -> LabelTree:
    raw_nodes = data.get("nodes") if isinstance(data, dict) else None
    if isinstance(raw_nodes, dict):  # {name: {prompt(s), children}} is accepted too
        raw_nodes = [{"name": name, **spec} for name, spec in raw_nodes.items() if isinstance(spec, dict)]
    if not isinstance(raw_nodes, list):
        raise LabelTreeError(f"{source}: expected a JSON object with a list (or an object) under 'nodes'")
    nodes = []
    for index, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise LabelTreeError(f"{source}: node {index} needs a 'name' string")
        prompts = raw.get("prompts", [raw["prompt"]] if "prompt" in raw else [])
        children = raw.get("children", [])
        if not all(isinstance(v, str) for v in [*prompts, *children]):
            raise LabelTreeError(f"{source}: node {raw['name']!r}: prompts and children must be strings")
        nodes.append(TreeNode(raw["name"], tuple(prompts), tuple(children)))
    return LabelTree(tuple(nodes))


def load_label_tree(path: str | Path) -> LabelTree:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label tree file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LabelTreeError(f"label tree file {str(path)!r} is not valid JSON ({error})") from None
    return parse_label_tree(data, source=f"label tree file {str(path)!r}")
