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
- **the ranker** (EASE) needs no fitting: a user's ranking scores are ``x B`` for their rating vector ``x``, so a
  new user's list is ordered exactly as a known user's would be with the same ratings (:func:`fold_in`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
import torch

from recae.models.batches import sparse_rows
from recae.models.names import Orientation
from recae.serving.scorer import TrainedModel
from recae.training.blend import blend

#: Ridge strength on the decoder row and on its bias, measured in "ratings' worth" of evidence.
DEFAULT_RIDGE = 5.0
DEFAULT_BIAS_RIDGE = 1.0


def _ratings_to_cols(trained: TrainedModel, ratings: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
    movie_ids = np.fromiter(ratings.keys(), dtype=np.int64, count=len(ratings))
    values = np.fromiter(ratings.values(), dtype=np.float32, count=len(ratings))
    known = trained.index.lookup_movies(movie_ids) if movie_ids.size else np.zeros(0, np.int64)
    keep = known >= 0  # films the model has never seen carry no information for it
    return known[keep], values[keep]


@torch.no_grad()
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

    scores = scores_of(trained)
    if trained.partner is not None and trained.blend_weight < 1.0:
        scores = blend(scores, scores_of(trained.partner), trained.blend_weight)
    return scores


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
    module = trained.module.eval()
    if cols.size == 0:
        return module.fallback.numpy().copy()
    order = np.argsort(cols)
    vector = sp.csr_matrix((values[order], cols[order], [0, cols.size]), shape=(1, trained.index.n_movies))
    feats = module.features(module.encode(sparse_rows(vector)).code)  # (1, h_1)
    return module.output_dense(feats)[0].numpy()


def _fit_output_unit(
    trained: TrainedModel, cols: np.ndarray, values: np.ndarray, user_row: int | None, ridge: float,
    bias_ridge: float,
) -> np.ndarray:
    module = trained.module.eval()
    if hasattr(module, "fold_in_unit"):  # the RBM for CF: softmax regression on the movies' hidden probabilities
        feats = trained._features(np.arange(trained.index.n_movies))
        return module.fold_in_unit(feats, cols, values, user_row, ridge).numpy()
    feats = trained._features(np.arange(trained.index.n_movies))  # (n_movies, h_1) float32, cached per model
    if user_row is None:
        w0, b0 = module.w_out.mean(0).double(), module.b_out.mean().double()
    else:
        w0, b0 = module.w_out[user_row].double(), module.b_out[user_row].double()
    if cols.size:
        x = feats[torch.from_numpy(cols)].double()  # (n_rated, h_1): only the rated films in float64
        y = torch.from_numpy(values).double()  # (n_rated,)
        if trained.model_config.output_activation == "identity":
            w, b = _ridge_closed_form(x, y, w0, b0, ridge, bias_ridge)
        else:
            w, b = _ridge_iterative(x, y, w0, b0, ridge, bias_ridge, module.out_act)
    else:
        w, b = w0, b0
    return module.out_act(feats @ w.float() + b.float()).numpy()  # no float64 copy of every film's features


def _ridge_closed_form(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, ridge: float,
                       bias_ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the ridge problem with the bias as an extra column: (A^T A + L) d = A^T (y - A p0), p = p0 + d.

    By Woodbury, d = L^-1 A^T (I + A L^-1 A^T)^-1 (y - A p0): an n_rated x n_rated system instead of one of the
    code's width (h_1 + 1 = 1,201 for the default model), the same solution for a user with a handful of ratings.
    """
    a = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)  # (n_rated, h_1 + 1)
    p0 = torch.cat([w0, b0.reshape(1)])
    penalty = torch.full((a.shape[1],), ridge, dtype=x.dtype)
    penalty[-1] = bias_ridge
    residual = y - a @ p0  # (n_rated,)
    if a.shape[0] < a.shape[1]:  # fewer ratings than features: the n_rated x n_rated (Woodbury) system
        scaled = a / penalty  # A L^-1
        delta = scaled.T @ torch.linalg.solve(torch.eye(a.shape[0], dtype=x.dtype) + scaled @ a.T, residual)
    else:
        delta = torch.linalg.solve(a.T @ a + torch.diag(penalty), a.T @ residual)
    p = p0 + delta
    return p[:-1], p[-1]


def _ridge_iterative(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, ridge: float,
                     bias_ridge: float, act) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = ((y - act(x @ w + b)) ** 2).sum() + ridge * ((w - w0) ** 2).sum() + bias_ridge * (b - b0) ** 2
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), b.detach()
