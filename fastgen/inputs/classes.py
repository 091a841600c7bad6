"""Candidate classes and their prompts (or label indices).

A `ClassSpec` holds, per class, a display name, one or more prompts, and optionally the label
index a class-conditional model knows it by. It is built from a list of names with templates, a
text file (one name per line), a comma list, a `prompt,classname,classidx` CSV, a mapping
from name to label index, or `builtin:NAME`, a standard label set shipped as data (ImageNet-1k,
CIFAR-10/100, STL-10, Pets, Flowers-102, Food-101, model-vs-human) with its published templates.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TEMPLATES = ("a photo of a {}.",)
AGGREGATES = ("mean", "min")
LABEL_SET_PREFIX = "builtin:"
# Shipped as package data beside the embedded models; read by path rather than imported, since
# `fastgen.builtin` is a higher layer than this module.
LABEL_SET_DIR = Path(__file__).resolve().parent.parent / "builtin" / "labelsets"
# Spellings beyond case, '-', '_' and spaces, which never matter ('CIFAR-10' is 'cifar10').
LABEL_SET_ALIASES = {"imagenet1k": "imagenet", "oxfordpets": "pets", "oxfordiiitpets": "pets"}


@dataclass(frozen=True)
class ClassSpec:
    """Class names, the prompts of each class, and optional label indices.

    `aggregate` says how the errors of several prompts of one class combine: `mean` (default)
    averages them per sample; `min` keeps the prompt with the lowest mean error ("best prompt
    wins", as in the public reference code).
    """

    names: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    labels: tuple[int, ...] | None = None
    aggregate: str = "mean"

    def __post_init__(self):
        if not self.names:
            raise ValueError("no classes were given: pass class names, for example classes=['cat', 'dog']")
        seen: set[str] = set()
        duplicates = sorted({n for n in self.names if n in seen or seen.add(n)})
        if duplicates:
            raise ValueError(f"duplicate class names: {duplicates}; each class must be named once")
        for name, prompts in zip(self.names, self.prompts, strict=True):
            if not name.strip():
                raise ValueError("a class name is empty; remove the blank entry from the classes")
            if not prompts or any(not p.strip() for p in prompts):
                raise ValueError(f"class {name!r} has an empty prompt; give every class a prompt")
        if self.labels is not None and len(self.labels) != len(self.names):
            raise ValueError("labels must give one label index per class")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")

    def __len__(self) -> int:
        return len(self.names)

    def with_units(self, extra: list[tuple[str, tuple[str, ...]]]) -> ClassSpec:
        """These classes followed by `extra` scoring units (name, prompts), such as a label
        tree's inner nodes; the first `len(self)` entries stay the classes."""
        if not extra:
            return self
        names = self.names + tuple(name for name, _ in extra)
        prompts = self.prompts + tuple(tuple(p) for _, p in extra)
        return ClassSpec(names, prompts, labels=None, aggregate=self.aggregate)

    @property
    def flat_prompts(self) -> list[str]:
        return [p for prompts in self.prompts for p in prompts]

    @property
    def prompts_of_class(self) -> list[list[int]]:
        """For each class, the indices of its prompts in `flat_prompts`."""
        indices, first = [], 0
        for prompts in self.prompts:
            indices.append(list(range(first, first + len(prompts))))
            first += len(prompts)
        return indices

    @property
    def prompt_class(self) -> list[int]:
        """The class index of each entry of `flat_prompts`."""
        return [k for k, prompts in enumerate(self.prompts) for _ in prompts]


@dataclass(frozen=True)
class LabelSet:
    """A standard dataset's class names in its label order, with the prompt templates used with
    it in published zero-shot evaluations.

    `prompt_names` are what a template's `{}` is filled with: the class names unless the set
    says otherwise (Li et al.'s Pets prompts say "Abyssinian cat" for the class "Abyssinian").
    """

    name: str
    title: str
    source: str
    classes: tuple[str, ...]
    prompt_names: tuple[str, ...]
    templates: tuple[str, ...]

    def spec(self, *, templates: Sequence[str] | str | None = None, aggregate: str = "mean") -> ClassSpec:
        """The classes as a `ClassSpec`, in this set's templates unless `templates` are given."""
        templates = _check_templates(self.templates if templates is None else templates)
        prompts = tuple(tuple(t.format(n) for t in templates) for n in self.prompt_names)
        return ClassSpec(self.classes, prompts, aggregate=aggregate)


def label_set_names() -> list[str]:
    """The names of the shipped label sets, for `builtin:NAME`."""
    return sorted(path.stem for path in LABEL_SET_DIR.glob("*.json"))


def is_label_set(classes: object) -> bool:
    """Whether `classes` names a shipped label set (`builtin:NAME`), known or not."""
    return isinstance(classes, str) and classes.startswith(LABEL_SET_PREFIX)


def _squash(name: str) -> str:
    return "".join(c for c in name.lower() if c not in "-_ ")


def load_label_set(name: str) -> LabelSet:
    """The shipped label set `builtin:NAME` (or a bare `NAME`); an unknown name lists the sets."""
    key = _squash(name.removeprefix(LABEL_SET_PREFIX))
    known = {_squash(n): n for n in label_set_names()}
    found = known.get(key) or LABEL_SET_ALIASES.get(key)
    if found is None:
        available = ", ".join(LABEL_SET_PREFIX + n for n in label_set_names())
        raise ValueError(f"unknown label set {name!r}; the shipped label sets are {available}")
    data = json.loads((LABEL_SET_DIR / f"{found}.json").read_text(encoding="utf-8"))
    classes = tuple(data["classes"])
    prompt_names = tuple(data.get("prompt_names", classes))
    if len(prompt_names) != len(classes):  # a hand-edited file; the shipped ones are tested
        raise ValueError(f"label set file {found}.json: prompt_names and classes differ in length")
    return LabelSet(found, data["title"], data["source"], classes, prompt_names, tuple(data["templates"]))


def _check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str):
        templates = [templates]
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates is empty; pass at least one template such as 'a photo of a {}.'")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} must contain exactly one '{{}}' where the class name goes")
    return templates


