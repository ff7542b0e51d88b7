"""A small home for the Python API's tests and docstring examples: planted ratings as a DataFrame, ingested, and a
small model trained on them (seconds, not minutes: three epochs of one narrow member)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from recae.synth import SynthSpec, generate

#: Settings that keep a training to a few seconds on the planted ratings below.
SMALL = {"epochs": 3, "ensemble": 1, "hidden": (16,)}


def planted_ratings(n_users: int = 150, n_movies: int = 120, n_ratings: int = 6000, seed: int = 3) -> pd.DataFrame:
    """Half-star ratings with a planted structure (recae.synth), as a DataFrame of the API's columns."""
    synth = generate(SynthSpec(n_users=n_users, n_movies=n_movies, n_ratings=n_ratings, seed=seed))
    return pd.DataFrame({"user_id": synth.user_ids, "movie_id": synth.movie_ids, "rating": synth.ratings,
                         "timestamp": synth.timestamps})


@dataclass
class ApiHome:
    home: Path
    ratings: pd.DataFrame
    store: Any  # recae.Store
    model: Any  # recae.Model


@pytest.fixture(scope="session")
def api_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiHome]:
    import recae

    home = tmp_path_factory.mktemp("api") / "home"
    ratings = planted_ratings()
    store = recae.open_store(home)
    store.ingest(ratings)
    model = store.train(split="random", **SMALL)
    yield ApiHome(home, ratings, store, model)
    store.engine.dispose()
