"""Fold-in: users the model never saw get predictions from a few ratings, without retraining."""

from __future__ import annotations

import numpy as np
import pytest

from recae.artifacts.train_config import TrainConfig
from recae.artifacts.trained_model import TrainedModel
from recae.models.build import model_config
from recae.serving.foldin import fold_in_scores
from recae.store.matrix import IdIndex, RatingMatrix
from recae.training.train import fit
from tests.support.synthetic import planted_low_rank

N_TRAIN_USERS = 160


@pytest.fixture(scope="module")
def planted():  # type: ignore[no-untyped-def]
    """200 planted users over 100 movies; the model trains on the first 160 only."""
    data = planted_low_rank(n_users=200, n_movies=100, rank=3, density=0.35, noise=0.1, seed=5)
    rows, cols, values = data.observed.coo()
    seen = rows < N_TRAIN_USERS
    index = IdIndex(data.observed.index.user_ids[:N_TRAIN_USERS], data.observed.index.movie_ids)
    train = RatingMatrix.from_positions(rows[seen], cols[seen], values[seen], None, index)
    return data, train


def _train(train: RatingMatrix, orientation: str) -> TrainedModel:
    keep = np.random.default_rng(0).random(train.nnz) >= 0.1
    fit_part, val_part = train.subset(keep), train.subset(~keep)
    cfg = model_config(orientation=orientation, hidden=(48,))
    result = fit(fit_part, val_part, cfg, TrainConfig(epochs=150, lr=2e-2, weight_decay=0.05, patience=15,
                                                        batch_ratings=1024, threads=1, ensemble=1,
                                                        weight_decay_grid=()))
    return TrainedModel.from_fit(result.module, train)


# Measured ratios of fold-in RMSE to the movie-mean RMSE: item 0.38, user 0.73 (U-AutoRec is the weaker one).
@pytest.mark.parametrize(("orientation", "bound"), [("item", 0.5), ("user", 0.85)])
def test_new_users_are_predicted_far_better_than_the_movie_means(planted, orientation: str, bound: float) -> None:  # type: ignore[no-untyped-def]
    data, train = planted
    trained = _train(train, orientation)
    movie_means = np.asarray(train.csr.sum(0)).ravel() / np.maximum(np.diff(train.csr.tocsc().indptr), 1)
    rng = np.random.default_rng(1)
    errors_model, errors_means = [], []
    for user in range(N_TRAIN_USERS, 200):
        rated = rng.choice(100, 35, replace=False)  # as many fresh ratings as a training user has
        others = np.setdiff1d(np.arange(100), rated)
        fresh = {int(data.observed.index.movie_ids[c]): float(data.full[user, c]) for c in rated}
        scores = fold_in_scores(trained, fresh)
        errors_model.append(scores[others] - data.full[user, others])
        errors_means.append(movie_means[others] - data.full[user, others])
    rmse_model = float(np.sqrt(np.mean(np.concatenate(errors_model) ** 2)))
    rmse_means = float(np.sqrt(np.mean(np.concatenate(errors_means) ** 2)))
    assert rmse_model < bound * rmse_means, (rmse_model, rmse_means)


def test_a_known_user_without_fresh_ratings_keeps_their_own_prediction(planted) -> None:  # type: ignore[no-untyped-def]
    _, train = planted
    trained = _train(train, "item")
    row = 7
    own = trained.score_rows(np.array([row]))[0]
    # No evidence at all: the prior is the user's own decoder row, so nothing moves.
    assert np.allclose(fold_in_scores(trained, {}, user_row=row), own, atol=1e-4)
    # Re-stating their training ratings barely moves them either.
    cols = train.csr[row].indices
    stored = {int(train.index.movie_ids[c]): float(v) for c, v in zip(cols, train.csr[row].data)}
    refit = fold_in_scores(trained, stored, user_row=row)
    assert np.sqrt(np.mean((refit - own) ** 2)) < 0.25


def test_movies_unknown_to_the_model_are_ignored_and_scores_stay_on_scale(planted) -> None:  # type: ignore[no-untyped-def]
    _, train = planted
    trained = _train(train, "item")
    scores = fold_in_scores(trained, {999_999: 5.0, int(train.index.movie_ids[0]): 5.0})
    assert scores.shape == (train.index.n_movies,)
    low, high = trained.rating_scale
    assert scores.min() >= low and scores.max() <= high


@pytest.mark.parametrize("n_rated", [3, 40])  # fewer ratings than features (Woodbury), and more
def test_the_ridge_solution_is_the_normal_equations_in_both_forms(n_rated: int) -> None:
    from recae.models.ridge import ridge_closed_form

    rng = np.random.default_rng(n_rated)
    x = rng.normal(size=(n_rated, 12))
    y = rng.normal(3, 1, n_rated)
    w0, b0 = rng.normal(size=12), 0.5
    w, b = ridge_closed_form(x, y, w0, b0, ridge=5.0, bias_ridge=1.0)
    a = np.hstack([x, np.ones((n_rated, 1))])
    penalty = np.diag([5.0] * 12 + [1.0])
    p0 = np.append(w0, 0.5)
    expected = p0 + np.linalg.solve(a.T @ a + penalty, a.T @ (y - a @ p0))
    assert np.allclose(np.append(w, b), expected, atol=1e-9)
