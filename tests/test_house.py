"""The house plan holds: no import loop between recae's modules, no oversized module, no shim packages.

Why: a loop means two modules cannot be read (or changed) apart, and a module past a few hundred lines usually
holds two jobs. The import graph counts every import that runs, the ones inside functions included: a lazy
import is still a dependency a reader must follow. Imports under ``if TYPE_CHECKING:`` only name types for
annotations and never run, so they are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recae"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "_migrations" not in p.parts}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """recae modules named by the file's imports (``from recae.x import name`` names a module when it is one)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                   for stmt in node.body for inner in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in known:
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & known
            if subs:  # `from recae.store import db`: the module db, not the package
                found.update(subs)
            if len(subs) < len(node.names):
                found.add(node.module)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported_modules(path, known) - {name} for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as a path a -> ... -> a, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_loop() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_imports_under_type_checking_are_left_out(tmp_path: Path) -> None:
    planted = tmp_path / "m.py"
    planted.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from recae.a import X\n"
                       "def f():\n    from recae.b import Y\n", encoding="utf-8")
    assert imported_modules(planted, {"recae.a", "recae.b"}) == {"recae.b"}


def test_no_import_loop_between_recae_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import loop: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_oversized(name: str) -> None:
    lines = modules()[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES}): split it by job"


def test_package_inits_only_hand_names_on() -> None:
    """A folder's __init__.py holds its docstring and re-exports, never code a reader must look for there."""
    for path in PACKAGE.rglob("__init__.py"):
        if "_migrations" in path.parts or path.parent in (PACKAGE, PACKAGE / "cli"):
            continue  # recae/__init__.py: the lazy public names; cli/__init__.py: the click group
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            assert isinstance(node, (ast.Expr, ast.Import, ast.ImportFrom)), f"{path}: code at line {node.lineno}"
