"""Precomputed recommendations: chunked scoring gives exactly the straightforward top-N, inside one transaction."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
from sqlalchemy import insert, select

from recae.evaluation.metrics import top_k_unseen
from recae.serving.recommend import _columns, precompute_batch_users, precompute_recommendations
from recae.store.db import ModelVersion, Recommendation
from recae.store.matrix import IdIndex, RatingMatrix
from recae.store.writers import _insert_mappings, _insert_positional
from tests.support.synthetic import planted_low_rank

pytestmark = pytest.mark.backends("sqlite", "postgresql")  # the store tests run on both where PostgreSQL is

N_USERS, N_MOVIES = 23, 17


class TableScorer:
    """Scores every (user row, movie col) from a fixed table, as float32 like the models; counts its calls."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table.astype(np.float32)  # (n_users, n_movies)
        self.batches: list[int] = []

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        self.batches.append(len(rows))
        return self.table[rows]


def planted_case(seed: int = 0) -> tuple[RatingMatrix, TableScorer]:
    """23 users x 17 films with sparse, unsorted ids; distinct scores; user 0 rated every film, user 1 all but 2."""
    rng = np.random.default_rng(seed)
    user_ids = np.sort(rng.choice(np.arange(1, 10_000), N_USERS, replace=False))
    movie_ids = np.sort(rng.choice(np.arange(1, 100_000), N_MOVIES, replace=False))
    mask = rng.random((N_USERS, N_MOVIES)) < 0.3
    mask[0] = True
    mask[1] = True
    mask[1, [4, 11]] = False
    rows, cols = np.nonzero(mask)
    rated = RatingMatrix.from_positions(rows, cols, rng.integers(1, 6, rows.size).astype(np.float32), None,
                                        IdIndex(user_ids, movie_ids))
    table = rng.permutation(N_USERS * N_MOVIES).reshape(N_USERS, N_MOVIES) / 100.0 + 0.5  # no ties
    return rated, TableScorer(table)


def reference_rows(rated: RatingMatrix, table: np.ndarray, n: int) -> list[tuple[int, int, int, float]]:
    """The plain definition: score all, drop the rated films, sort by score, keep n (user_id, rank, movie_id, score)."""
    dense_rated = rated.csr.toarray() != 0
    out = []
    for row in range(rated.shape[0]):
        unseen = [c for c in range(rated.shape[1]) if not dense_rated[row, c]]
        best = sorted(unseen, key=lambda c: -table[row, c])[:n]
        user_id = int(rated.index.user_ids[row])
        out += [(user_id, rank + 1, int(rated.index.movie_ids[c]), float(np.float32(table[row, c])))
                for rank, c in enumerate(best)]
    return out


def add_version(conn, version: str) -> None:  # type: ignore[no-untyped-def]
    conn.execute(insert(ModelVersion), [{
        "version": version, "model": "table", "orientation": "user", "split": "random", "seed": 0, "path": "-",
        "data_fingerprint": "-", "metrics": "{}", "config": "{}", "created_at": datetime.now(timezone.utc)}])


def stored_rows(engine, version: str) -> list[tuple[int, int, int, float]]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(Recommendation.user_id, Recommendation.rank, Recommendation.movie_id, Recommendation.score)
            .where(Recommendation.version == version).order_by(Recommendation.user_id, Recommendation.rank))]


@pytest.mark.parametrize("batch_users", [1, 7, N_USERS, None])
@pytest.mark.parametrize("n", [1, 5, N_MOVIES + 3])
def test_chunked_precompute_equals_the_straightforward_top_n(engine, batch_users: int | None, n: int) -> None:
    rated, scorer = planted_case()
    with engine.begin() as conn:
        add_version(conn, "v1")
        written = precompute_recommendations(conn, "v1", scorer, rated, n=n, batch_users=batch_users)
    expected = reference_rows(rated, scorer.table, n)
    assert stored_rows(engine, "v1") == expected
    assert written == len(expected)
    assert sum(scorer.batches) == N_USERS
    if batch_users is not None:
        assert max(scorer.batches) == batch_users
    per_user = {u: sum(1 for r in expected if r[0] == u) for u in rated.index.user_ids.tolist()}
    assert per_user[int(rated.index.user_ids[0])] == 0  # rated everything: nothing to recommend
    assert per_user[int(rated.index.user_ids[1])] == min(n, 2)  # only two unrated films


