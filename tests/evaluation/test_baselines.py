"""Baselines on planted data whose right answer is known: biases recover planted offsets, SVD a planted rank."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr

from recae.errors import EmptyStoreError
from recae.evaluation.baselines import BiasBaseline, GlobalMean, TruncatedSVDBaseline, fit_biases
from recae.evaluation.metrics import Scorer, rating_metrics
from recae.store.matrix import IdIndex, RatingMatrix
from tests.support.synthetic import planted_low_rank

BASELINE_FACTORIES: dict[str, Callable[[], GlobalMean | BiasBaseline | TruncatedSVDBaseline]] = {
    "global_mean": GlobalMean,
    "biases": BiasBaseline,
    "svd": lambda: TruncatedSVDBaseline(rank=5),
}


def planted_biases(
    n_users: int = 300, n_movies: int = 200, density: float = 0.3, noise: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, RatingMatrix]:
    """Ratings 3 + b_u + b_i + noise with b ~ N(0, 0.5^2): the planted biases are the right answer."""
    rng = np.random.default_rng(seed)
    b_user = rng.normal(0, 0.5, n_users)
    b_item = rng.normal(0, 0.5, n_movies)
    rows, cols = np.nonzero(rng.random((n_users, n_movies)) < density)
    values = 3.0 + b_user[rows] + b_item[cols] + rng.normal(0, noise, rows.size)
    index = IdIndex(np.arange(1, n_users + 1), np.arange(1, n_movies + 1))
    return b_user, b_item, RatingMatrix.from_positions(rows, cols, values, None, index)


def random_split(matrix: RatingMatrix, fraction: float, seed: int) -> tuple[RatingMatrix, RatingMatrix]:
    held_out = np.random.default_rng(seed).random(matrix.nnz) < fraction
    return matrix.subset(~held_out), matrix.subset(held_out)


# ---------------------------------------------------------------------------------------------------------
# Every baseline is a Scorer with the same contract


@pytest.mark.parametrize("name", list(BASELINE_FACTORIES))
def test_baseline_is_a_consistent_clipped_scorer(name: str) -> None:
    train, _ = random_split(planted_low_rank(seed=1).observed, 0.2, seed=1)
    model = BASELINE_FACTORIES[name]().fit(train)
    assert isinstance(model, Scorer)
    low, high = train.rating_scale()
    rows = np.array([0, 5, 17, 199])
    table = model.score_rows(rows)  # (4, n_movies)
    assert table.shape == (rows.size, train.shape[1])
    assert table.min() >= low and table.max() <= high
    cols = np.array([0, 3, 50, 119])
    np.testing.assert_allclose(model.predict(rows, cols), table[np.arange(rows.size), cols], rtol=1e-12)


@pytest.mark.parametrize("name", list(BASELINE_FACTORIES))
def test_unfitted_and_empty_are_refused(name: str) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        BASELINE_FACTORIES[name]().predict(np.array([0]), np.array([0]))
    index = IdIndex(np.array([1]), np.array([1]))
    empty = RatingMatrix.from_positions(np.zeros(0), np.zeros(0), np.zeros(0), None, index)
    with pytest.raises(EmptyStoreError):
        BASELINE_FACTORIES[name]().fit(empty)


@pytest.mark.parametrize("name", ["biases", "svd"])
def test_fit_never_densifies_users_by_movies(name: str) -> None:
    # 200k x 100k dense float64 would take 160 GB; ratings grow with nnz only.
    rng = np.random.default_rng(0)
    n_users, n_movies, nnz = 200_000, 100_000, 60_000
    flat = rng.choice(n_users * n_movies, nnz, replace=False)
    index = IdIndex(np.arange(n_users), np.arange(n_movies))
    matrix = RatingMatrix.from_positions(flat // n_movies, flat % n_movies, rng.integers(1, 6, nnz), None, index)
    model = BiasBaseline() if name == "biases" else TruncatedSVDBaseline(rank=4, iterations=3)
    model.fit(matrix)
    assert model.score_rows(np.array([0, 1])).shape == (2, n_movies)
    assert np.all(np.isfinite(model.predict(flat[:100] // n_movies, flat[:100] % n_movies)))


# ---------------------------------------------------------------------------------------------------------
# Biases


def test_biases_solve_the_regularised_least_squares_problem() -> None:
    # With reg_user == reg_item the objective is a damped least-squares problem that lsqr solves directly.
    _, _, matrix = planted_biases(n_users=60, n_movies=40, seed=2)
    rows, cols, values = matrix.coo()
    n_users, n_movies = matrix.shape
    design = sp.hstack(
        [
            sp.csr_matrix((np.ones(rows.size), (np.arange(rows.size), rows)), shape=(rows.size, n_users)),
            sp.csr_matrix((np.ones(rows.size), (np.arange(rows.size), cols)), shape=(rows.size, n_movies)),
        ]
    ).tocsr()
    reg = 4.0
    fitted = fit_biases(matrix, reg_user=reg, reg_item=reg, sweeps=300)
    exact = lsqr(design, values - fitted.mu, damp=np.sqrt(reg), atol=1e-12, btol=1e-12)[0]
    np.testing.assert_allclose(fitted.user, exact[:n_users], atol=1e-6)
    np.testing.assert_allclose(fitted.item, exact[n_users:], atol=1e-6)


def test_biases_recover_planted_offsets() -> None:
    b_user, b_item, matrix = planted_biases()
    fitted = fit_biases(matrix)
    # mu absorbs the mean of the planted biases, so compare centred biases.
    user_error = (fitted.user - fitted.user.mean()) - (b_user - b_user.mean())
    item_error = (fitted.item - fitted.item.mean()) - (b_item - b_item.mean())
    # Measured RMS error with defaults: users 0.055, films 0.043 (0.040 / 0.032 unregularised); corr 0.997.
    assert np.sqrt(np.mean(user_error**2)) < 0.07
    assert np.sqrt(np.mean(item_error**2)) < 0.07
    assert np.corrcoef(fitted.user, b_user)[0, 1] > 0.99
    assert fitted.mu + fitted.user.mean() + fitted.item.mean() == pytest.approx(3.0 + b_user.mean() + b_item.mean(),
                                                                             abs=0.05)


def test_regularisation_shrinks_biases_of_sparse_users() -> None:
    _, _, matrix = planted_biases(density=0.03, seed=4)
    loose = fit_biases(matrix, reg_user=0.0, reg_item=0.0)
    tight = fit_biases(matrix, reg_user=25.0, reg_item=25.0)
    # Measured norm ratios: users 0.19, films 0.25.
    assert np.linalg.norm(tight.user) < 0.4 * np.linalg.norm(loose.user)
    assert np.linalg.norm(tight.item) < 0.4 * np.linalg.norm(loose.item)


def test_biases_beat_the_global_mean_on_planted_biases() -> None:
    _, _, matrix = planted_biases(seed=5)
    train, test = random_split(matrix, 0.2, seed=5)
    mean_rmse = rating_metrics(GlobalMean().fit(train), test).rmse
    bias_rmse = rating_metrics(BiasBaseline().fit(train), test).rmse
    # Planted noise 0.3. Measured: global mean 0.741, biases 0.314.
    assert bias_rmse < 0.35
    assert bias_rmse < 0.5 * mean_rmse


def test_unrated_users_and_films_get_zero_bias() -> None:
    index = IdIndex(np.arange(1, 4), np.arange(1, 4))
    matrix = RatingMatrix.from_positions(np.array([0, 1]), np.array([0, 1]), np.array([5.0, 1.0]), None, index)
    fitted = fit_biases(matrix, reg_user=0.0, reg_item=0.0)
    assert fitted.user[2] == 0.0 and fitted.item[2] == 0.0


# ---------------------------------------------------------------------------------------------------------
# Truncated SVD


@pytest.mark.parametrize("seed", [0, 1])
def test_svd_beats_biases_on_planted_low_rank(seed: int) -> None:
    planted = planted_low_rank(seed=seed)
    train, test = random_split(planted.observed, 0.2, seed=seed)
    bias_rmse = rating_metrics(BiasBaseline().fit(train), test).rmse
    default_rmse = rating_metrics(TruncatedSVDBaseline().fit(train), test).rmse
    # The planted noise (0.1) is ten times smaller than MovieLens', so a smaller threshold fits it far better.
    tuned_rmse = rating_metrics(TruncatedSVDBaseline(rank=3, shrinkage=3.0).fit(train), test).rmse
    # Measured (seeds 0, 1): biases 0.990 / 1.034, default SVD 0.880 / 0.877, tuned 0.421 / 0.421.
    assert default_rmse < 0.92 * bias_rmse
    assert tuned_rmse < 0.47
    assert tuned_rmse < 0.5 * bias_rmse


def test_svd_recovers_the_planted_truth_at_unobserved_entries() -> None:
    planted = planted_low_rank(seed=3, noise=0.05)
    model = TruncatedSVDBaseline(rank=3, shrinkage=3.0).fit(planted.observed)
    rows, cols = np.nonzero(planted.observed.csr.toarray() == 0)  # never observed (small matrix: toarray is fine)
    error = np.sqrt(np.mean((model.predict(rows, cols) - planted.full[rows, cols]) ** 2))
    # Measured 0.358 against truth with std 1.035; biases alone leave 1.057.
    bias_error = np.sqrt(np.mean((BiasBaseline().fit(planted.observed).predict(rows, cols)
                                  - planted.full[rows, cols]) ** 2))
    assert error < 0.40
    assert error < 0.5 * bias_error


def test_svd_is_deterministic_for_a_seed() -> None:
    train = planted_low_rank(seed=2).observed
    first = TruncatedSVDBaseline(rank=4, seed=7).fit(train).score_rows(np.arange(10))
    second = TruncatedSVDBaseline(rank=4, seed=7).fit(train).score_rows(np.arange(10))
    np.testing.assert_array_equal(first, second)


def test_svd_rank_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rank"):
        TruncatedSVDBaseline(rank=0)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1)])
def test_svd_on_degenerate_shapes_fits_exactly_without_shrinkage(shape: tuple[int, int]) -> None:
    rows, cols = np.nonzero(np.ones(shape))
    values = (np.arange(rows.size) % 5 + 1).astype(float)
    index = IdIndex(np.arange(shape[0]), np.arange(shape[1]))
    matrix = RatingMatrix.from_positions(rows, cols, values, None, index)
    model = TruncatedSVDBaseline(shrinkage=0.0).fit(matrix)  # a single row or column has rank 1
    np.testing.assert_allclose(model.predict(rows, cols), values, atol=1e-8)
