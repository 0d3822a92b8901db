"""The library's imports keep its layers: no module imports one above it, and no modules import each
other in a circle (mmindex/ARCHITECTURE.md draws the layers). Imports inside functions count too."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mmindex"

# bottom first: a part may import its own layer and the layers below it, never one above
LAYERS = (
    ("errors", "schema", "captions", "toy"),
    ("config", "decode", "report"),
    ("models", "s3", "progress"),
    ("store",),
    ("ingest", "query"),
    ("finetuning", "server", "demo"),
    ("jobs",),
    ("distributed",),
    ("run",),
    ("runner", "api"),
    ("cli", "__init__"),
)
LAYER_OF = {part: floor for floor, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    parts = ("mmindex", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """The mmindex modules a file imports, anywhere in it (`from a import b` counts a.b if b is one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("mmindex")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmindex"):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES.keys()
            found |= submodules or {node.module}
    return found & MODULES.keys()


GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_of_the_library_has_a_layer() -> None:
    assert {part_of(module) for module in MODULES} <= LAYER_OF.keys()


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if LAYER_OF[part_of(target)] > LAYER_OF[part_of(module)]
    )
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_no_modules_import_each_other_in_a_circle() -> None:
    circles = strongly_connected(GRAPH)
    assert not circles, "circles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in circles)


def test_the_check_finds_a_circle_and_an_upward_import() -> None:
    """The two checks above can fail: a made-up graph with both faults is caught."""
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": set()}) == [{"a", "b"}]
    with pytest.raises(KeyError):
        LAYER_OF[part_of("mmindex.somewhere_new")]  # a new top-level part must be given a layer
    assert LAYER_OF[part_of("mmindex.store.reader")] < LAYER_OF[part_of("mmindex.query.search")]


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components with more than one member (the circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    edges = defaultdict(set, graph)

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in list(graph):
        if node not in index:
            visit(node)
    return found