def test_rated_films_never_appear_and_ranks_are_consecutive(engine) -> None:
    planted = planted_low_rank(n_users=60, n_movies=40, density=0.4, seed=3, user_id_offset=500)
    rated = planted.observed
    scorer = TableScorer(planted.full)  # the planted truth ranks rated films highly too: they must be skipped
    with engine.begin() as conn:
        add_version(conn, "v1")
        precompute_recommendations(conn, "v1", scorer, rated, n=10, batch_users=7)
    rows = stored_rows(engine, "v1")
    pairs = set(zip(*(rated.index.user_ids[rated.coo()[0]], rated.index.movie_ids[rated.coo()[1]])))
    assert rows and not any((u, m) in pairs for u, _, m, _ in rows)
    by_user: dict[int, list[tuple[int, float]]] = {}
    for u, rank, _, score in rows:
        by_user.setdefault(u, []).append((rank, score))
    for ranked in by_user.values():
        assert [r for r, _ in ranked] == list(range(1, len(ranked) + 1))
        assert all(a >= b for (_, a), (_, b) in zip(ranked, ranked[1:]))


def test_an_exception_later_in_the_callers_transaction_leaves_no_rows(engine) -> None:
    rated, scorer = planted_case()
    with engine.begin() as conn:
        add_version(conn, "v1")
    with pytest.raises(RuntimeError, match="after precompute"), engine.begin() as conn:
        assert precompute_recommendations(conn, "v1", scorer, rated, n=3, batch_users=5) > 0
        raise RuntimeError("after precompute")
    assert stored_rows(engine, "v1") == []


def test_a_rerun_replaces_its_version_and_keeps_the_others(engine) -> None:
    rated, scorer = planted_case()
    with engine.begin() as conn:
        add_version(conn, "v1")
        add_version(conn, "v2")
        precompute_recommendations(conn, "v1", scorer, rated, n=4)
        precompute_recommendations(conn, "v2", scorer, rated, n=2)
    scorer.table = scorer.table[:, ::-1].copy()  # a retrained v2 ranks differently
    with engine.begin() as conn:
        precompute_recommendations(conn, "v2", scorer, rated, n=3)
    assert stored_rows(engine, "v1") == reference_rows(rated, scorer.table[:, ::-1], 4)
    assert stored_rows(engine, "v2") == reference_rows(rated, scorer.table, 3)


@pytest.mark.backends("sqlite")
def test_the_portable_insert_writes_the_same_rows_as_the_sqlite_fast_path(engine) -> None:
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(10, 20), 3)
    ranks = np.tile(np.arange(1, 4), 10)
    movies = rng.integers(1, 1000, users.size)
    scores = rng.random(users.size).astype(np.float32) * 4 + 1
    ratings = rng.random(users.size).astype(np.float32) * 4 + 1
    with engine.begin() as conn:
        add_version(conn, "fast")
        add_version(conn, "portable")
        _insert_positional(conn, Recommendation, _columns("fast", users, ranks, movies, scores, ratings))
        _insert_mappings(conn, Recommendation,
                         _columns("portable", users, ranks, movies, scores, ratings))  # what PostgreSQL takes
    fast = stored_rows(engine, "fast")
    assert len(fast) == users.size and fast == stored_rows(engine, "portable")
    assert [r[3] for r in fast] == [float(s) for s in scores]


