"""The package's layers, as `docs/architecture.md` draws them: every import (module-level and
inside functions) goes to the same layer or a lower one, and no modules import each other in a
cycle. Read from the source with `ast`, so an import that only runs in some branch counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first; a module may import from its own layer and the layers before it.
LAYERS: list[tuple[str, ...]] = [
    ("fastgen.optional", "fastgen.losses", "fastgen.cpu_threads"),
    ("fastgen.inputs",),
    ("fastgen.kernels",),
    ("fastgen.builtin", "fastgen.models", "fastgen.testing"),
    ("fastgen.engine",),
    ("fastgen.backends",),
    ("fastgen.export",),
    ("fastgen.api",),
    ("fastgen.eval", "fastgen.jobs"),
    ("fastgen.commands",),
    ("fastgen",),  # the package's own __init__ (lazy re-exports) and __main__
]


def _source_files() -> dict[str, Path]:
    """Module name -> file, for every module of the installed package (kernels/ included)."""
    files = {}
    for base, package in ((ROOT / "fastgen", "fastgen"), (ROOT / "kernels" / "fastgen_kernels", "fastgen.kernels")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join([package, *parts])] = path
    return files


MODULES = _source_files()


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if prefix == "fastgen":
                matches = module in ("fastgen", "fastgen.__main__")
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} is in no layer of tests/test_architecture.py"
    return best


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str) -> list[tuple[str, bool]]:
    """(imported fastgen module, runtime?) for every import statement in `module`'s source;
    imports under `if TYPE_CHECKING:` are not runtime."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, runtime: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, runtime)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, runtime) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule if submodule in MODULES else base, runtime))
        for child in ast.iter_child_nodes(node):
            visit(child, runtime)

    visit(tree, True)
    return [(name, runtime) for name, runtime in found if name in MODULES]


def test_every_module_belongs_to_a_layer_and_the_layers_cover_the_package():
    assert "fastgen.engine.runner" in MODULES and "fastgen.kernels.dispatch" in MODULES
    for module in MODULES:
        layer_of(module)


def test_no_import_goes_up_a_layer():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module in MODULES
        for target, _ in imports_of(module)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    return found


def test_no_import_cycles():
    graph = {m: {t for t, runtime in imports_of(m) if runtime and t != m} for m in MODULES}
    assert _cycles(graph) == []


def test_the_checker_sees_function_level_imports_and_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    # `classify`'s command imports the jobs inside its `run` function: it must still be seen.
    assert ("fastgen.jobs.local", True) in imports_of("fastgen.commands.classify")


@pytest.mark.parametrize("package", ["fastgen"])
def test_few_modules_lie_directly_in_the_package(package):
    flat = sorted(p.name for p in (ROOT / package).glob("*.py"))
    assert len(flat) <= 6, flat
