"""The store: real SQLite, real Alembic migrations run from code, shipped inside the wheel."""

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

from recae.db import SCHEMA_HEAD, Base, current_revision, make_engine, migrations_dir, open_store, upgrade

ROOT = Path(__file__).resolve().parents[1]


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
