"""A full disk during ingest or publish (issue 30 row 10): one line naming where and how much is free, no SQL and
no data values, and the store as it was.

The database is made full for real: a tiny tmpfs where mounting is allowed (root), and everywhere SQLite's own
size limit (``PRAGMA max_page_count`` on every connection of the process), which fails writes with the same
SQLITE_FULL "database or disk is full" a full disk gives.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from recae.cli import cli
from recae.store.db import open_store
from tests.support.serving import build_home
from tests.store.test_ingest import snapshot, write_csv

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def database_limited_to(extra_pages: int, database: Path) -> Iterator[None]:
    """Every SQLite connection this process opens may grow ``database`` by at most ``extra_pages`` pages."""
    engine = open_store(f"sqlite:///{database}")
    with engine.connect() as conn:
        pages = int(conn.execute(text("PRAGMA page_count")).scalar_one())
    engine.dispose()

    def limit(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.execute(f"PRAGMA max_page_count={pages + extra_pages:d}")

    event.listen(Engine, "connect", limit)
    try:
        yield
    finally:
        event.remove(Engine, "connect", limit)


def _assert_one_clean_line(stderr: str, where: Path, values: list[str]) -> None:
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"Error: the disk is full at {where} (") and "MB free there" in stderr, stderr
    for leak in ("INSERT", "SELECT", "[SQL", "parameters", "sqlalche.me", "Traceback", *values):
        assert leak not in stderr, (leak, stderr)


def _rows(n: int) -> list[str]:
    return [f"{u},{m},{(u * 7 + m) % 9 / 2 + 1:g},{1_000_000 + u * 1000 + m}" for u in range(1, n // 50 + 1)
            for m in range(1, 51)]


@pytest.mark.faults
def test_ingest_into_a_full_database_is_one_line_and_loads_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    database = home / "recae.db"
    first = write_csv(tmp_path / "first.csv", ["1,1,4,5"])
    assert CliRunner().invoke(cli, ["--home", str(home), "ingest", "--ratings", str(first)]).exit_code == 0
    engine = open_store(f"sqlite:///{database}")
    before = snapshot(engine)
    big = write_csv(tmp_path / "big.csv", _rows(20_000))
    with database_limited_to(4, database):
        result = CliRunner().invoke(cli, ["--home", str(home), "ingest", "--ratings", str(big)])
    assert result.exit_code == 1, result.output
    _assert_one_clean_line(result.stderr, database, ["1000050", "big.csv"])
    assert snapshot(engine) == before
    engine.dispose()


@pytest.mark.faults
def test_publish_into_a_full_database_is_one_line_and_keeps_the_champion(tmp_path: Path) -> None:
    home = build_home(tmp_path / "home").path
    database = home / "recae.db"
    engine = open_store(f"sqlite:///{database}")
    with engine.connect() as conn:
        champion = conn.execute(text("SELECT version FROM champion")).scalar_one()
    folders = sorted(p.name for p in (home / "models").iterdir())
    config = tmp_path / "tiny.toml"
    config.write_text("[model]\nhidden = [16]\n[train]\nepochs = 2\nensemble = 1\npartner_members = 0\n"
                      "threads = 1\n")
    with database_limited_to(2, database):
        result = CliRunner().invoke(cli, ["--home", str(home), "train", "--config", str(config)])
    assert result.exit_code == 1, result.output
    _assert_one_clean_line(result.stderr.splitlines()[-1] + "\n", database, [])
    assert "Error" not in "".join(result.stderr.splitlines()[:-1])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM champion")).scalar_one() == champion
    assert sorted(p.name for p in (home / "models").iterdir() if not p.name.startswith(".")) == \
        [f for f in folders if not f.startswith(".")]
    engine.dispose()


@contextmanager
def tiny_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.faults
def test_ingest_onto_a_really_full_disk_is_one_line_and_the_store_stays_usable(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "small-disk", "3m") as disk:
        home = disk / "home"
        command = [sys.executable, "-m", "recae", "--home", str(home), "ingest", "--ratings"]
        first = write_csv(tmp_path / "first.csv", ["1,1,4,5"])
        assert subprocess.run([*command, str(first)], capture_output=True, cwd=ROOT).returncode == 0
        big = write_csv(tmp_path / "big.csv", _rows(150_000))
        failed = subprocess.run([*command, str(big)], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert failed.returncode == 1, failed.stderr
        message = failed.stderr.splitlines()[-1] + "\n"
        assert "Error" not in "".join(failed.stderr.splitlines()[:-1])
        assert message.startswith(f"Error: the disk is full at {home}"), message
        for leak in ("INSERT", "[SQL", "parameters", "Traceback"):
            assert leak not in failed.stderr
        listed = subprocess.run([sys.executable, "-m", "recae", "--home", str(home), "db", "upgrade"],
                                capture_output=True, text=True, cwd=ROOT)
        assert listed.returncode == 0, listed.stderr
        engine = open_store(f"sqlite:///{home / 'recae.db'}")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM ratings")).scalar_one() == 1
        engine.dispose()
