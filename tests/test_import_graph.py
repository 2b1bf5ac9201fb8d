"""The package's import graph has no cycle, read from the source (no module is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# The core imports no CLI, training loop or task: here even imports deferred into functions
# must not close a cycle (a deferred import hides a cycle, it does not remove it).
CORE = {
    "sparseadapter.budget",
    "sparseadapter.config",
    "sparseadapter.errors",
    "sparseadapter.masks",
    "sparseadapter.sparsify",
    "sparseadapter.targets",
}


def _modules(src: Path) -> dict[str, Path]:
    found = {}
    for path in (src / "sparseadapter").rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _imports(name: str, path: Path, known: set[str], in_functions: bool) -> set[str]:
    """The package modules ``name`` imports when it is imported (``in_functions``: or later, from
    inside a function). ``if TYPE_CHECKING:`` blocks never run."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not in_functions:
                continue
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package[: len(package) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)
            else:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child])
                    elif isinstance(child, ast.ExceptHandler):
                        visit(child.body)

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in known and m != name}


def import_graph(src: Path, in_functions: bool = False) -> dict[str, set[str]]:
    modules = _modules(src)
    return {n: _imports(n, p, set(modules), in_functions) for n, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that starts and ends at the same module, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_the_walker_sees_imports_and_cycles():
    graph = import_graph(SRC)
    assert "sparseadapter.masks" in graph["sparseadapter.sparsify"]
    assert "sparseadapter.scoring.synflow" in graph["sparseadapter.scoring"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_at_import_time():
    cycle = find_cycle(import_graph(SRC))
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("in_functions", [False, True])
def test_no_import_cycle_through_the_core(in_functions):
    graph = import_graph(SRC, in_functions)
    core = {n for n in graph if n in CORE or n.startswith("sparseadapter.scoring")}
    cycle = find_cycle({n: graph[n] & core for n in core})
    assert cycle is None, " -> ".join(cycle)
