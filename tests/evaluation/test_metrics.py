"""Metrics against values worked out by hand, and properties that must hold for any input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from recae.evaluation.metrics import (
    RankingMetrics,
    Scorer,
    mae,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    rating_metrics,
    recall_at_k,
    rmse,
    top_k_unseen,
)
from recae.store.matrix import IdIndex, RatingMatrix

ratings = arrays(np.float64, st.integers(1, 60), elements=st.floats(1.0, 5.0))


class TableScorer:
    """A scorer that returns a fixed (n_users, n_movies) table: the right answer is known in advance."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = np.asarray(table, dtype=np.float64)

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.table[rows, cols]

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.table[rows]


def matrix(entries: list[tuple[int, int, float]], n_users: int, n_movies: int) -> RatingMatrix:
    index = IdIndex(np.arange(1, n_users + 1), np.arange(1, n_movies + 1))
    if not entries:
        return RatingMatrix.from_positions(np.zeros(0), np.zeros(0), np.zeros(0), None, index)
    rows, cols, values = zip(*entries, strict=True)
    return RatingMatrix.from_positions(np.array(rows), np.array(cols), np.array(values), None, index)


# ---------------------------------------------------------------------------------------------------------
# RMSE and MAE


def test_rmse_and_mae_by_hand() -> None:
    pred, true = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 5.0])
    assert rmse(pred, true) == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert mae(pred, true) == pytest.approx((1 + 0 + 2) / 3)


@given(ratings, st.floats(-3.0, 3.0))
def test_constant_offset_gives_its_size(true: np.ndarray, c: float) -> None:
    assert rmse(true + c, true) == pytest.approx(abs(c), abs=1e-9)
    assert mae(true + c, true) == pytest.approx(abs(c), abs=1e-9)


@given(ratings, st.integers(0, 2**32 - 1))
def test_rmse_is_at_least_mae_and_zero_only_when_exact(true: np.ndarray, seed: int) -> None:
    pred = true + np.random.default_rng(seed).normal(0, 1, true.size)
    assert rmse(pred, true) >= mae(pred, true) - 1e-12
    assert mae(pred, true) >= 0
    assert rmse(true, true) == 0.0


def test_mismatched_or_empty_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        rmse(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="zero ratings"):
        mae(np.ones(0), np.ones(0))


def test_rating_metrics_uses_every_test_rating() -> None:
    test = matrix([(0, 0, 4.0), (0, 2, 2.0), (1, 1, 5.0)], n_users=2, n_movies=3)
    scorer = TableScorer(np.full((2, 3), 4.0))
    result = rating_metrics(scorer, test)
    assert result.n_test == 3
    assert result.rmse == pytest.approx(math.sqrt((0 + 4 + 1) / 3))
    assert result.mae == pytest.approx((0 + 2 + 1) / 3)
    assert isinstance(scorer, Scorer)


# ---------------------------------------------------------------------------------------------------------
# Ranking metrics on hit matrices


