"""The store: real SQLite and PostgreSQL, real Alembic migrations run from code, shipped inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from recae.errors import EXIT_ERROR
from recae.store.db import (
    SCHEMA_HEAD,
    Base,
    StoreUnavailableError,
    current_revision,
    make_engine,
    migrations_dir,
    open_store,
    upgrade,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.backends("sqlite", "postgresql")  # for every test that takes a store fixture


def test_schema_head_constant_matches_alembic_head() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_HEAD


def test_open_store_migrates_blank_database_to_head(store_url: str) -> None:
    engine = make_engine(store_url)
    assert current_revision(engine) is None
    engine = open_store(store_url)
    assert current_revision(engine) == SCHEMA_HEAD
    tables = set(inspect(engine).get_table_names())
    assert {"movies", "ratings", "ingest_runs", "model_versions", "champion", "recommendations"} <= tables


def test_migrations_match_the_orm_tables(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upgrade_twice_is_harmless(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO movies (movie_id, title, genres) VALUES (:m, :t, '')"), {"m": 1, "t": "A"})
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT title FROM movies WHERE movie_id = :m"), {"m": 1}).scalar_one() == "A"


@pytest.mark.backends("sqlite")
def test_sqlite_pragmas_are_set(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() >= 1000


def test_downgrade_to_base_removes_every_table(engine) -> None:  # type: ignore[no-untyped-def]
    upgrade(engine, "head")
    from alembic import command

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}


@pytest.mark.backends("postgresql")
def test_postgresql_cases_run_on_a_real_server(engine) -> None:  # type: ignore[no-untyped-def]
    """The PostgreSQL cases really run on PostgreSQL (no silent SQLite fallback)."""
    with engine.connect() as conn:
        assert conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"
        assert "PostgreSQL" in conn.execute(text("SELECT version()")).scalar_one()


@pytest.mark.backends("postgresql")
def test_plain_postgresql_url_uses_psycopg(store_url: str) -> None:
    engine = make_engine(store_url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        assert engine.dialect.driver == "psycopg"
        assert current_revision(engine) is None
    finally:
        engine.dispose()


@pytest.mark.backends("postgresql")
def test_concurrent_first_use_migrates_once(store_url: str) -> None:
    """Two processes opening a blank PostgreSQL store at once: one migrates, the other waits and finds it done."""
    code = ("import sys; from recae.store.db import open_store, current_revision;"
            " print(current_revision(open_store(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, store_url], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [SCHEMA_HEAD, SCHEMA_HEAD]


def test_unreachable_server_is_one_line_error() -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    expected = f"cannot connect to postgresql\\+psycopg://u:\\*\\*\\*@127.0.0.1:{port}/x"
    with pytest.raises(StoreUnavailableError, match=expected) as caught:
        open_store(f"postgresql+psycopg://u:secret@127.0.0.1:{port}/x")
    assert "\n" not in str(caught.value) and "secret" not in str(caught.value)
    assert caught.value.exit_code == EXIT_ERROR


def test_missing_psycopg_says_install_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_psycopg(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "psycopg" or name.startswith("psycopg."):
            raise ModuleNotFoundError("No module named 'psycopg'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psycopg)
    with pytest.raises(StoreUnavailableError, match=r"pip install 'recae\[postgres\]'"):
        make_engine("postgresql+psycopg://u@127.0.0.1:1/x")


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://x/y"])
def test_bad_url_is_one_line_error(url: str) -> None:
    with pytest.raises(StoreUnavailableError) as caught:
        open_store(url)
    assert "\n" not in str(caught.value)


def test_cli_unreachable_database_exits_1_with_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from recae.cli import cli

    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "--db", "postgresql://u@127.0.0.1:1/x",
                                      "db", "upgrade"])
    assert result.exit_code == EXIT_ERROR
    assert result.stderr.startswith("Error: cannot connect to postgresql+psycopg://u@127.0.0.1:1/x")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_wheel_ships_the_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("recae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "recae/_migrations/env.py" in names
    assert "recae/_migrations/script.py.mako" in names
    for script in sorted((ROOT / "migrations" / "versions").glob("*.py")):
        assert f"recae/_migrations/versions/{script.name}" in names
    assert "recae/py.typed" in names  # PEP 561: type checkers read the package's hints
    for module in sorted((ROOT / "recae").rglob("*.py")):  # every room ships (a package left off the list would not)
        assert module.relative_to(ROOT).as_posix() in names, module
