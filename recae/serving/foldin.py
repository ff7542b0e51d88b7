"""Fold-in: predictions for a user from ratings the model never saw, without retraining.

- **user orientation**: the user's rating vector over movies goes through the encoder and decoder, as in training.
- **item orientation** (I-AutoRec): a user is an output unit, with decoder row ``w_u`` (h_1,) and bias ``b_u``.
  Movie features ``F`` (n_movies, h_1) are fixed, so a new user's row is a small ridge regression on the
  features of the movies they rated::

      min_{w, b}  sum_{j rated} (r_j - act(F_j . w + b))^2 + lam * ||w - w0||^2 + lam_b * (b - b0)^2

  The prior ``(w0, b0)`` is the user's own row when the model knows them (fresh ratings refine it), else the
  average user's row, so a handful of ratings moves the prediction only as far as they justify. With the identity
  output this is closed-form; other outputs take a few L-BFGS steps from the prior.
- **a blended model** (an item AE with a user-AE partner): each folds the user in its own way; the scores are
  mixed with the model's blend weight.
- **a Soft-Impute SVD part** (``blend_svd``): the user's bias and factor by ridge regression on the item factors
  of the films they rated, prior zero, closed form (recae.models.svd_part); mixed in with the model's stacked
  weights and intercept.
- **a side part** (``blend_side``): the user's bias, then their shrunk mean residual per genre and era of the films
  they rated (recae.models.side_part), as in training.
- **the ranker** (EASE) needs no fitting: a user's ranking scores are ``x B`` for their rating vector ``x``, so a
  new user's list is ordered exactly as a known user's would be with the same ratings (:func:`fold_in`).

Every pass runs on the model's ``network`` (``recae.artifacts.inference``): numpy for a loaded model, so a server
or ``recommend --rate`` never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from recae.artifacts.trained_model import TrainedModel
from recae.models.names import Orientation

#: Ridge strength on the decoder row and on its bias, measured in "ratings' worth" of evidence.
DEFAULT_RIDGE = 5.0
DEFAULT_BIAS_RIDGE = 1.0


def _ratings_to_cols(trained: TrainedModel, ratings: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
    movie_ids = np.fromiter(ratings.keys(), dtype=np.int64, count=len(ratings))
    values = np.fromiter(ratings.values(), dtype=np.float32, count=len(ratings))
    known = trained.index.lookup_movies(movie_ids) if movie_ids.size else np.zeros(0, np.int64)
    keep = known >= 0  # films the model has never seen carry no information for it
    return known[keep], values[keep]


def fold_in_scores(
    trained: TrainedModel, ratings: Mapping[int, float], user_row: int | None = None,
    ridge: float = DEFAULT_RIDGE, bias_ridge: float = DEFAULT_BIAS_RIDGE,
) -> np.ndarray:
    """Predicted rating of every movie of ``trained.index`` for a user with ``ratings`` (movie_id -> rating).

    Args:
        trained: the published model.
        ratings: every rating to condition on (stored and fresh); movies unknown to the model are ignored.
        user_row: the user's row when the model knows them (their decoder row is the prior), else None.
    Returns:
        (n_movies,) float32 predictions clipped to the model's rating scale.
    """
    cols, values = _ratings_to_cols(trained, ratings)

    def scores_of(part: TrainedModel) -> np.ndarray:
        if part.orientation is Orientation.USER:
            scores = _encode_user(part, cols, values)
        else:
            scores = _fit_output_unit(part, cols, values, user_row, ridge, bias_ridge)
        return np.clip(scores, *part.rating_scale).astype(np.float32)

    return trained.blended(scores_of(trained), scores_of, lambda part: part.fold_in(cols, values))


def fold_in(
    trained: TrainedModel, ratings: Mapping[int, float], user_row: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted ratings, ranking scores) of every movie for a user with ``ratings`` (movie_id -> rating).

    The predicted ratings come from :func:`fold_in_scores`; the ranking scores from the model's ranker applied to
    the same ratings (the predicted ratings again when the model has no ranker). Each is (n_movies,) float32.
    """
    predicted = fold_in_scores(trained, ratings, user_row)
    return predicted, (predicted if trained.ranker is None else fold_in_ranks(trained, ratings))


def fold_in_ranks(trained: TrainedModel, ratings: Mapping[int, float]) -> np.ndarray:
    """(n_movies,) ranking scores of a user with ``ratings``: ``x B`` with the ranker (no fitting, ~1 ms), else
    the folded-in predicted ratings. What a list is ordered by, and what "because you rated" takes apart."""
    if trained.ranker is None:
        return fold_in_scores(trained, ratings)
    cols, values = _ratings_to_cols(trained, ratings)
    order = np.argsort(cols)
    vector = sp.csr_matrix((values[order], cols[order], [0, cols.size]), shape=(1, trained.index.n_movies))
    return trained.ranker.score_rows(vector)[0]


def _encode_user(trained: TrainedModel, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    network = trained.network
    if cols.size == 0:
        return network.fallback.copy()
    order = np.argsort(cols)
    vector = sp.csr_matrix((values[order], cols[order], [0, cols.size]), shape=(1, trained.index.n_movies))
    return network.output_dense(network.features_of(vector))[0]  # (n_movies,)


def _fit_output_unit(
    trained: TrainedModel, cols: np.ndarray, values: np.ndarray, user_row: int | None, ridge: float,
    bias_ridge: float,
) -> np.ndarray:
    """Every film's prediction for a user who is an output unit: the network fits the unit (its own way)."""
    feats = trained._features_of_all_movies()  # (n_movies, h_1) float32, cached per model: read in place
    return trained.network.fold_in_unit(feats, cols, values, user_row, ridge, bias_ridge)