@st.composite
def hit_matrices(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n_users = draw(st.integers(1, 8))
    k = draw(st.integers(1, 12))
    hits = draw(arrays(np.bool_, (n_users, k)))
    extra = draw(arrays(np.int64, n_users, elements=st.integers(0, 20)))
    n_relevant = np.maximum(hits.sum(axis=1) + extra, 1)  # a user cannot hit more films than are relevant
    return hits, n_relevant


@given(hit_matrices())
def test_ranking_metrics_lie_in_unit_interval(data: tuple[np.ndarray, np.ndarray]) -> None:
    hits, n_relevant = data
    for values in (precision_at_k(hits), recall_at_k(hits, n_relevant), ndcg_at_k(hits, n_relevant)):
        assert values.shape == (hits.shape[0],)
        assert np.all(values >= 0) and np.all(values <= 1 + 1e-12)


@given(st.integers(1, 15), st.integers(1, 30))
def test_perfect_ranking_has_ndcg_one(k: int, n_relevant: int) -> None:
    hits = np.zeros((1, k), dtype=bool)
    hits[0, : min(k, n_relevant)] = True  # every relevant film first
    assert ndcg_at_k(hits, np.array([n_relevant]))[0] == pytest.approx(1.0)
    assert recall_at_k(hits, np.array([n_relevant]))[0] == pytest.approx(min(k, n_relevant) / n_relevant)


def test_later_hits_count_less() -> None:
    early = np.array([[True, False, False]])
    late = np.array([[False, False, True]])
    assert ndcg_at_k(early, np.array([1]))[0] == pytest.approx(1.0)
    assert ndcg_at_k(late, np.array([1]))[0] == pytest.approx(1 / math.log2(4))
    assert precision_at_k(early)[0] == precision_at_k(late)[0] == pytest.approx(1 / 3)


def test_users_without_relevant_films_are_refused_by_per_user_metrics() -> None:
    with pytest.raises(ValueError, match="at least one relevant"):
        recall_at_k(np.zeros((1, 3), dtype=bool), np.array([0]))


# ---------------------------------------------------------------------------------------------------------
# Top-k ranking and the end-to-end ranking metrics


@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 20), st.integers(1, 25))
@settings(max_examples=60)
def test_top_k_never_returns_seen_films_and_is_the_best_unseen(seed: int, batch: int, n_movies: int,
                                                               k: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(batch, n_movies))
    seen = rng.random((batch, n_movies)) < 0.4
    top = top_k_unseen(scores, seen, k)
    assert top.shape == (batch, min(k, n_movies))
    for b in range(batch):
        unseen = np.flatnonzero(~seen[b])
        expected = unseen[np.argsort(-scores[b, unseen], kind="stable")][:k]
        returned = top[b][top[b] >= 0]
        assert not seen[b, returned].any()
        np.testing.assert_array_equal(returned, expected)  # scores are distinct, so the order is unique
        assert np.all(top[b][returned.size :] == -1)  # short lists are padded with -1


def test_two_users_by_hand() -> None:
    # k = 3, relevant = held-out rating >= 4. Movies 0..5.
    # User 0 trained on film 0; held out 1 (5 stars), 2 (4), 3 (2). Ranking without film 0: 2, 3, 4.
    #   hits [1, 0, 0], 2 relevant: precision 1/3, recall 1/2, ndcg 1 / (1 + 1/log2 3).
    # User 1 trained on film 5; held out 0 (4 stars), 4 (3). Ranking without film 5: 1, 0, 4.
    #   hits [0, 1, 0], 1 relevant: precision 1/3, recall 1, ndcg (1/log2 3) / 1.
    # User 2 has only a 2-star held-out film: skipped. User 3 has no held-out film: not counted at all.
    train = matrix([(0, 0, 3.0), (1, 5, 4.0), (2, 1, 3.0), (3, 2, 5.0)], n_users=4, n_movies=6)
    test = matrix([(0, 1, 5.0), (0, 2, 4.0), (0, 3, 2.0), (1, 0, 4.0), (1, 4, 3.0), (2, 3, 2.0)], 4, 6)
    table = np.array(
        [
            [9, 1, 8, 7, 6, 0],  # film 0 scores highest but was rated in training
            [4, 5, 2, 1, 3, 10],  # film 5 scores highest but was rated in training
            [1, 2, 3, 4, 5, 6],
            [1, 2, 3, 4, 5, 6],
        ],
        dtype=float,
    )
    ndcg_user0 = 1 / (1 + 1 / math.log2(3))
    ndcg_user1 = 1 / math.log2(3)
    expected = RankingMetrics(
        precision=1 / 3, recall=(1 / 2 + 1) / 2, ndcg=(ndcg_user0 + ndcg_user1) / 2, k=3, n_users=2, n_skipped=1
    )
    for batch_users in (1, 2, 1024):
        result = ranking_metrics(TableScorer(table), train, test, k=3, threshold=4.0, batch_users=batch_users)
        assert result.n_users == expected.n_users and result.n_skipped == expected.n_skipped
        assert result.k == 3
        assert result.precision == pytest.approx(expected.precision)
        assert result.recall == pytest.approx(expected.recall)
        assert result.ndcg == pytest.approx(expected.ndcg)


