"""The house plan holds: rooms import only rooms below them, no import loop, no oversized module, no shim packages,
and the tests live in the rooms they test.

Why: a loop means two modules cannot be read (or changed) apart, an arrow up means a room cannot be understood
without the rooms built on it, and a module past a few hundred lines usually holds two jobs. The import graph
counts every import: at the top of a file, inside functions (a lazy import is still a dependency a reader must
follow) and under ``if TYPE_CHECKING:`` (a type named in a signature is part of what a reader must know).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recae"
TESTS = Path(__file__).resolve().parent
MAX_LINES = 500

#: The map of the house, bottom floor first: a room may import its own modules and the rooms below it, never one
#: above. A subpackage is a room of its own name; a module at the package root sits in the room ROOT_MODULES gives.
FLOORS: tuple[tuple[str, str], ...] = (
    ("base", "errors, exit codes, paths, settings readers, threads and locks: what every room leans on"),
    ("synthetic", "planted rating data for tests, benchmarks and `recae synth`"),
    ("store", "the database: tables, migrations, ingest, readers, writers, the rating matrix"),
    ("evaluation", "splits, metrics, baselines, click data and held-out reports: pure, seeded, model-agnostic"),
    ("models", "the networks and rankers, with no notion of how they are trained or stored"),
    ("artifacts", "what training hands to serving: the trained model, its train config and its files"),
    ("training", "fitting the models: the loop, ensembles, blends, tuning, checkpoints"),
    ("serving", "published versions: registry, recommendations, fold-in, similar films, HTTP"),
    ("retrain", "the nightly job: inbox, holdout, champion against challenger"),
    ("insight", "looking inside a model: latent maps, plots, anomalies, embeddings"),
    ("api", "the Python API: Store, Model and store-free training, pandas DataFrames in and out"),
    ("cli", "the commands, and ``python -m recae``"),
)
ROOT_MODULES = {
    "recae": "base",  # __version__ and the errors; the API's names are looked up by name on first use, not imported
    "recae.__main__": "cli",
    "recae.errors": "base", "recae.paths": "base", "recae.settings": "base", "recae.threads": "base",
    "recae.locks": "base",
    "recae.synth": "synthetic", "recae.ratings_csv": "synthetic",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "_migrations" not in p.parts}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """recae modules named by the file's imports (``from recae.x import name`` names a module when it is one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in known:
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & known
            if subs:  # `from recae.store import db`: the module db, not the package
                found.update(subs)
            if len(subs) < len(node.names):
                found.add(node.module)
    return found


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


def room_of(module: str) -> str:
    """The room a module lives in: its subpackage, or for a module at the package root, ROOT_MODULES' entry."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return ROOT_MODULES[module]


def room_graph(graph: dict[str, set[str]]) -> dict[str, dict[str, set[tuple[str, str]]]]:
    """room -> room it imports -> the (importer, imported) module pairs behind that arrow."""
    rooms: dict[str, dict[str, set[tuple[str, str]]]] = {}
    for importer, imported in graph.items():
        for target in imported:
            if room_of(importer) == room_of(target):
                continue
            rooms.setdefault(room_of(importer), {}).setdefault(room_of(target), set()).add((importer, target))
    return rooms


def test_imports_inside_functions_and_under_type_checking_are_counted(tmp_path: Path) -> None:
    planted = tmp_path / "m.py"
    planted.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from recae.a import X\n"
                       "def f():\n    from recae.b import Y\n", encoding="utf-8")
    assert imported_modules(planted, {"recae.a", "recae.b"}) == {"recae.a", "recae.b"}


def test_every_room_is_on_the_map() -> None:
    floors = [room for room, _ in FLOORS]
    assert len(set(floors)) == len(floors), "a room is on two floors"
    at_root = [name for name in modules() if name.count(".") <= 1 and not (PACKAGE / name.split(".")[-1]).is_dir()]
    unplaced = sorted(name for name in at_root if name not in ROOT_MODULES)
    assert not unplaced, f"modules at the package root with no room in ROOT_MODULES: {unplaced}"
    rooms = {room_of(name) for name in modules()}
    assert rooms <= set(floors), f"rooms missing from FLOORS: {sorted(rooms - set(floors))}"
    assert set(ROOT_MODULES.values()) <= set(floors)


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Every import whose room is not on a lower floor than the importer's, as ``importer -> imported (why)``."""
    floor = {room: level for level, (room, _) in enumerate(FLOORS)}
    return sorted(f"{importer} -> {imported} ({room} on floor {floor[room]} imports {target} on floor {floor[target]})"
                  for room, targets in room_graph(graph).items() for target, pairs in targets.items()
                  if floor[target] >= floor[room] for importer, imported in sorted(pairs))


