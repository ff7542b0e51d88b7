"""Shared fixtures: a real SQLite store per test, and the real MovieLens data when it is present."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from recae.db import open_store

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """URL of a fresh SQLite file (migrated on first open)."""
    return f"sqlite:///{tmp_path / 'recae.db'}"


@pytest.fixture
def engine(store_url: str) -> Engine:
    """A real, migrated SQLite store in a temporary folder."""
    eng = open_store(store_url)
    yield eng
    eng.dispose()


def shared_dataset(name: str) -> Path:
    """Path of a real dataset in ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name} not found at {path} (tests on real data need ../shared/data)")
    return path


@pytest.fixture
def ml100k() -> Path:
    return shared_dataset("ml-100k")


@pytest.fixture
def ml1m() -> Path:
    return shared_dataset("ml-1m")


@pytest.fixture
def ml_latest_small() -> Path:
    return shared_dataset("ml-latest-small")
