"""Serving recommendations from the store: precomputed top-N, filters, unknown users, no torch import."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pytest
from sqlalchemy import insert

from recae.errors import ModelNotFoundError, UnknownUserError
from recae.serving.recommend import Filters, precompute_recommendations, recommend_from_store
from recae.store.db import Champion, ModelVersion, Movie, Rating
from recae.store.matrix import IdIndex, RatingMatrix

GENRES = ("Comedy", "Drama", "Horror")


class TrueTaste:
    """A scorer that knows each user's planted favourite genre: favourite films score 5, the rest 1."""

    def __init__(self, favourite: np.ndarray, movie_genre: np.ndarray) -> None:
        self.favourite = favourite  # (n_users,) genre index
        self.movie_genre = movie_genre  # (n_movies,) genre index

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        hit = self.favourite[rows][:, None] == self.movie_genre[None, :]
        return np.where(hit, 5.0, 1.0) + 0.001 * np.arange(self.movie_genre.size)[None, :]


@pytest.fixture
def planted_store(engine):  # type: ignore[no-untyped-def]
    """30 users who each love one genre, 30 films (10 per genre, years 1990..2019); each user rated 3 films."""
    rng = np.random.default_rng(0)
    n_users, n_movies = 30, 30
    movie_genre = np.arange(n_movies) % 3
    favourite = np.arange(n_users) % 3
    users, movies = [], []
    for u in range(n_users):
        for m in rng.choice(np.flatnonzero(movie_genre == favourite[u]), 3, replace=False):
            users.append(u + 1)
            movies.append(int(m) + 101)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(insert(Movie), [
            {"movie_id": m + 101, "title": f"Film {m}", "year": 1990 + m, "genres": GENRES[movie_genre[m]]}
            for m in range(n_movies)
        ])
        conn.execute(insert(Rating), [{"user_id": u, "movie_id": m, "rating": 5.0, "timestamp": None}
                                      for u, m in zip(users, movies)])
        conn.execute(insert(ModelVersion), [{
            "version": "v1", "model": "planted", "orientation": "user", "split": "random", "seed": 0, "path": "-",
            "data_fingerprint": "-", "metrics": "{}", "config": "{}", "created_at": now}])
        index = IdIndex(np.arange(1, n_users + 1), np.arange(101, 101 + n_movies))
        rated = RatingMatrix.from_ids(np.array(users), np.array(movies), np.full(len(users), 5.0), index=index)
        precompute_recommendations(conn, "v1", TrueTaste(favourite, movie_genre), rated, n=8, batch_users=7)
        conn.execute(insert(Champion), [{"id": 1, "version": "v1", "switched_at": now}])
    return {"engine": engine, "favourite": favourite, "rated": set(zip(users, movies)), "movie_genre": movie_genre}


def test_planted_favourite_genre_comes_first_and_rated_films_never_appear(planted_store) -> None:  # type: ignore[no-untyped-def]
    engine = planted_store["engine"]
    for user_id in range(1, 31):
        recs = recommend_from_store(engine, user_id, n=5)
        assert recs is not None and len(recs) == 5
        favourite = GENRES[planted_store["favourite"][user_id - 1]]
        assert all(r.genres == favourite for r in recs)
        assert not any((user_id, r.movie_id) in planted_store["rated"] for r in recs)
        assert [r.rank for r in recs] == [1, 2, 3, 4, 5]
        assert all(a.predicted_rating >= b.predicted_rating for a, b in zip(recs, recs[1:]))


def test_filters_apply_and_exhausted_lists_ask_for_the_model(planted_store) -> None:  # type: ignore[no-untyped-def]
    engine = planted_store["engine"]
    recs = recommend_from_store(engine, 1, n=3, filters=Filters(min_year=2010))
    assert recs is not None and all(r.year >= 2010 for r in recs)
    first = recommend_from_store(engine, 1, n=2)
    assert first is not None
    excluded = recommend_from_store(engine, 1, n=2, filters=Filters(exclude=(first[0].movie_id,)))
    assert excluded is not None and first[0].movie_id not in {r.movie_id for r in excluded}
    # Only 8 films are precomputed per user; asking for 20 of a genre they never liked cannot be answered there.
    assert recommend_from_store(engine, 1, n=20, filters=Filters(genre="Horror")) is None


def test_unknown_user_names_the_known_range(planted_store) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownUserError, match=r"user 9999 is unknown; known users are 1\.\.30"):
        recommend_from_store(planted_store["engine"], 9999)


def test_no_model_says_what_to_run(engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelNotFoundError, match="recae train"):
        recommend_from_store(engine, 1)


def test_serving_does_not_import_torch() -> None:
    code = "import recae.serving.recommend, recae.cli, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_root_is_light_and_its_public_names_load_on_demand() -> None:
    code = ("import recae, sys; assert not {'numpy', 'pandas', 'sqlalchemy', 'torch'} & set(sys.modules); "
            "from recae import load_model, DataError; "
            "assert callable(load_model) and 'numpy' in sys.modules and 'torch' not in sys.modules")  # numpy reads models
    subprocess.run([sys.executable, "-c", code], check=True)
