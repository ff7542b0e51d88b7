"""The everyday read commands touch only what they need: ``recae --help`` loads no command module, and
``recae recommend --user N`` answers a SQLite store's precomputed list through sqlite3 alone, with the same
answers and errors as the full path (SQLAlchemy, numpy, the model), which still answers whatever the list cannot."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from recae.cli import cli, load_all_commands
from recae.cli.app import COMMANDS
from recae.errors import EXIT_ERROR, UnknownGenreError, UnknownUserError
from recae.serving.stored_lists import Filters, stored_list
from tests.support.serving import ROOT, build_home

#: What the fast path must never import; ``sqlalchemy`` covers ``sqlalchemy.orm``.
FORBIDDEN = ("torch", "numpy", "pandas", "sqlalchemy")
#: Filters the stored list answers (ml-like planted catalogue: four genre mixes, years 1960..1999).
ANSWERED = [Filters(), Filters(genre="comedy"), Filters(min_year=1985), Filters(exclude=(1, 2, 3)),
            Filters(genre="Drama", min_year=1970, exclude=(10, 22))]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small published champion on planted, titled ratings (tests/support/serving.py)."""
    return build_home(tmp_path_factory.mktemp("lazy")).path


def url_of(home: Path) -> str:
    return f"sqlite:///{home / 'recae.db'}"


def invoke(home: Path, *args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args])


def modules_after(*args: str) -> list[str]:
    """The forbidden modules (and recae's command modules) a fresh interpreter holds after running ``recae ARGS``."""
    code = ("import sys; from recae.cli import cli; cli.main(sys.argv[1:], prog_name='recae', standalone_mode=False); "
            f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} "
            "or m.startswith('recae.cli.'))), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stderr.split()


def test_the_lazy_table_is_what_the_modules_register() -> None:
    load_all_commands()
    assert set(cli.commands) == set(COMMANDS)
    for name, command in cli.commands.items():
        for limit in (30, 45, 60, 200):  # recae --help shows the table's text cut as click cuts the command's
            assert click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit) == \
                command.get_short_help_str(limit), name
    assert "history" in cli.commands["models"].commands  # defined in retrain.py: `models` loads it too


