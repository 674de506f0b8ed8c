"""The project's imports point one way: no module imports one that imports it back.

Read from the source with `ast`, imports inside functions included: an import moved into a
function to dodge a circle is still a circle. Also checks the direction the README gives,
`training → captioner, chatbot → shared`: the applications and the shared core never import
the training scripts, and the shared core imports neither application.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "captioner", "chatbot", "training", "benchmarks")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in its text (`from a import b` counts as
    a.b when a.b is a module, else as a)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            # The longest project module the name starts with: a.b.c -> a.b if a.b is one.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and not name.endswith("__init__") and name in modules:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {name: imported_modules(path, modules) - {name} for name, path in modules.items()}
    # A package's __init__ names nothing here, so an edge to a package is dropped.
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    return {name: targets - packages for name, targets in graph.items() if name not in packages}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    # benchmarks/setups.py imports the pipelines inside its functions (they load TensorFlow).
    assert "training.captioner_pipeline" in graph["benchmarks.setups"]
    assert "training.chatbot_pipeline" in graph["benchmarks.setups"]


def test_find_cycle_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_one_that_imports_it_back():
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize(
    "importer, forbidden",
    [
        ("shared", ("captioner", "chatbot", "training", "benchmarks")),
        ("captioner", ("chatbot", "training", "benchmarks")),
        ("chatbot", ("captioner", "training", "benchmarks")),
        ("training", ("benchmarks",)),
    ],
)
def test_imports_point_one_way(importer, forbidden):
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if module.split(".")[0] == importer
        for target in targets
        if target.split(".")[0] in forbidden
    )
    assert wrong == []