def _read_names_file(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n and not n.startswith("#")]


def _read_prompt_csv(path: Path, aggregate: str) -> ClassSpec:
    """Rows of `prompt,classname,classidx`; rows of one class are its prompts."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    required = {"prompt", "classname", "classidx"}
    if not rows or not required <= set(rows[0]):
        raise ValueError(
            f"class file {path} must be a CSV with a header 'prompt,classname,classidx' and at "
            f"least one row; found columns {sorted(rows[0]) if rows else 'none'}"
        )
    by_class: dict[str, list[str]] = {}
    label_of: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        name = (row["classname"] or "").strip()
        try:
            label = int(row["classidx"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}:{line}: classidx must be an integer, got {row['classidx']!r}") from None
        if label_of.setdefault(name, label) != label:
            raise ValueError(f"{path}:{line}: class {name!r} appears with two class indices")
        by_class.setdefault(name, []).append(row["prompt"] or "")
    names = tuple(by_class)
    return ClassSpec(
        names,
        tuple(tuple(by_class[n]) for n in names),
        labels=tuple(label_of[n] for n in names),
        aggregate=aggregate,
    )


def build_classes(
    classes: ClassSpec | str | Path | Sequence[str] | Mapping[str, int] | None,
    *,
    templates: Sequence[str] | str | None = None,
    aggregate: str = "mean",
) -> ClassSpec:
    """Turn any accepted form of `classes` into a validated `ClassSpec`.

    * a `ClassSpec`: returned as is;
    * `builtin:NAME`: a shipped label set (`label_set_names()`), in its own templates unless
      `templates` are given;
    * a path to a `.csv` file: `prompt,classname,classidx` rows (templates are not applied);
    * a path to another file: one class name per line;
    * a string with commas: a comma-separated list of names;
    * a sequence of names, or a mapping name -> label index for class-conditional models.
    """
    if isinstance(classes, ClassSpec):
        return classes
    if classes is None:
        raise ValueError("no classes were given: pass classes=['cat', 'dog', ...] or a class file")
    if is_label_set(classes):
        return load_label_set(classes).spec(templates=templates, aggregate=aggregate)
    labels = None
    if isinstance(classes, (str, Path)):
        path = Path(classes)
        if path.suffix.lower() == ".csv" and path.is_file():
            return _read_prompt_csv(path, aggregate)
        if path.is_file():
            names = _read_names_file(path)
        elif isinstance(classes, str) and "," in classes:
            names = [n.strip() for n in classes.split(",")]
        elif isinstance(classes, Path) or path.suffix:
            raise FileNotFoundError(f"class file {path} does not exist")
        else:
            names = [classes]
    elif isinstance(classes, Mapping):
        names, labels = list(classes), tuple(int(v) for v in classes.values())
    elif isinstance(classes, Iterable):
        names = [str(n) for n in classes]
    else:
        raise TypeError(f"classes must be names, a file path or a ClassSpec, got {type(classes)}")
    templates = _check_templates(DEFAULT_TEMPLATES if templates is None else templates)
    prompts = tuple(tuple(t.format(n) for t in templates) for n in names)
    return ClassSpec(tuple(names), prompts, labels=labels, aggregate=aggregate)
