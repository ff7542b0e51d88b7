"""Accuracy metrics: rating error (RMSE, MAE) and top-k ranking quality (precision, recall, NDCG).

Pure numpy/scipy, no torch. Any model that implements :class:`Scorer` (the baselines in
``recae.evaluation.baselines`` and the autoencoders) can be measured with :func:`rating_metrics` and
:func:`ranking_metrics`. Ranking is honest: a user's training films are never ranked (they cannot be
recommended), and held-out ratings are only ever used to judge the ranking, never as input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from recae.threads import in_order_on_threads

if TYPE_CHECKING:
    from recae.store.matrix import RatingMatrix

#: A held-out rating counts as relevant (liked) in ranking metrics from this share of the top rating: 0.8 x 5 = 4
#: stars on MovieLens' 1-5 and 0.5-5 scales alike, 8 on 2-10, 80 on 1-100. The top alone sets it, because a scale's
#: bottom says nothing of where liking starts (0.5-5 and 1-5 both start at 4), and a multiple of the ratings moves
#: the threshold with them, so the same tastes on another scale count the same films relevant.
RELEVANT_SHARE = 0.8
#: Ranking metrics score at most this many test users, a seeded sample above it (every user of ml-100k to ML-1M and
#: ml-latest are scored; ML-32M's 200k are sampled). Each user's list costs a pass over the whole catalogue, and the
#: mean NDCG@10 of 50,000 users has a standard error near 0.0013 (per-user spread about 0.3): four times the users
#: would buy a figure twice as close at four times the minutes.
RANKING_USERS = 50_000
#: Users scored at once keep a batch's (batch, n_movies) float32 scores under this: ranking metrics and the
#: precompute both cut their users by it.
SCORE_BATCH_BYTES = 64 * 2**20


def score_batch_users(n_movies: int, budget_bytes: int = SCORE_BATCH_BYTES) -> int:
    """Users scored at once so that a batch's (batch, n_movies) float32 scores fit in ``budget_bytes``."""
    return max(1, budget_bytes // (4 * max(int(n_movies), 1)))


@runtime_checkable
class Scorer(Protocol):
    """A fitted model that predicts ratings at positions of the shared IdIndex, clipped to the rating scale."""

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Predicted ratings at the (row, col) pairs; ``rows`` and ``cols`` are (n,), result (n,)."""
        ...

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        """Predicted ratings of every movie for the users ``rows`` (batch,); result (batch, n_movies)."""
        ...


@dataclass(frozen=True)
class RatingMetrics:
    """Error of predicted ratings on held-out ratings."""

    rmse: float
    mae: float
    n_test: int


@dataclass(frozen=True)
class RankingMetrics:
    """Mean top-k quality over the users that have at least one relevant held-out film.

    ``n_users`` users were evaluated; ``n_skipped`` test users had no relevant held-out film. With no user
    to evaluate the three means are NaN.
    """

    precision: float
    recall: float
    ndcg: float
    k: int
    n_users: int
    n_skipped: int = 0
    of_users: int = 0  # the test users with a relevant film that the n_users were sampled from (0: all scored)


# ----------------------------------------------------------------------------------------------------------
# Rating error


def _paired(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"pred has shape {pred.shape} but true has shape {true.shape}; they must match")
    if pred.size == 0:
        raise ValueError("cannot measure an error on zero ratings")
    return pred, true


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    """Root mean squared error: sqrt( (1/n) * sum_j (pred_j - true_j)^2 )."""
    pred, true = _paired(pred, true)
    return float(np.sqrt(np.mean(np.square(pred - true))))


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute error: (1/n) * sum_j |pred_j - true_j|. Never larger than RMSE."""
    pred, true = _paired(pred, true)
    return float(np.mean(np.abs(pred - true)))


def rating_metrics(scorer: Scorer, test: RatingMatrix) -> RatingMetrics:
    """RMSE and MAE of ``scorer`` on every rating of ``test``. O(nnz(test)) memory."""
    rows, cols, values = test.coo()
    pred = scorer.predict(rows, cols)  # (nnz,)
    return RatingMetrics(rmse=rmse(pred, values), mae=mae(pred, values), n_test=int(values.size))


# ----------------------------------------------------------------------------------------------------------
# Ranking quality, per user, on a hit matrix
#
# ``hits`` is (n_users, k) bool: hits[u, j] is True when the film ranked j-th (0-based) for user u is relevant.
# ``n_relevant`` is (n_users,): how many relevant held-out films user u has (>= 1).


def precision_at_k(hits: np.ndarray) -> np.ndarray:
    """Per-user precision@k = hits_u / k, with k = hits.shape[1]. Returns (n_users,)."""
    hits = np.asarray(hits, dtype=bool)
    return hits.sum(axis=1) / hits.shape[1]


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Per-user recall@k = hits_u / n_relevant_u (the common definition; it stays below 1 when
    n_relevant_u > k). Returns (n_users,)."""
    hits = np.asarray(hits, dtype=bool)
    return hits.sum(axis=1) / _positive(n_relevant)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Per-user binary-relevance NDCG@k = DCG_u / IDCG_u. Returns (n_users,).

    DCG_u  = sum_{j=0}^{k-1} hits[u, j] / log2(j + 2)
    IDCG_u = sum_{j=0}^{min(k, n_relevant_u)-1} 1 / log2(j + 2)   (every relevant film ranked first)
    """
    hits = np.asarray(hits, dtype=bool)
    k = hits.shape[1]
    discount = 1.0 / np.log2(np.arange(k) + 2.0)  # (k,)
    dcg = hits @ discount
    ideal_prefix = np.concatenate(([0.0], np.cumsum(discount)))  # ideal_prefix[m] = IDCG with m relevant films
    idcg = ideal_prefix[np.minimum(_positive(n_relevant), k)]
    return dcg / idcg


def _positive(n_relevant: np.ndarray) -> np.ndarray:
    n_relevant = np.asarray(n_relevant, dtype=np.int64)
    if np.any(n_relevant < 1):
        raise ValueError("every user needs at least one relevant film (skip users without one)")
    return n_relevant


def top_k_unseen(scores: np.ndarray, seen: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` highest scores per row among films not ``seen``, best first.

    Computed in float32 on one negated copy (a float64 copy and a masked one took four times as long and three
    times the memory at ML-25M's 59k films). NaN scores rank after every real score; ties keep column order.

    Args:
        scores: (batch, n_movies) scores or predicted ratings (left unchanged).
        seen: (batch, n_movies) bool, True for films the user rated in training (never returned).
        k: list length; rows with fewer than ``k`` unseen films are padded with -1.
    Returns:
        (batch, min(k, n_movies)) int64 columns. Cost O(batch x n_movies) via argpartition.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    cost = np.negative(scores, dtype=np.float32, order="C")  # (batch, n_movies); smaller is better
    if not np.isfinite(cost).all():  # rare; nan_to_num on every batch would cost as much as the selection
        top = np.finfo(np.float32).max
        np.nan_to_num(cost, copy=False, nan=top, posinf=top, neginf=-top)  # every unseen film beats a seen one
    cost[seen] = np.inf
    k = min(k, cost.shape[1])
    part = np.argpartition(cost, k - 1, axis=1)[:, :k] if k < cost.shape[1] else np.argsort(cost, axis=1)
    order = np.argsort(np.take_along_axis(cost, part, axis=1), axis=1, kind="stable")
    cols = np.take_along_axis(part, order, axis=1)  # (batch, k)
    return np.where(np.take_along_axis(seen, cols, axis=1), -1, cols).astype(np.int64)


def _row_batches(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, rows.size, size):
        yield rows[start : start + size]


def dense_flags(block_indptr: np.ndarray, block_indices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(batch, n_movies) bool: True at the entries stored in a CSR block of users (rated, or relevant)."""
    flags = np.zeros(shape, dtype=bool)
    flags[np.repeat(np.arange(shape[0]), np.diff(block_indptr)), block_indices] = True
    return flags


@dataclass(frozen=True, eq=False)
class RowScores:
    """A ranking-only scorer: ``score_of(rows)`` gives (len(rows), n_movies) scores (e.g. popularity, EASE)."""

    score_of: Callable[[np.ndarray], np.ndarray]

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.score_of(rows)

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        raise NotImplementedError("a ranking-only scorer predicts no rating")


def ranking_scores(scorer: Scorer, rows: np.ndarray) -> np.ndarray:
    """What orders a user's list: ``scorer.rank_rows`` when the scorer has a ranker, else its predicted ratings."""
    rank_rows = getattr(scorer, "rank_rows", None)
    return np.asarray(rank_rows(rows) if rank_rows is not None else scorer.score_rows(rows))


@dataclass(frozen=True)
class ListQuality:
    """Top-k quality at several cut-offs, and what the lists look like.

    ``coverage`` is the share of the catalogue that appears in at least one evaluated user's top ``list_k``;
    ``mean_popularity`` the mean, over those lists' films, of the share of training users who rated the film
    (a most-popular list scores high here, a list of niche films low).
    """

    at: dict[int, RankingMetrics]
    coverage: float
    mean_popularity: float
    list_k: int


def relevance_threshold(rating_max: float, relevant_from: float | None = None) -> float:
    """The rating from which a held-out rating is relevant: ``relevant_from`` when set (> 0), else
    ``RELEVANT_SHARE * rating_max`` (``rating_max``: the top of the scale, the highest training rating).

    Raises ValueError for a top that is not positive, where no share of it separates liked from disliked.
    """
    if relevant_from is not None and relevant_from > 0:
        return float(relevant_from)
    if not math.isfinite(rating_max) or rating_max <= 0:
        raise ValueError(f"the top rating is {rating_max:g}; relevance needs a positive scale (set relevant_from)")
    return RELEVANT_SHARE * float(rating_max)


def ranking_metrics(
    scorer: Scorer,
    train: RatingMatrix,
    test: RatingMatrix,
    k: int = 10,
    *,
    threshold: float,
    batch_users: int | None = None,
    max_users: int | None = RANKING_USERS,
) -> RankingMetrics:
    """Mean precision@k, recall@k and NDCG@k over test users with a relevant held-out film (see list_quality)."""
    return list_quality(scorer, train, test, ks=(k,), threshold=threshold, batch_users=batch_users,
                        max_users=max_users).at[k]


def list_quality(
    scorer: Scorer,
    train: RatingMatrix,
    test: RatingMatrix,
    ks: tuple[int, ...] = (10, 20, 100),
    *,
    threshold: float,
    batch_users: int | None = None,
    list_k: int = 10,
    threads: int | None = None,
    max_users: int | None = RANKING_USERS,
    seed: int = 0,
) -> ListQuality:
    """Precision, recall and NDCG at each k in ``ks``, catalogue coverage and popularity of the top ``list_k``.

    For each test user the scorer ranks (by :func:`ranking_scores`) every film the user did not rate in
    ``train``; held-out films rated >= ``threshold`` are relevant, all others (including held-out films rated
    lower) are not. Users with no relevant held-out film are skipped and counted in ``n_skipped``. Users are
    scored ``batch_users`` at a time (default: up to 1,024, fewer where a batch's scores would pass 64 MB), on
    ``threads`` threads (default: the CPUs, at most 4), so memory is O(threads x batch_users x n_movies), never
    users x movies; the lists are selected once, at the largest k. Above ``max_users`` eligible users (None: no
    limit) a sample of that many, drawn with ``seed``, is scored, and ``of_users`` says how many it was drawn from.
    """
    if train.shape != test.shape:
        raise ValueError(f"train has shape {train.shape} but test has {test.shape}; they must share one IdIndex")
    if batch_users is not None and batch_users < 1:
        raise ValueError(f"batch_users must be at least 1, got {batch_users}")
    if not ks or min(ks) < 1 or list_k < 1:
        raise ValueError(f"cut-offs must be at least 1, got {ks} and list_k {list_k}")
    relevant_csr = test.csr.copy()
    relevant_csr.data = (relevant_csr.data >= threshold).astype(np.float32)
    relevant_csr.eliminate_zeros()
    n_relevant_all = np.diff(relevant_csr.indptr)  # (n_users,)
    test_users = np.flatnonzero(np.diff(test.csr.indptr) > 0)
    users = test_users[n_relevant_all[test_users] > 0]
    n_skipped = int(test_users.size - users.size)
    of_users = 0
    if max_users is not None and users.size > max_users:
        of_users = int(users.size)
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    if users.size == 0:
        nan = RankingMetrics(math.nan, math.nan, math.nan, k=0, n_users=0, n_skipped=n_skipped)
        return ListQuality(at={k: replace(nan, k=k) for k in ks}, coverage=math.nan, mean_popularity=math.nan,
                           list_k=list_k)

    n_movies = train.shape[1]
    depth = max(*ks, list_k)
    sums = {k: np.zeros(3) for k in ks}  # precision, recall, ndcg
    listed = np.zeros(n_movies, dtype=bool)
    popularity = np.bincount(train.csr.indices, minlength=n_movies) / max(train.shape[0], 1)  # (n_movies,)
    popularity_sum, popularity_count = 0.0, 0
    def top_of(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One batch's (rows, top ``depth`` unseen films): pure, so batches are scored side by side."""
        scores = ranking_scores(scorer, rows)  # (batch, n_movies)
        if scores.shape != (rows.size, n_movies):
            raise ValueError(f"scores have shape {scores.shape}, expected {(rows.size, n_movies)}")
        seen_block = train.csr[rows]
        return rows, top_k_unseen(scores, dense_flags(seen_block.indptr, seen_block.indices, scores.shape), depth)

    if batch_users is None:
        batch_users = min(1024, score_batch_users(n_movies))
    # consumed in batch order, so the sums do not depend on the number of threads
    for rows, top in in_order_on_threads(top_of, _row_batches(users, batch_users), threads):
        rel_block = relevant_csr[rows]
        relevant = dense_flags(rel_block.indptr, rel_block.indices, (rows.size, n_movies))  # (batch, n_movies)
        hits_all = (top >= 0) & np.take_along_axis(relevant, np.maximum(top, 0), axis=1)
        n_rel = n_relevant_all[rows]
        for k in ks:
            hits = hits_all[:, :k]
            if hits.shape[1] < k:  # fewer films than k: the missing places are misses
                hits = np.pad(hits, ((0, 0), (0, k - hits.shape[1])))
            sums[k] += [precision_at_k(hits).sum(), recall_at_k(hits, n_rel).sum(), ndcg_at_k(hits, n_rel).sum()]
        shown = top[:, :list_k]
        shown = shown[shown >= 0]
        listed[shown] = True
        popularity_sum += float(popularity[shown].sum())
        popularity_count += int(shown.size)
    at = {}
    for k in ks:
        precision, recall, ndcg = (float(x) for x in sums[k] / users.size)
        at[k] = RankingMetrics(precision, recall, ndcg, k=k, n_users=int(users.size), n_skipped=n_skipped,
                               of_users=of_users)
    return ListQuality(at=at, coverage=float(listed.sum() / max(n_movies, 1)),
                       mean_popularity=popularity_sum / max(popularity_count, 1), list_k=list_k)
