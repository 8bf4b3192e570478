"""The import graph of bootstrap/: every import a module makes (top-level or inside a function, relative ones
resolved) read from its source with ast, so a cycle is found without importing anything."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bootstrap"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _base(name: str, path: Path, level: int) -> str:
    """The package a relative import of ``level`` dots in module ``name`` starts from."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return package


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The bootstrap modules ``name`` imports, wherever in the module the import statement is."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _base(name, path, node.level) if node.level else ""
            source = ".".join(part for part in (base, node.module or "") if part)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"  # ``from . import log`` imports the module bootstrap.log
                yield submodule if submodule in known else source


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {target for target in imported(name, path, known) if target in known} for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (or a module importing itself): Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            component.append(node)
            if len(component) > 1 or node in graph[node]:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_relative_and_function_level_imports() -> None:
    """The walker resolves ``from ..x import y`` and imports inside functions (else a cycle could hide)."""
    graph = import_graph()
    assert "bootstrap.errors" in graph["bootstrap.k8s._config"]  # from ..errors import ...
    assert "bootstrap.log" in graph["bootstrap.k8s._config"]  # from .. import log
    assert "bootstrap.commands" in graph["bootstrap.cli"]  # from . import commands, inside a function
    assert "bootstrap.k8s" in graph["bootstrap.commands"]  # from . import k8s (a package), inside a function


def test_cycles_are_found_through_any_number_of_modules() -> None:
    """A cycle of three modules and a self-import are reported; a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert sorted(map(sorted, cycles(graph))) == [["a", "b", "c"], ["d"]]


def test_no_import_cycle_in_bootstrap() -> None:
    """No module of bootstrap/ imports itself back through others, function-level imports included."""
    assert [sorted(cycle) for cycle in cycles(import_graph())] == []


# The command layer: where the settings become capabilities (keycloak.admin_for) and errors exit codes.
COMMAND_LAYER = frozenset({"bootstrap.commands", "bootstrap.cli", "bootstrap.__main__"})


def test_only_the_command_layer_imports_keycloak() -> None:
    """The orchestrator, the protocol steps, the settings and the Kubernetes store never import keycloak."""
    importers = {name for name, deps in import_graph().items() if "bootstrap.keycloak" in deps}
    assert importers <= COMMAND_LAYER, f"below the command layer: {sorted(importers - COMMAND_LAYER)}"