def test_nan_scores_rank_after_real_ones_and_match_the_metrics_top_k() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random((50, 30)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = np.nan
    seen = rng.random(scores.shape) < 0.3
    seen[0] = True
    scores[1, :26] = np.nan  # user 1: three real scores left among the unseen films, then NaN ones
    scores[1, 26:] = [0.99, 0.2, 0.7, 0.5]
    seen[1] = False
    seen[1, 26] = True
    ours = top_k_unseen(scores, seen, 8)
    for row in range(2, scores.shape[0]):  # a plain sort: real scores best first, then NaN ones, by column
        unseen = [c for c in range(scores.shape[1]) if not seen[row, c]]
        expected = sorted(unseen, key=lambda c: (np.isnan(scores[row, c]), -np.nan_to_num(scores[row, c]), c))[:8]
        real = [c for c in expected if not np.isnan(scores[row, c])]
        assert list(ours[row, : len(real)]) == real
        assert all(np.isnan(scores[row, c]) and not seen[row, c] for c in ours[row, len(real) : len(expected)])
    assert (ours[0] == -1).all()
    assert list(ours[1, :3]) == [28, 29, 27] and set(ours[1, 3:]) <= set(range(26))
    assert not np.take_along_axis(seen, np.maximum(ours, 0), axis=1)[ours >= 0].any()
    for row in range(2, 50):
        picked = scores[row, ours[row][ours[row] >= 0]]
        finite = picked[~np.isnan(picked)]
        assert np.all(np.diff(finite) <= 0) and not np.isnan(picked[: finite.size]).any()


def test_batch_size_keeps_a_batch_of_scores_within_the_budget() -> None:
    assert precompute_batch_users(59_047) * 59_047 * 4 <= 64 * 2**20 < (precompute_batch_users(59_047) + 1) * 59_047 * 4
    assert precompute_batch_users(10**9) == 1
    assert precompute_batch_users(0) >= 1


def test_invalid_sizes_are_refused(engine) -> None:
    rated, scorer = planted_case()
    with engine.begin() as conn, pytest.raises(ValueError, match="batch_users must be at least 1"):
        precompute_recommendations(conn, "v1", scorer, rated, batch_users=0)
    with engine.begin() as conn, pytest.raises(ValueError, match="n must be at least 1"):
        precompute_recommendations(conn, "v1", scorer, rated, n=0)


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_a_trained_autoencoder_gets_its_own_best_unrated_scores(engine, orientation: str) -> None:
    from recae.artifacts.train_config import TrainConfig
    from recae.artifacts.trained_model import TrainedModel
    from recae.models.build import model_config
    from recae.training.train import fit

    rated = planted_low_rank(n_users=45, n_movies=31, seed=5, user_id_offset=7).observed
    settings = TrainConfig(ensemble=1, weight_decay_grid=(), epochs=3, lr=1e-2, batch_ratings=300, threads=1)
    result = fit(rated, None, model_config("denoising", orientation=orientation, hidden=(10,)), settings)
    trained = TrainedModel.from_fit(result.module, rated)
    with engine.begin() as conn:
        add_version(conn, "v1")
        precompute_recommendations(conn, "v1", trained, rated, n=6, batch_users=4)
    full = trained.score_rows(np.arange(45))  # (45, 31) the reference: every score at once
    dense_rated = rated.csr.toarray() != 0
    rows = stored_rows(engine, "v1")
    for row, user_id in enumerate(rated.index.user_ids.tolist()):
        mine = [(m, s) for u, _, m, s in rows if u == user_id]
        best = np.sort(full[row][~dense_rated[row]])[::-1][:6]  # ties (clipped scores) may swap films, not scores
        scores = np.array([s for _, s in mine])
        assert scores.size == 6 and np.allclose(scores, best, rtol=0, atol=1e-5)  # BLAS sums per batch size differ
        cols = rated.index.movie_cols(np.array([m for m, _ in mine]))
        assert not dense_rated[row, cols].any()
        assert np.allclose(full[row, cols], scores, rtol=0, atol=1e-5)
