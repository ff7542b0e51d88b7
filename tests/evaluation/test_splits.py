"""Splits: disjoint, complete, reproducible, the promised sizes; temporal rules; canonical ml-100k folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from recae.errors import DataError
from recae.evaluation.splits import (
    CANONICAL_FOLDS,
    GENERATED_SPLITS,
    Split,
    SplitSpec,
    canonical_split,
    holdout_validation,
    load_fold_pairs,
    make_split,
    per_user_split,
    random_split,
    split_from_store,
    temporal_per_user_split,
    temporal_split,
)
from recae.store.db import FoldTest, Rating
from recae.store.matrix import IdIndex, RatingMatrix
from tests.support.synthetic import planted_low_rank


@st.composite
def rating_matrices(draw: st.DrawFn, unknown_share: float | None = None) -> RatingMatrix:
    """Small matrices with random shape and density, some empty users, timestamps with ties and unknowns (0)."""
    n_users = draw(st.integers(1, 12))
    n_movies = draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_movies)) < draw(st.floats(0.05, 1.0))
    mask[0, 0] = True
    rows, cols = np.nonzero(mask)
    values = rng.integers(1, 11, rows.size) * 0.5
    stamps = rng.integers(1, 6, rows.size) * 1000  # few distinct times, so ties happen
    share = draw(st.floats(0.0, 0.5)) if unknown_share is None else unknown_share
    stamps[rng.random(rows.size) < share] = 0
    index = IdIndex(np.arange(n_users) * 3 + 1, np.arange(n_movies) + 100)
    return RatingMatrix.from_positions(rows, cols, values, stamps, index)


def _keys(matrix: RatingMatrix) -> np.ndarray:
    rows, cols, _ = matrix.coo()
    return rows * matrix.shape[1] + cols


def _assert_partition(split: Split, matrix: RatingMatrix) -> None:
    """Same index, disjoint, and train + test give back the matrix (ratings and timestamps)."""
    assert split.train.index is matrix.index and split.test.index is matrix.index
    assert not np.intersect1d(_keys(split.train), _keys(split.test)).size
    assert split.train.nnz + split.test.nnz == matrix.nnz
    merged = RatingMatrix.from_positions(
        np.concatenate([split.train.coo()[0], split.test.coo()[0]]),
        np.concatenate([split.train.coo()[1], split.test.coo()[1]]),
        np.concatenate([split.train.csr.data, split.test.csr.data]),
        np.concatenate([split.train.timestamps, split.test.timestamps]),
        matrix.index,
    )
    assert merged.fingerprint() == matrix.fingerprint()


def _per_user(matrix: RatingMatrix) -> np.ndarray:
    return np.diff(matrix.csr.indptr)


fractions = st.sampled_from([0.1, 0.2, 0.25, 0.5, 0.8])
seeds = st.integers(0, 2**31)


@settings(max_examples=80, deadline=None)
@given(matrix=rating_matrices(unknown_share=0.0), name=st.sampled_from(GENERATED_SPLITS), fraction=fractions,
       seed=seeds)
def test_every_generated_split_partitions_and_is_reproducible(
    matrix: RatingMatrix, name: str, fraction: float, seed: int
) -> None:
    spec = SplitSpec(name, fraction, seed)
    split = make_split(matrix, spec)
    assert split.spec == spec
    _assert_partition(split, matrix)
    again = make_split(matrix, SplitSpec.from_json(spec.to_json()))
    assert again.train.fingerprint() == split.train.fingerprint()
    assert again.test.fingerprint() == split.test.fingerprint()


@settings(max_examples=60, deadline=None)
@given(matrix=rating_matrices(), fraction=fractions, seed=seeds)
def test_random_split_takes_exactly_the_rounded_share(matrix: RatingMatrix, fraction: float, seed: int) -> None:
    split = random_split(matrix, fraction, seed)
    _assert_partition(split, matrix)
    assert split.test.nnz == round(fraction * matrix.nnz)


@settings(max_examples=60, deadline=None)
@given(matrix=rating_matrices(), fraction=fractions, seed=seeds)
def test_per_user_split_keeps_every_user_in_train(matrix: RatingMatrix, fraction: float, seed: int) -> None:
    split = per_user_split(matrix, fraction, seed)
    _assert_partition(split, matrix)
    counts, tests, trains = _per_user(matrix), _per_user(split.test), _per_user(split.train)
    assert np.all(trains[counts > 0] >= 1)
    uncapped = np.rint(fraction * counts) <= counts - 1
    assert np.all(np.abs(tests - fraction * counts)[uncapped] <= 0.5)  # the share, within rounding
    capped = np.minimum(np.rint(fraction * counts), np.maximum(counts - 1, 0))
    assert np.array_equal(tests, capped)


@settings(max_examples=60, deadline=None)
@given(matrix=rating_matrices(), fraction=fractions)
def test_temporal_split_is_a_global_cut_and_keeps_unknown_times_in_train(
    matrix: RatingMatrix, fraction: float
) -> None:
    n_test = round(fraction * matrix.nnz)
    known = int((matrix.timestamps > 0).sum())
    if known < max(n_test, 1):
        with pytest.raises(DataError, match="known timestamp"):
            temporal_split(matrix, fraction)
        return
    split = temporal_split(matrix, fraction)
    _assert_partition(split, matrix)
    assert split.test.nnz == n_test
    assert np.all(split.test.timestamps > 0)
    known_train = split.train.timestamps[split.train.timestamps > 0]
    if split.test.nnz and known_train.size:
        assert split.test.timestamps.min() >= known_train.max()


@settings(max_examples=60, deadline=None)
@given(matrix=rating_matrices(), fraction=fractions)
def test_temporal_per_user_holds_out_each_users_latest(matrix: RatingMatrix, fraction: float) -> None:
    split = temporal_per_user_split(matrix, fraction)
    _assert_partition(split, matrix)
    assert np.all(split.test.timestamps > 0)
    counts = _per_user(matrix)
    assert np.all(_per_user(split.train)[counts > 0] >= 1)
    for row in range(matrix.shape[0]):
        test_times = split.test.timestamps[split.test.csr.indptr[row] : split.test.csr.indptr[row + 1]]
        train_times = split.train.timestamps[split.train.csr.indptr[row] : split.train.csr.indptr[row + 1]]
        known_train = train_times[train_times > 0]
        if test_times.size and known_train.size:
            assert test_times.min() >= known_train.max()
        n_known = int((test_times > 0).sum() + known_train.size)
        assert test_times.size == min(int(np.rint(fraction * counts[row])), n_known, max(counts[row] - 1, 0))


def test_unknown_timestamps_never_reach_a_temporal_test_set() -> None:
    planted = planted_low_rank(n_users=80, n_movies=50, seed=5).observed
    stamps = planted.timestamps.copy()
    stamps[::3] = 0  # a third of the times are unknown
    matrix = RatingMatrix.from_positions(*planted.coo(), stamps, planted.index)
    for split in (temporal_split(matrix, 0.2), temporal_per_user_split(matrix, 0.2)):
        assert split.test.nnz > 0.1 * matrix.nnz
        assert np.all(split.test.timestamps > 0)
        assert (split.train.timestamps == 0).sum() == (stamps == 0).sum()


def test_temporal_split_without_enough_timestamps_says_why() -> None:
    planted = planted_low_rank(n_users=20, n_movies=10, seed=6).observed
    stamps = np.zeros(planted.nnz, np.int64)
    stamps[:3] = 1_000_000_000
    matrix = RatingMatrix.from_positions(*planted.coo(), stamps, planted.index)
    with pytest.raises(DataError, match=r"only 3 of \d+ have one"):
        temporal_split(matrix, 0.1)


def test_seeds_change_random_splits() -> None:
    matrix = planted_low_rank(n_users=100, n_movies=60, seed=7).observed
    for builder in (random_split, per_user_split):
        a, b = builder(matrix, 0.2, 1), builder(matrix, 0.2, 2)
        assert a.test.fingerprint() != b.test.fingerprint()
        assert builder(matrix, 0.2, 1).test.fingerprint() == a.test.fingerprint()


@settings(max_examples=60, deadline=None)
@given(matrix=rating_matrices(), fraction=st.sampled_from([0.05, 0.1, 0.3, 0.6]), seed=seeds)
def test_holdout_validation_carves_from_train_and_keeps_every_user_and_movie(
    matrix: RatingMatrix, fraction: float, seed: int
) -> None:
    fit, validation = holdout_validation(matrix, fraction, seed)
    _assert_partition(Split(SplitSpec("random"), fit, validation), matrix)
    assert np.all(_per_user(fit)[_per_user(matrix) > 0] >= 1)
    movies_before = np.bincount(matrix.csr.indices, minlength=matrix.shape[1]) > 0
    movies_after = np.bincount(fit.csr.indices, minlength=matrix.shape[1]) > 0
    assert np.array_equal(movies_before, movies_after)
    assert validation.nnz <= round(fraction * matrix.nnz)
    again = holdout_validation(matrix, fraction, seed)
    assert again[1].fingerprint() == validation.fingerprint()


def test_holdout_validation_reaches_its_share_on_realistic_data() -> None:
    matrix = planted_low_rank(n_users=200, n_movies=120, seed=8).observed
    fit, validation = holdout_validation(matrix, 0.1, 0)
    assert validation.nnz == round(0.1 * matrix.nnz)


def test_spec_validates_and_round_trips() -> None:
    spec = SplitSpec("per-user", 0.2, 42)
    assert SplitSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="unknown split 'weekly'"):
        SplitSpec("weekly")
    with pytest.raises(ValueError, match="between 0 and 1"):
        SplitSpec("random", 1.0)
    with pytest.raises(ValueError, match="needs its test pairs"):
        make_split(planted_low_rank(n_users=5, n_movies=5).observed, SplitSpec("u1"))


# ------------------------------------------------------------------------------------------------ canonical


def _read_ml100k(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", names=["user_id", "movie_id", "rating", "timestamp"], dtype="int64")


def _pairs(frame: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame.user_id.tolist(), frame.movie_id.tolist(), strict=True))


def _split_pairs(matrix: RatingMatrix) -> set[tuple[int, int]]:
    rows, cols, _ = matrix.coo()
    return set(zip(matrix.index.user_ids[rows].tolist(), matrix.index.movie_ids[cols].tolist(), strict=True))


@pytest.mark.parametrize("fold", CANONICAL_FOLDS)
def test_canonical_ml100k_folds_match_the_files(ml100k: Path, fold: str) -> None:
    ratings = _read_ml100k(ml100k / "u.data")
    base, test = _read_ml100k(ml100k / f"{fold}.base"), _read_ml100k(ml100k / f"{fold}.test")
    matrix = RatingMatrix.from_ids(ratings.user_id.to_numpy(), ratings.movie_id.to_numpy(),
                                   ratings.rating.to_numpy(), ratings.timestamp.to_numpy())
    split = make_split(matrix, SplitSpec(fold), (test.user_id.to_numpy(), test.movie_id.to_numpy()))
    assert (split.train.nnz, split.test.nnz) == (len(base), len(test))
    if fold.startswith("u") and fold[1:].isdigit():
        assert (split.train.nnz, split.test.nnz) == (80_000, 20_000)
    assert _split_pairs(split.train) == _pairs(base)
    assert _split_pairs(split.test) == _pairs(test)
    _assert_partition(split, matrix)
    test_values = dict(zip(zip(test.user_id, test.movie_id, strict=True), test.rating, strict=True))
    rows, cols, values = split.test.coo()
    for u, m, v in zip(matrix.index.user_ids[rows[:500]], matrix.index.movie_ids[cols[:500]], values[:500],
                       strict=True):
        assert test_values[(u, m)] == v


def test_fold_pairs_from_the_store(engine) -> None:  # type: ignore[no-untyped-def]
    planted = planted_low_rank(n_users=30, n_movies=20, seed=9).observed
    rows, cols, values = planted.coo()
    users, movies = planted.index.user_ids[rows], planted.index.movie_ids[cols]
    with engine.begin() as conn:
        conn.execute(insert(Rating), [
            {"user_id": int(u), "movie_id": int(m), "rating": float(round(v)), "timestamp": int(t)}
            for u, m, v, t in zip(users, movies, values, planted.timestamps, strict=True)
        ])
        conn.execute(insert(FoldTest), [
            {"split": "u2", "user_id": int(u), "movie_id": int(m)} for u, m in zip(users[::5], movies[::5],
                                                                                  strict=True)
        ])
    matrix = RatingMatrix.from_db(engine)
    fold_users, fold_movies = load_fold_pairs(engine, "u2")
    assert set(zip(fold_users.tolist(), fold_movies.tolist(), strict=True)) == set(
        zip(users[::5].tolist(), movies[::5].tolist(), strict=True))
    split = split_from_store(engine, matrix, SplitSpec("u2"))
    assert split.test.nnz == len(users[::5]) and split.spec.name == "u2"
    _assert_partition(split, matrix)
    with pytest.raises(DataError, match=r"'u1' is not in the store \(available folds: u2\)"):
        split_from_store(engine, matrix, SplitSpec("u1"))


def test_fold_pairs_absent_from_an_empty_store(engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match="available folds: none"):
        load_fold_pairs(engine, "ua")


def test_canonical_split_rejects_pairs_not_in_the_data() -> None:
    matrix = RatingMatrix.from_ids(np.array([1, 1, 2]), np.array([10, 20, 10]), np.array([3.0, 4.0, 5.0]))
    with pytest.raises(DataError, match="fold u1 lists 2 ratings that are not in the data, e.g. user 2 movie 20"):
        canonical_split(matrix, "u1", np.array([1, 2, 9]), np.array([10, 20, 10]))
    split = canonical_split(matrix, "u1", np.array([2]), np.array([10]))
    assert _split_pairs(split.test) == {(2, 10)} and split.train.nnz == 2