def test_training_films_scored_highest_are_still_excluded() -> None:
    # The scorer puts every training film on top, then the relevant held-out films: an honest ranking
    # must skip the training films and find a perfect list.
    rng = np.random.default_rng(3)
    n_users, n_movies, k = 30, 40, 5
    train_mask = rng.random((n_users, n_movies)) < 0.3
    test_mask = ~train_mask & (rng.random((n_users, n_movies)) < 0.3)
    test_values = rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], size=(n_users, n_movies))
    table = np.where(train_mask, 100.0, np.where(test_mask & (test_values >= 4), 50.0, rng.random((n_users, n_movies))))
    train = matrix([(r, c, 3.0) for r, c in zip(*np.nonzero(train_mask), strict=True)], n_users, n_movies)
    test = matrix([(r, c, test_values[r, c]) for r, c in zip(*np.nonzero(test_mask), strict=True)], n_users, n_movies)
    result = ranking_metrics(TableScorer(table), train, test, k=k, threshold=4.0)
    assert result.n_users > 0
    assert result.ndcg == pytest.approx(1.0)
    n_rel = ((test_values >= 4) & test_mask).sum(axis=1)
    n_rel = n_rel[n_rel > 0]
    assert result.precision == pytest.approx(np.mean(np.minimum(n_rel, k) / k))
    assert result.recall == pytest.approx(np.mean(np.minimum(n_rel, k) / n_rel))


def test_k_beyond_the_catalogue_counts_missing_places_as_misses() -> None:
    train = matrix([(0, 0, 3.0)], n_users=1, n_movies=3)
    test = matrix([(0, 1, 5.0)], n_users=1, n_movies=3)
    result = ranking_metrics(TableScorer(np.array([[0.0, 2.0, 1.0]])), train, test, k=5, threshold=4.0)
    assert result.precision == pytest.approx(1 / 5)
    assert result.recall == pytest.approx(1.0)
    assert result.ndcg == pytest.approx(1.0)


def test_no_relevant_user_gives_nan_and_counts_the_skipped() -> None:
    train = matrix([(0, 0, 3.0)], n_users=2, n_movies=3)
    test = matrix([(0, 1, 2.0), (1, 2, 3.0)], n_users=2, n_movies=3)
    result = ranking_metrics(TableScorer(np.zeros((2, 3))), train, test, k=2, threshold=4.0)
    assert result.n_users == 0 and result.n_skipped == 2
    assert math.isnan(result.precision) and math.isnan(result.ndcg)


def test_mismatched_matrices_are_refused() -> None:
    with pytest.raises(ValueError, match="share one IdIndex"):
        ranking_metrics(TableScorer(np.zeros((2, 3))), matrix([], 2, 3), matrix([], 2, 4), threshold=4.0)


def test_above_max_users_a_seeded_sample_is_scored_and_says_so() -> None:
    """Users 0..199: even users' one held-out relevant film is ranked first (NDCG 1), odd users' is last (NDCG 0);
    a sample of 100 scores about half, names the 200 it came from, repeats with its seed, and threads agree."""
    n_users, n_movies = 200, 30
    train = matrix([(u, 0, 3.0) for u in range(n_users)], n_users, n_movies)
    test = matrix([(u, 1, 5.0) for u in range(n_users)], n_users, n_movies)
    table = np.tile(np.linspace(0.0, 1.0, n_movies), (n_users, 1))
    table[0::2, 1] = 2.0  # the relevant film on top for even users
    table[1::2, 1] = -1.0  # and at the bottom for odd ones
    full = ranking_metrics(TableScorer(table), train, test, k=5, threshold=4.0, max_users=None)
    assert (full.n_users, full.of_users, full.ndcg) == (200, 0, pytest.approx(0.5))
    sample = ranking_metrics(TableScorer(table), train, test, k=5, threshold=4.0, max_users=100)
    assert (sample.n_users, sample.of_users) == (100, 200)
    assert 0.3 < sample.ndcg < 0.7 and sample.ndcg * 100 == pytest.approx(round(sample.ndcg * 100))
    assert ranking_metrics(TableScorer(table), train, test, k=5, threshold=4.0, max_users=100).ndcg == sample.ndcg
    from recae.evaluation.metrics import list_quality

    one_thread = list_quality(TableScorer(table), train, test, ks=(5,), threshold=4.0, max_users=100, threads=1,
                              batch_users=7).at[5]
    assert one_thread.ndcg == pytest.approx(sample.ndcg)
