"""Fitting the watch-x-like re-ranker (recae.models.rerank) on the training run's blend carve, never on test.

The blend carve (``TrainConfig.blend_fraction`` of the training ratings) is the one part of the training ratings
that no autoencoder, partner or SVD part was fitted on. With the rating model reading only the fit part as inputs
and EASE refitted on the fit part (the chosen lambda: one more fit), each user's candidates and features are what
serving computes, and the carve's ratings >= ``relevant_from`` are the labels. The weights minimise a per-user
softmax cross-entropy (ListNet with the relevant films as targets) plus a small ridge::

    loss = mean_u [ -1/|R_u| sum_{i in R_u} log softmax_i(z_u) ] + l2/2 ||w||^2,  z_ui = w . (f_ui - mean) / scale

over users with a relevant film among their candidates (at most ``max_users``, a seeded sample). The settings
(depth, l2) are chosen by NDCG@10 cross-fitted on two halves of the carve's users, and the re-ranker is kept only
when that beats the ranker's own order on the same users by more than ``KEEP_MARGIN`` standard errors of the
paired gain; meta.json records both figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import minimize

from recae.evaluation.metrics import dense_flags, ndcg_at_k
from recae.models.rerank import DEFAULT_DEPTH, Reranker, candidates, features

if TYPE_CHECKING:
    from recae.artifacts.train_config import TrainConfig
    from recae.artifacts.trained_model import TrainedModel
    from recae.models.rankers import Ranker
    from recae.store.matrix import RatingMatrix

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
                    on_progress: Callable[[str], None] | None = None) -> tuple[TrainedModel, dict[str, Any]]:
    """``trained`` (with its ranker, partner and blend fitted) with the re-ranker ``cfg.rerank`` asks for, chosen on
    the blend carve; its figures for the run's metrics. The ranker is refitted on ``fit_part`` at its chosen
    lambda, so the carve's films are unseen to it as to the rating model."""
    from recae.artifacts.trained_model import model_relevance
    from recae.training.ranking import fit_ranker

    if cfg.rerank == "none" or trained.ranker is None or blend_part.nnz == 0:
        return trained, {}
    if on_progress:
        on_progress(f"re-ranker: the ranker's top {cfg.rerank_depth} by predicted rating, fitted on the blend carve")
    started = time.perf_counter()
    on_fit, _ = fit_ranker(fit_part, replace(cfg, ranker_lambda=trained.ranker.lam))
    reranker, record = fit_reranker(trained, on_fit, fit_part, blend_part, threshold=model_relevance(trained),
                                    seed=cfg.seed, depth_grid=(cfg.rerank_depth,))
    seconds = time.perf_counter() - started
    record["seconds"] = round(seconds, 3)
    if reranker is not None:
        reranker = replace(reranker, search=record)
    metrics = {"rerank_seconds": round(seconds, 3), "rerank_val_ndcg@10": record.get("ndcg@10", float("nan")),
               "rerank_ranker_val_ndcg@10": record.get("ranker_ndcg@10", float("nan"))}
    return replace(trained, reranker=reranker, rerank_search=record), metrics