def test_help_lists_every_command_without_loading_one() -> None:
    loaded = modules_after("--help")
    assert not [m for m in loaded if m.split(".")[0] in FORBIDDEN], loaded
    assert set(loaded) <= {"recae.cli.app"}, loaded
    out = subprocess.run([sys.executable, "-m", "recae", "--help"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert all(f"  {name}  " in out for name in COMMANDS) and "Recommend the films a user has not rated" in out


def test_recommend_help_still_shows_its_example() -> None:
    result = CliRunner().invoke(cli, ["recommend", "--help"])
    assert result.exit_code == 0 and "recae recommend --user 42" in result.stdout


def test_a_stored_list_imports_no_torch_numpy_pandas_or_sqlalchemy(home: Path) -> None:
    for args in (("recommend", "--user", "7"), ("recommend", "--user", "7", "--genre", "Comedy", "--exclude", "1,2",
                                                "--format", "json"), ("recommend", "--user", "7", "--format", "csv")):
        loaded = modules_after("--home", str(home), *args)
        assert not [m for m in loaded if m.split(".")[0] in FORBIDDEN], (args, loaded)
        assert "recae.cli.train" not in loaded and "recae.cli.insight" not in loaded


@pytest.mark.parametrize("filters", ANSWERED, ids=str)
def test_the_stored_list_gives_the_full_paths_answer(home: Path, filters: Filters) -> None:
    from recae.serving.recommend import recommend_from_store
    from recae.store.db import open_store

    engine = open_store(url_of(home))
    try:
        for user_id, n in ((7, 4), (42, 3), (1, 4), (1, 40)):  # 40 films: more than most filtered lists hold
            fast = stored_list(url_of(home), user_id, n, filters)
            assert fast == recommend_from_store(engine, user_id, n, filters)
            assert n == 40 or (fast is not None and len(fast) == n)
    finally:
        engine.dispose()


def test_the_command_prints_the_full_paths_json(home: Path) -> None:
    """Same records, same order, same JSON as answer_films (what `recommend` printed before the fast path)."""
    from recae.serving.recommend import answer_films
    from recae.store.db import open_store

    engine = open_store(url_of(home))
    try:
        for args, filters in ((("--genre", "Comedy", "--exclude", "4,5", "--exclude", "6"), Filters("Comedy", None,
                                                                                                    (4, 5, 6))),
                              (("--min-year", "1980", "-n", "7"), Filters(min_year=1980)), ((), Filters())):
            result = invoke(home, "recommend", "--user", "7", *args, "--format", "json")
            assert result.exit_code == 0, result.output
            n = 7 if "-n" in args else 10
            full = answer_films(engine, 7, {}, n, filters, models_dir=home / "models")
            assert full.source == "precomputed"
            assert json.loads(result.stdout) == [asdict(film) for film in full.films]
    finally:
        engine.dispose()


def test_filters_that_exhaust_the_list_go_to_the_model(home: Path) -> None:
    from recae.serving.recommend import recommend_live
    from recae.store.db import open_store

    many = Filters(genre="Drama")
    assert stored_list(url_of(home), 7, 40, many) is None
    result = invoke(home, "recommend", "--user", "7", "-n", "40", "--genre", "Drama", "--format", "json")
    engine = open_store(url_of(home))
    try:
        live = recommend_live(engine, 7, {}, 40, many, models_dir=home / "models")
    finally:
        engine.dispose()
    assert result.exit_code == 0 and json.loads(result.stdout) == [asdict(film) for film in live]


def test_unknown_user_and_genre_are_the_full_paths_errors(home: Path) -> None:
    from recae.serving.recommend import recommend_from_store
    from recae.store.db import open_store

    engine = open_store(url_of(home))
    try:
        for user_id, filters, error in ((9999, Filters(), UnknownUserError), (7, Filters(genre="Noir%"),
                                                                              UnknownGenreError)):
            with pytest.raises(error) as full:
                recommend_from_store(engine, user_id, 10, filters)
            with pytest.raises(error) as fast:
                stored_list(url_of(home), user_id, 10, filters)
            assert str(fast.value) == str(full.value)
    finally:
        engine.dispose()
    result = invoke(home, "recommend", "--user", "9999")
    assert result.exit_code == EXIT_ERROR and result.stderr.strip() == f"Error: {full_message(home, 9999)}"


def full_message(home: Path, user_id: int) -> str:
    from recae.serving.recommend import known_users_message
    from recae.store.db import open_store

    engine = open_store(url_of(home))
    try:
        with engine.connect() as conn:
            return known_users_message(conn, user_id)
    finally:
        engine.dispose()


def test_a_named_version_is_read_and_an_unknown_one_left_to_the_full_path(home: Path) -> None:
    with sqlite3.connect(home / "recae.db") as conn:
        (version,) = conn.execute("SELECT version FROM champion").fetchone()
    assert stored_list(url_of(home), 7, 5, version=version) == stored_list(url_of(home), 7, 5)
    assert stored_list(url_of(home), 7, 5, version="nope") is None
    result = invoke(home, "recommend", "--user", "7", "--model", "nope")
    assert result.exit_code == EXIT_ERROR and "model version 'nope' is not in the store" in result.stderr


def test_what_the_list_cannot_promise_goes_to_the_full_path(home: Path, tmp_path: Path) -> None:
    """A store to migrate, a model of another catalogue, no champion, a user who joined after training, a store
    that does not exist yet, PostgreSQL: None, and the command answers or fails as the full path does."""
    assert stored_list("postgresql+psycopg://u@127.0.0.1:1/x", 7) is None
    assert stored_list(f"sqlite:///{tmp_path / 'none' / 'recae.db'}", 7) is None
    assert not (tmp_path / "none").exists()  # sqlite3 created nothing

    def copy(name: str, sql: str, *params: object) -> Path:
        other = tmp_path / name
        shutil.copytree(home, other)
        with sqlite3.connect(other / "recae.db") as conn:
            conn.execute(sql, params)
        conn.close()
        return other

    older = copy("older", "UPDATE alembic_version SET version_num = '0003'")
    assert stored_list(url_of(older), 7) is None
    moved = copy("moved", "UPDATE catalogue SET identity = 'ml-1m:000000000000'")
    assert stored_list(url_of(moved), 7) is None
    result = invoke(moved, "recommend", "--user", "7")
    assert result.exit_code == EXIT_ERROR and "trained on catalogue" in result.stderr
    bare = copy("bare", "DELETE FROM champion")
    assert stored_list(url_of(bare), 7) is None
    result = invoke(bare, "recommend", "--user", "7")
    assert result.exit_code == EXIT_ERROR and "no trained model yet" in result.stderr
    joined = copy("joined", "INSERT INTO ratings (user_id, movie_id, rating, timestamp) VALUES (?, 1, 5.0, 0)", 5000)
    assert stored_list(url_of(joined), 5000) is None
    result = invoke(joined, "recommend", "--user", "5000", "--format", "json")
    assert result.exit_code == 0 and 1 not in {film["movie_id"] for film in json.loads(result.stdout)}


@pytest.mark.backends("postgresql")
def test_a_postgresql_store_still_answers_through_the_full_path(store_url: str, tmp_path: Path) -> None:
    from recae.serving.recommend import answer_films
    from recae.store.db import open_store

    path = build_home(tmp_path / "home", store_url).path
    assert stored_list(store_url, 7) is None
    result = CliRunner().invoke(cli, ["--home", str(path), "--db", store_url, "recommend", "--user", "7", "--genre",
                                      "Comedy", "--exclude", "4", "-n", "3", "--format", "json"])
    engine = open_store(store_url)
    try:
        full = answer_films(engine, 7, {}, 3, Filters("Comedy", None, (4,)), models_dir=path / "models")
    finally:
        engine.dispose()
    assert result.exit_code == 0, result.output
    assert full.source == "precomputed" and json.loads(result.stdout) == [asdict(film) for film in full.films]
