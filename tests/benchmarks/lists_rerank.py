"""Watch x like, shelved research code of bench_lists.py (not part of recae: it did not win on the validation
carves; tests/benchmarks/README.md, "Lists against EASE", 2026-12-06): the ranker's top-N candidates
re-ordered by a small model over the ranker and the rating model.

A relevant film is one the user both watches *and* rates highly. The ranker (EASE) learns the first, the rating
model (autoencoders + SVD) the second. The order takes the ranker's ``depth`` best unseen films per user and
re-orders them by a linear score of features (each ``(batch, depth)``)::

    share       s_ui / s_u,top           the ranker's score over the user's best candidate's (scale-free)
    log_rank    log(1 + rank_ui)         the ranker's rank among the candidates, 0 first
    rating      rhat_ui / r_max          the rating model's predicted rating
    rating_rank rating x log_rank        a liked film deep in the ranker's list still rises
    popularity  log(n_i / n_users)       how widely the film is rated (the ranker favours popular films)

    score_ui = w . (f_ui - mean) / scale

Films beyond the candidates keep the ranker's order after every candidate. The weights are fitted on the training
run's blend carve (the one part of the training ratings no autoencoder, partner or SVD part was fitted on), with
the rating model reading only the fit part and EASE refitted on the fit part at its chosen lambda, by a per-user
softmax cross-entropy plus a small ridge::

    loss = mean_u [ -1/|R_u| sum_{i in R_u} log softmax_i(z_u) ] + l2/2 ||w||^2

and kept only when NDCG@10 cross-fitted on two halves of the carve's users beats the ranker's order there by more
than ``KEEP_MARGIN`` standard errors of the paired gain. The integrated version (a ``rerank`` setting, hooks in
``TrainedModel.rank_rows``, meta.json, fold-in and the nightly job, with tests on planted data where watched and
liked disagree) is commit 5284d37 of branch i27-lists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from recae.evaluation.metrics import dense_flags, ndcg_at_k, top_k_unseen

if TYPE_CHECKING:
    from recae.artifacts.train_config import TrainConfig
    from recae.artifacts.trained_model import TrainedModel
    from recae.models.rankers import Ranker
    from recae.store.matrix import RatingMatrix

RERANK_FEATURES: tuple[str, ...] = ("share", "log_rank", "rating", "rating_rank", "popularity")
#: Candidates per user re-ordered (chosen on the validation carves of u1.base and ml-1m; benchmarks README).
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


log = logging.getLogger(__name__)

#: Users whose candidates are featurised to fit the weights, a seeded sample above it (ML-32M's blend carve holds
#: about 200,000 users; 20,000 users x 100 candidates x 5 features is 80 MB).
MAX_USERS = 20_000
L2_GRID = (1e-3,)
#: Standard errors of the paired per-user gain by which the re-ranker must beat the ranker on the blend carve.
KEEP_MARGIN = 2.0
DEPTH_GRID = (DEFAULT_DEPTH,)


@dataclass(frozen=True)
class CarveLists:
    """The carve's users, their candidates' features and labels (relevant held-out films)."""

    feats: np.ndarray  # (n_users, depth, n_features) float64
    labels: np.ndarray  # (n_users, depth) bool
    valid: np.ndarray  # (n_users, depth) bool, a real candidate
    n_relevant: np.ndarray  # (n_users,) relevant carve films of the user, candidates or not


def carve_lists(rate: Callable[[np.ndarray, np.ndarray], np.ndarray], ranker: Ranker, fit_part: RatingMatrix,
                carve: RatingMatrix, users: np.ndarray, depth: int, threshold: float,
                batch: int = 512) -> CarveLists:
    """Features of each user's ``depth`` candidates, with the ranker and rating model reading ``fit_part`` only."""
    n_users, n_movies = fit_part.shape
    popularity = np.bincount(fit_part.csr.indices, minlength=n_movies)
    rating_max = fit_part.rating_scale()[1]
    relevant = carve.csr.copy()
    relevant.data = (relevant.data >= threshold).astype(np.float32)
    relevant.eliminate_zeros()
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, users.size, batch):
        rows = users[start:start + batch]
        block = fit_part.csr[rows]
        scores = ranker.score_rows(block)  # (b, n_movies)
        cands = candidates(scores, dense_flags(block.indptr, block.indices, scores.shape), depth)
        valid = cands.cols >= 0
        pos = np.repeat(rows, cands.cols.shape[1]).reshape(cands.cols.shape)
        ratings = np.zeros(cands.cols.shape, np.float32)
        ratings[valid] = rate(pos[valid], cands.cols[valid])
        rel_block = relevant[rows]
        flags = dense_flags(rel_block.indptr, rel_block.indices, (rows.size, n_movies))
        labels = np.take_along_axis(flags, np.maximum(cands.cols, 0), axis=1) & valid
        parts.append((features(cands, ratings, rating_max, popularity, n_users), labels, valid))
    n_rel = np.diff(relevant.indptr)[users]
    return CarveLists(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                      np.concatenate([p[2] for p in parts]), n_rel)


