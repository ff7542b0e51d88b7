"""Watch x like: the ranker's top-N candidates re-ordered by a small model over the ranker and the rating model.

A relevant film is one the user both watches *and* rates highly. The ranker (EASE) learns the first, "which films
will this user rate", and the rating model (autoencoders + SVD) the second, "what would they rate it". The served
order takes the ranker's ``depth`` best unseen films per user and re-orders them by a linear score of features
that mix the two (shapes: ``(batch, depth)`` each)::

    share       s_ui / s_u,top           the ranker's score over the user's best candidate's (scale-free)
    log_rank    log(1 + rank_ui)         the ranker's rank among the candidates, 0 first
    rating      rhat_ui / r_max          the rating model's predicted rating
    rating_rank rating x log_rank        a liked film deep in the ranker's list still rises
    popularity  log(n_i / n_users)       how widely the film is rated (the ranker favours popular films)

    score_ui = w . (f_ui - mean) / scale      (learned by a per-user softmax, recae.training.rerank)

Films beyond the candidates keep the ranker's order after every candidate, so every film is ranked. Cost per
user: the ranker's scores, one selection of ``depth`` films and ``depth`` rating predictions (O(depth x hidden)
in the item autoencoder), so a precompute over U users costs U x depth rating predictions more than the ranker
alone. The weights are a handful of numbers, kept in meta.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recae.evaluation.metrics import dense_flags, top_k_unseen

RERANK_FEATURES: tuple[str, ...] = ("share", "log_rank", "rating", "rating_rank", "popularity")
#: Candidates per user re-ordered (chosen on the validation carves of u1.base and ml-1m; README "Development").
DEFAULT_DEPTH = 100


@dataclass(frozen=True)
class Candidates:
    """Each user's ``depth`` best unseen films by the ranker, with what the features need of the ranker."""

    cols: np.ndarray  # (batch, depth) int64, -1 where a user has fewer unseen films
    scores: np.ndarray  # (batch, depth) float32 ranker scores at cols


def candidates(ranker_scores: np.ndarray, seen: np.ndarray, depth: int) -> Candidates:
    """The ranker's ``depth`` best films per row that are not ``seen`` (bool, same shape), best first."""
    cols = top_k_unseen(ranker_scores, seen, depth)  # (batch, depth)
    scores = np.take_along_axis(ranker_scores, np.maximum(cols, 0), axis=1).astype(np.float32)
    return Candidates(cols=cols, scores=scores)


def features(cands: Candidates, ratings: np.ndarray, rating_max: float, popularity: np.ndarray,
             n_users: int) -> np.ndarray:
    """(batch, depth, len(RERANK_FEATURES)) float64 features of the candidates (see the module docstring).

    ``ratings`` (batch, depth) are the rating model's predictions at ``cands.cols``; ``popularity`` (n_movies,)
    the training ratings of each film.
    """
    batch, depth = cands.cols.shape
    top = cands.scores[:, :1].astype(np.float64)
    top = np.where(np.abs(top) > 1e-12, top, 1.0)
    share = cands.scores / top  # (batch, depth)
    log_rank = np.broadcast_to(np.log1p(np.arange(depth, dtype=np.float64)), (batch, depth))
    rating = np.asarray(ratings, dtype=np.float64) / rating_max
    counts = popularity[np.maximum(cands.cols, 0)].astype(np.float64)
    pop = np.log((counts + 1.0) / max(n_users, 1))
    return np.stack([share, log_rank, rating, rating * log_rank, pop], axis=-1)


@dataclass(frozen=True)
class Reranker:
    """The fitted re-ranker: standardisation and weights over RERANK_FEATURES, and how many candidates it orders."""

    weights: np.ndarray  # (n_features,) float64
    mean: np.ndarray  # (n_features,)
    scale: np.ndarray  # (n_features,)
    depth: int
    search: dict[str, Any]  # how it was chosen and its validation figures (meta.json)

    def linear(self, feats: np.ndarray) -> np.ndarray:
        """(batch, depth) scores of (batch, depth, n_features) features."""
        return ((feats - self.mean) / self.scale) @ self.weights

    def order(self, ranker_scores: np.ndarray, inputs: sp.csr_matrix,
              rate: Callable[[np.ndarray, np.ndarray], np.ndarray], rating_max: float, popularity: np.ndarray,
              n_users: int) -> np.ndarray:
        """(batch, n_movies) float32 served scores: candidates in (0, 1) by the re-ranker, every other film below
        them in the ranker's order. ``inputs`` are the users' training ratings (their films are not candidates);
        ``rate(positions, cols)`` predicts ratings at (position in the batch, film) pairs."""
        seen = dense_flags(inputs.indptr, inputs.indices, ranker_scores.shape)
        cands = candidates(ranker_scores, seen, self.depth)
        batch, depth = cands.cols.shape
        out = np.asarray(ranker_scores, dtype=np.float32)
        if out.size == 0:
            return out
        out = out - out.max(axis=1, keepdims=True) - np.float32(2.0)  # every film below 0, the ranker's order
        valid = cands.cols >= 0
        positions = np.repeat(np.arange(batch), depth).reshape(batch, depth)
        ratings = np.zeros((batch, depth), np.float32)
        ratings[valid] = rate(positions[valid], cands.cols[valid])
        z = self.linear(features(cands, ratings, rating_max, popularity, n_users))
        probability = (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32)  # (batch, depth) in (0, 1)
        rows_valid, cols_valid = positions[valid], cands.cols[valid]
        out[rows_valid, cols_valid] = probability[valid]
        return out

    def describe(self) -> dict[str, Any]:
        """What meta.json keeps: plain numbers, no pickle."""
        return {"kind": "watch-x-like", "features": list(RERANK_FEATURES), "depth": self.depth,
                "weights": [float(v) for v in self.weights], "mean": [float(v) for v in self.mean],
                "scale": [float(v) for v in self.scale], "search": self.search}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reranker:
        """The re-ranker meta.json describes; ValueError when it is not one this code can apply."""
        names = list(data.get("features") or [])
        if data.get("kind") != "watch-x-like" or names != list(RERANK_FEATURES):
            raise ValueError(f"unknown re-ranker {data.get('kind')!r} over {names}; this recae applies watch-x-like "
                             f"over {list(RERANK_FEATURES)}")
        arrays = [np.asarray(data[key], dtype=np.float64) for key in ("weights", "mean", "scale")]
        if any(a.shape != (len(RERANK_FEATURES),) or not np.isfinite(a).all() for a in arrays) or \
                not (arrays[2] > 0).all() or int(data["depth"]) < 1:
            raise ValueError("stored re-ranker weights are inconsistent")
        return cls(weights=arrays[0], mean=arrays[1], scale=arrays[2], depth=int(data["depth"]),
                   search=dict(data.get("search") or {}))
