"""The held-out-users split (Hypothesis properties), binarisation, and the top-N metrics of Liang et al."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recae.errors import TrainingError
from recae.evaluation.clicks import (
    HeldOutUsers,
    binarize,
    evaluate_top_n,
    implicit_split,
    popularity_scorer,
    resolve_heldout,
    split_heldout_users,
    truncated_recall_at_k,
)
from recae.evaluation.metrics import recall_at_k
from recae.store.matrix import IdIndex, RatingMatrix


@st.composite
def click_matrices(draw: st.DrawFn) -> sp.csr_matrix:
    n_users = draw(st.integers(3, 40))
    n_movies = draw(st.integers(1, 25))
    density = draw(st.floats(0.05, 0.9))
    seed = draw(st.integers(0, 2**16))
    dense = np.random.default_rng(seed).random((n_users, n_movies)) < density
    return sp.csr_matrix(dense.astype(np.float32))


def _row_set(csr: sp.csr_matrix, row: int) -> set[int]:
    return set(csr.indices[csr.indptr[row] : csr.indptr[row + 1]].tolist())


@settings(max_examples=150, deadline=None)
@given(clicks=click_matrices(), n_heldout=st.integers(1, 8), fraction=st.floats(0.05, 0.95),
       seed=st.integers(0, 1000), min_items=st.integers(1, 6))
def test_split_properties(clicks: sp.csr_matrix, n_heldout: int, fraction: float, seed: int,
                          min_items: int) -> None:
    counts = np.diff(clicks.indptr)
    eligible = set(np.flatnonzero(counts >= min_items).tolist())
    if len(eligible) < 2 * n_heldout + 1:
        with pytest.raises(TrainingError, match="lower --heldout-users"):
            split_heldout_users(clicks, n_heldout, hidden_fraction=fraction, seed=seed, min_user_items=min_items)
        return
    split = split_heldout_users(clicks, n_heldout, hidden_fraction=fraction, seed=seed, min_user_items=min_items)
    train, val, test = (set(rows.tolist()) for rows in (split.train_rows, split.validation.rows, split.test.rows))
    # users: disjoint parts of exactly the eligible users, n_heldout in each held-out part
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == eligible
    assert len(val) == len(test) == n_heldout
    # items: every film a training user clicked, and nothing else; training users are kept whole
    assert split.items.tolist() == np.flatnonzero(np.diff(clicks[split.train_rows].tocsc().indptr) > 0).tolist()
    assert (split.train != clicks[split.train_rows][:, split.items]).nnz == 0
    for users in (split.validation, split.test):
        assert users.fold_in.shape == users.hidden.shape == (n_heldout, split.items.size)
        restricted = clicks[users.rows][:, split.items]
        for i in range(users.n_users):
            fold_in, hidden, full = _row_set(users.fold_in, i), _row_set(users.hidden, i), _row_set(restricted, i)
            assert not (fold_in & hidden) and fold_in | hidden == full
            n = len(full)
            if n >= 2:  # both parts non-empty whenever possible, with the share asked for
                assert len(fold_in) >= 1 and len(hidden) >= 1
                assert len(hidden) == min(max(math.floor(fraction * n), 1), n - 1)
            else:
                assert len(hidden) == 0 and len(fold_in) == n
    again = split_heldout_users(clicks, n_heldout, hidden_fraction=fraction, seed=seed, min_user_items=min_items)
    assert np.array_equal(again.test.rows, split.test.rows)
    assert (again.test.hidden != split.test.hidden).nnz == 0


def test_different_seeds_give_different_users_and_hidden_films() -> None:
    clicks = sp.csr_matrix((np.random.default_rng(0).random((200, 50)) < 0.3).astype(np.float32))
    a = split_heldout_users(clicks, 20, seed=0)
    b = split_heldout_users(clicks, 20, seed=1)
    assert not np.array_equal(a.test.rows, b.test.rows)
    assert a.test.hidden.nnz == pytest.approx(0.2 * (a.test.hidden.nnz + a.test.fold_in.nnz), rel=0.15)


def test_settings_out_of_range_are_one_line_errors() -> None:
    clicks = sp.csr_matrix(np.ones((10, 6), np.float32))
    with pytest.raises(TrainingError, match="hidden fraction"):
        split_heldout_users(clicks, 2, hidden_fraction=1.0)
    with pytest.raises(TrainingError, match="at least 1"):
        split_heldout_users(clicks, 0)
    with pytest.raises(TrainingError, match="only 10 users"):
        split_heldout_users(clicks, 5)


def test_resolve_heldout_reads_counts_and_shares() -> None:
    assert resolve_heldout(600, 6000) == 600
    assert resolve_heldout(0.1, 6034) == 603
    assert resolve_heldout(0.001, 10) == 1
    for bad in (0, -1, 2.5, math.nan):
        with pytest.raises(TrainingError):
            resolve_heldout(bad, 100)


def test_binarize_keeps_ratings_above_the_threshold() -> None:
    rng = np.random.default_rng(3)
    index = IdIndex(np.arange(1, 21), np.arange(1, 16))
    dense = np.where(rng.random((20, 15)) < 0.4, rng.integers(1, 11, (20, 15)) / 2, 0.0)
    rows, cols = np.nonzero(dense)
    matrix = RatingMatrix.from_positions(rows, cols, dense[rows, cols].astype(np.float32), None, index)
    for threshold in (3.5, 4.0, 0.0):
        liked = binarize(matrix, threshold)
        assert np.array_equal(liked.toarray(), (dense > threshold).astype(np.float32))
    assert set(np.unique(binarize(matrix).data)) == {1.0}


def test_implicit_split_maps_positions_to_ids() -> None:
    rng = np.random.default_rng(5)
    dense = (rng.random((60, 30)) < 0.4) * rng.integers(1, 6, (60, 30))
    rows, cols = np.nonzero(dense)
    index = IdIndex(np.arange(60) * 3 + 100, np.arange(30) * 7 + 1)
    matrix = RatingMatrix.from_positions(rows, cols, dense[rows, cols].astype(np.float32), None, index)
    split = implicit_split(matrix, heldout=0.1, seed=2, min_user_items=3)
    liked = dense > 3.5
    assert split.spec["heldout_users"] == round(0.1 * int((liked.sum(1) >= 3).sum()))
    for user_ids, users in ((split.validation_user_ids, split.validation), (split.test_user_ids, split.test)):
        for i, user_id in enumerate(user_ids):
            row = int(np.flatnonzero(index.user_ids == user_id)[0])
            seen = set(split.movie_ids[_sorted_cols(users.fold_in, i)].tolist()) | set(
                split.movie_ids[_sorted_cols(users.hidden, i)].tolist())
            expected = {int(index.movie_ids[c]) for c in np.flatnonzero(liked[row])} & set(split.movie_ids.tolist())
            assert seen == expected
    first_train = int(np.flatnonzero(index.user_ids == split.train_user_ids[0])[0])
    assert set(split.movie_ids[_sorted_cols(split.train, 0)].tolist()) == {
        int(index.movie_ids[c]) for c in np.flatnonzero(liked[first_train])}


def _sorted_cols(csr: sp.csr_matrix, row: int) -> np.ndarray:
    return np.sort(csr.indices[csr.indptr[row] : csr.indptr[row + 1]])


# --- metrics ---------------------------------------------------------------------------------------------------


def test_truncated_recall_divides_by_min_k_and_relevant() -> None:
    hits = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    n_relevant = np.array([10, 2, 1])
    assert truncated_recall_at_k(hits, n_relevant).tolist() == [2 / 3, 1 / 2, 0.0]
    assert recall_at_k(hits, n_relevant).tolist() == [2 / 10, 1 / 2, 0.0]  # metrics.py's differs for many relevant
    with pytest.raises(ValueError):
        truncated_recall_at_k(hits, np.array([1, 0, 1]))


def _users(fold_in: list[list[int]], hidden: list[list[int]], n_items: int) -> HeldOutUsers:
    def csr(lists: list[list[int]]) -> sp.csr_matrix:
        out = np.zeros((len(lists), n_items), np.float32)
        for i, cols in enumerate(lists):
            out[i, cols] = 1
        return sp.csr_matrix(out)

    return HeldOutUsers(rows=np.arange(len(fold_in)), fold_in=csr(fold_in), hidden=csr(hidden))


def test_evaluate_top_n_by_hand() -> None:
    # One user, 6 items; fold-in {0} scores highest but is never ranked. Ranking: 2, 1, 4, 3, 5.
    users = _users([[0]], [[1, 3]], 6)
    scores = np.array([[9.0, 5.0, 6.0, 2.0, 4.0, 1.0]])
    metrics = evaluate_top_n(lambda f: scores, users, ks=(2, 4))
    # top 2 = (2, 1): one hit at rank 2 -> recall 1/min(2, 2), DCG 1/log2(3), IDCG 1 + 1/log2(3)
    assert metrics.recall[0] == pytest.approx(0.5)
    assert metrics.ndcg[0] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    # top 4 = (2, 1, 4, 3): both hits, at ranks 2 and 4
    assert metrics.recall[1] == pytest.approx(1.0)
    assert metrics.ndcg[1] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert metrics.as_dict() == {"recall@2": metrics.recall[0], "recall@4": metrics.recall[1],
                                 "ndcg@2": metrics.ndcg[0], "ndcg@4": metrics.ndcg[1]}


def test_an_oracle_scores_one_and_users_with_nothing_hidden_are_skipped() -> None:
    users = _users([[0, 1], [2], [3]], [[4, 5], [0, 1, 3], []], 8)
    # users 0 and 1 are evaluated (in one batch); the oracle scores exactly their hidden films
    oracle = evaluate_top_n(lambda f: users.hidden.toarray()[: f.shape[0]], users, ks=(1, 3))
    assert oracle.n_users == 2 and oracle.n_skipped == 1
    assert oracle.recall == (1.0, 1.0) and oracle.ndcg == (1.0, 1.0)
    empty = evaluate_top_n(lambda f: np.zeros(f.shape), _users([[1]], [[]], 3), ks=(2,))
    assert empty.n_users == 0 and math.isnan(empty.recall[0])


def test_popularity_scorer_ranks_by_training_clicks() -> None:
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]], np.float32))
    users = _users([[1]], [[2]], 4)  # item 1 (most popular) is the fold-in, so item 2 comes first
    metrics = evaluate_top_n(popularity_scorer(train), users, ks=(1,))
    assert metrics.recall == (1.0,) and metrics.ndcg == (1.0,)
    assert popularity_scorer(train)(users.fold_in).tolist() == [[1.0, 3.0, 2.0, 1.0]]