def test_a_planted_upward_arrow_is_found() -> None:
    planted = {"recae.models.rankers": {"recae.serving.registry", "recae.store.matrix"}, "recae.errors": set()}
    assert upward_arrows(planted) == ["recae.models.rankers -> recae.serving.registry (models on floor 4 imports "
                                      "serving on floor 7)"]


def test_every_arrow_between_rooms_points_down() -> None:
    """Counting every import (top level, deferred, TYPE_CHECKING): a room imports only rooms on lower floors."""
    upward = upward_arrows(import_graph())
    assert not upward, "arrows that do not point down:\n" + "\n".join(upward)


def test_no_loop_between_rooms() -> None:
    rooms = {room: set(targets) for room, targets in room_graph(import_graph()).items()}
    cycle = find_cycle(rooms)
    assert cycle is None, "rooms in a loop: " + " -> ".join(cycle or [])


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


#: Folders of tests/ that are not rooms and hold no test module: shared helpers and worker scripts (``support``),
#: and the benchmark scripts, which pytest never collects (``benchmarks``).
TEST_FOLDERS_NOT_ROOMS = ("support", "benchmarks")


def misplaced_test_modules(tests: Path) -> list[str]:
    """Test modules outside ``tests/<room>/`` (this map aside), room folders that are not packages, and folders
    that are neither a room nor one of TEST_FOLDERS_NOT_ROOMS.

    Why: a test is found where its code lives (tests/store/ for recae/store/), and a folder without __init__.py
    would make pytest import its modules by bare name, where two rooms' test_x.py would collide.
    """
    rooms = {room for room, _ in FLOORS}
    wrong = [f"{folder.name}/ (neither a room nor one of {TEST_FOLDERS_NOT_ROOMS})"
             for folder in sorted(tests.iterdir()) if folder.is_dir() and not folder.name.startswith((".", "_"))
             and folder.name not in rooms and folder.name not in TEST_FOLDERS_NOT_ROOMS]
    for path in sorted(tests.rglob("test_*.py")):
        where = path.relative_to(tests)
        if where == Path(Path(__file__).name):
            continue  # the map of the house covers every room, so it sits above them
        if len(where.parts) != 2 or where.parts[0] not in rooms:
            wrong.append(f"{where} (not in a folder named after a room)")
        elif not (path.parent / "__init__.py").is_file():
            wrong.append(f"{where} (tests/{where.parts[0]}/ has no __init__.py)")
    return wrong


def test_a_planted_loose_or_misfiled_test_module_is_found(tmp_path: Path) -> None:
    for name in ("test_house.py", "test_loose.py", "store/__init__.py", "store/test_db.py", "misc/__init__.py",
                 "misc/test_x.py", "store/deep/test_y.py", "support/test_z.py", "support/helper.py",
                 "models/test_no_init.py", "__pycache__/x.pyc"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("", encoding="utf-8")
    assert misplaced_test_modules(tmp_path) == [
        "misc/ (neither a room nor one of ('support', 'benchmarks'))",
        "misc/test_x.py (not in a folder named after a room)",
        "models/test_no_init.py (tests/models/ has no __init__.py)",
        "store/deep/test_y.py (not in a folder named after a room)",
        "support/test_z.py (not in a folder named after a room)",
        "test_loose.py (not in a folder named after a room)",
    ]


def test_every_test_module_lives_in_its_rooms_folder() -> None:
    """tests/ mirrors the package: tests/<room>/test_*.py, with room one of FLOORS; helpers in tests/support/."""
    wrong = misplaced_test_modules(TESTS)
    assert not wrong, "test modules outside tests/<room>/:\n" + "\n".join(wrong)