def fit_weights(lists: CarveLists, l2: float, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The softmax weights (see the module docstring) on users with a relevant candidate; L-BFGS, float64."""
    keep = lists.labels.any(axis=1)
    x = (lists.feats[keep] - mean) / scale  # (n, depth, F)
    y = lists.labels[keep].astype(np.float64)
    y /= y.sum(axis=1, keepdims=True)
    mask = lists.valid[keep]
    n = max(int(keep.sum()), 1)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = np.where(mask, x @ w, -np.inf)  # (n, depth)
        top = z.max(axis=1, keepdims=True)
        e = np.exp(z - top)
        total = e.sum(axis=1, keepdims=True)
        log_softmax = np.where(mask, z - top - np.log(total), 0.0)
        value = -float((y * log_softmax).sum()) / n + 0.5 * l2 * float(w @ w)
        grad = np.einsum("nd,ndf->f", e / total - y, x) / n + l2 * w
        return value, grad

    start = np.zeros(x.shape[-1])
    start[0] = 1.0  # the ranker's own order
    return minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 500}).x


def list_ndcg(lists: CarveLists, score: np.ndarray | None) -> float:
    """Mean NDCG@10 over users with a relevant carve film, the list being the candidates in ``score``'s order
    (None: the ranker's own order); relevant films beyond the candidates count as misses."""
    per_user = users_ndcg(lists, score)
    return float(per_user.mean()) if per_user.size else float("nan")


def users_ndcg(lists: CarveLists, score: np.ndarray | None) -> np.ndarray:
    """(users with a relevant carve film,) NDCG@10 of each (see :func:`list_ndcg`)."""
    users = lists.n_relevant > 0
    if score is None:
        hits = lists.labels[users, :10]
    else:
        order = np.argsort(-np.where(lists.valid, score, -np.inf), axis=1, kind="stable")[:, :10]
        hits = np.take_along_axis(lists.labels, order, axis=1)[users]
    return ndcg_at_k(hits, lists.n_relevant[users])


def _subset(lists: CarveLists, pick: np.ndarray) -> CarveLists:
    return CarveLists(lists.feats[pick], lists.labels[pick], lists.valid[pick], lists.n_relevant[pick])


def choose_reranker(lists: CarveLists, depth: int, seed: int, l2_grid: tuple[float, ...] = L2_GRID,
                    ) -> tuple[Reranker, dict[str, Any]]:
    """Weights fitted on every carve user, l2 chosen by NDCG@10 cross-fitted on two seeded halves of them."""
    flat = lists.feats[lists.valid]
    mean, scale = flat.mean(axis=0), flat.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    halves = np.random.default_rng(seed).random(lists.n_relevant.size) < 0.5
    trials = []
    for l2 in l2_grid:
        score = np.zeros(lists.labels.shape)
        for half in (halves, ~halves):
            w = fit_weights(_subset(lists, ~half), l2, mean, scale)
            score[half] = ((lists.feats[half] - mean) / scale) @ w
        gain = users_ndcg(lists, score) - users_ndcg(lists, None)  # paired over the carve's users
        trials.append({"l2": l2, "ndcg@10": round(list_ndcg(lists, score), 6),
                       "gain_se": round(float(gain.std(ddof=1) / np.sqrt(gain.size)) if gain.size > 1 else 0.0, 6)})
    best = max(trials, key=lambda t: t["ndcg@10"])
    weights = fit_weights(lists, best["l2"], mean, scale)
    record = {"depth": depth, "l2": best["l2"], "trials": trials, "ndcg@10": best["ndcg@10"],
              "gain_se": best["gain_se"],
              "weights_fitted": [float(v) for v in weights], "mean": [float(v) for v in mean],
              "scale": [float(v) for v in scale],
              "ranker_ndcg@10": round(list_ndcg(lists, None), 6), "users": int((lists.n_relevant > 0).sum())}
    return Reranker(weights=weights, mean=mean, scale=scale, depth=depth, search=record), record


def carve_view(trained: TrainedModel, fit_part: RatingMatrix) -> TrainedModel:
    """``trained`` (and its partner) reading ``fit_part`` as inputs: its rating predictions for the blend carve's
    users then use none of the carve's ratings (the SVD part was fitted on ``fit_part`` already)."""
    partner = None if trained.partner is None else replace(trained.partner, inputs=fit_part, _cache={})
    return replace(trained, inputs=fit_part, partner=partner, ranker=None, _cache={})


def fit_reranker(trained: TrainedModel, ranker_on_fit: Ranker, fit_part: RatingMatrix, blend_part: RatingMatrix,
                 *, threshold: float, seed: int, depth_grid: tuple[int, ...] = DEPTH_GRID,
                 max_users: int = MAX_USERS) -> tuple[Reranker | None, dict[str, Any]]:
    """The re-ranker chosen on the blend carve, or None when it does not beat the ranker's order there."""
    started = time.perf_counter()
    view = carve_view(trained, fit_part)
    relevant_users = np.unique(blend_part.row_of_each_rating()[blend_part.csr.data >= threshold])
    if relevant_users.size > max_users:
        relevant_users = np.sort(np.random.default_rng(seed).choice(relevant_users, max_users, replace=False))
    best: tuple[Reranker, dict[str, Any]] | None = None
    tried = []
    for depth in depth_grid:
        lists = carve_lists(view.predict, ranker_on_fit, fit_part, blend_part, relevant_users, depth, threshold)
        reranker, record = choose_reranker(lists, depth, seed)
        tried.append({"depth": depth, "ndcg@10": record["ndcg@10"]})
        if best is None or record["ndcg@10"] > best[1]["ndcg@10"]:
            best = (reranker, record)
    if best is None:
        return None, {"kept": False, "reason": "no depth tried"}
    reranker, record = best
    record = {**record, "depths": tried, "seconds": round(time.perf_counter() - started, 3),
              "relevant_from": threshold, "seed": seed}
    # kept only when it wins by more than KEEP_MARGIN standard errors of the paired gain (noise keeps nothing)
    record["kept"] = bool(record["ndcg@10"] - record["ranker_ndcg@10"] > KEEP_MARGIN * record["gain_se"])
    log.info("re-ranker on the blend carve: NDCG@10 %.4f against the ranker's %.4f (%s)", record["ndcg@10"],
             record["ranker_ndcg@10"], "kept" if record["kept"] else "not kept")
    return (replace(reranker, search=record) if record["kept"] else None), record


def attach_reranker(trained: TrainedModel, fit_part: RatingMatrix, blend_part: RatingMatrix, cfg: TrainConfig,
                    depth: int = DEFAULT_DEPTH) -> tuple[Reranker | None, dict[str, Any]]:
    """``trained`` (with its ranker, partner and blend fitted) with the re-ranker ``cfg.rerank`` asks for, chosen on
    the blend carve; its figures for the run's metrics. The ranker is refitted on ``fit_part`` at its chosen
    lambda, so the carve's films are unseen to it as to the rating model."""
    from recae.artifacts.trained_model import model_relevance
    from recae.training.ranking import fit_ranker

    started = time.perf_counter()
    on_fit, _ = fit_ranker(fit_part, replace(cfg, ranker_lambda=trained.ranker.lam))
    reranker, record = fit_reranker(trained, on_fit, fit_part, blend_part, threshold=model_relevance(trained),
                                    seed=cfg.seed, depth_grid=(depth,))
    record["seconds"] = round(time.perf_counter() - started, 3)
    return reranker, record


def served_scores(trained: TrainedModel, reranker: Reranker, rows: np.ndarray) -> np.ndarray:
    """(len(rows), n_movies) the order the re-ranker would serve: the ranker's top films re-ordered."""
    rows = np.asarray(rows, dtype=np.int64)
    block = trained.inputs.csr[rows]
    return reranker.order(trained.ranker.score_rows(block), block, lambda at, cols: trained.predict(rows[at], cols),
                          trained.rating_scale[1], trained.popularity(), trained.index.n_users)
