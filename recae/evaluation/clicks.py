"""Implicit top-N data: liked films as clicks, a held-out-users split, and the metrics of Liang et al. (2018).

Why: Mult-VAE (``recae.models.multvae``) learns from *which* films a user liked, not from the stars, and is judged by
how well it ranks films it never saw for users it never trained on ("strong generalisation"):

1. **Binarise.** A rating counts as a click from ``recae.evaluation.metrics.relevance_threshold`` of the top rating
   on (0.8 x the top: four stars and up on 1-5 and 0.5-5, the paper's ``rating > 3.5``; 8 and up on 2-10), or
   when it is above a ``threshold`` given. Users with fewer than ``min_user_items`` clicks (5) are dropped, as in the paper.
2. **Split users.** A seeded permutation of the remaining users gives ``n_heldout`` validation users,
   ``n_heldout`` test users and the rest for training. Training users are used whole.
3. **Items** are the films clicked by at least one training user; held-out users' other clicks are dropped
   (the model has no output for them).
4. **Fold-in / hidden.** For each held-out user with n clicks, ``h = clip(floor(hidden_fraction * n), 1, n - 1)``
   clicks chosen at random are hidden (20%); the other n - h are the fold-in the model reads. A user with one
   click keeps it as fold-in and has nothing to rank (counted as skipped by :func:`evaluate_top_n`).

Everything here is pure numpy/scipy: same inputs and seed, same split; cost O(nnz log nnz).

Metrics (per user u with hidden set I_u, fold-in films never ranked; mean over users with I_u non-empty):
    Recall@k = |top_k(u) & I_u| / min(k, |I_u|)                (the paper's "truncated" recall; it reaches 1)
    NDCG@k   = sum_{j<k} [top_k(u)_j in I_u] / log2(j + 2)  /  sum_{j<min(k,|I_u|)} 1 / log2(j + 2)
NDCG is ``recae.evaluation.metrics.ndcg_at_k`` (same definition); recall differs from
``recae.evaluation.metrics.recall_at_k`` (which divides by |I_u|), hence :func:`truncated_recall_at_k` here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recae.errors import TrainingError
from recae.evaluation.metrics import ndcg_at_k, relevance_threshold, top_k_unseen
from recae.store.matrix import RatingMatrix

DEFAULT_THRESHOLD: float | None = None  # keep ratings strictly above this; None: from 0.8 x the top rating on
DEFAULT_HIDDEN_FRACTION = 0.2  # share of each held-out user's clicks hidden and ranked
DEFAULT_MIN_USER_ITEMS = 5  # users with fewer clicks are dropped (the paper's min_uc)
DEFAULT_HELDOUT = 0.1  # validation users, and again test users, as a share of eligible users
DEFAULT_KS = (20, 100)

#: Scores every item for a block of users from their fold-in clicks: (batch, n_items) csr -> (batch, n_items).
ScoreFn = Callable[[sp.csr_matrix], np.ndarray]


# --- data ------------------------------------------------------------------------------------------------------


def binarize(matrix: RatingMatrix, threshold: float | None = DEFAULT_THRESHOLD) -> sp.csr_matrix:
    """(n_users, n_movies) float32 CSR of ones where the rating is above ``threshold`` (None: at or above
    :func:`liked_from` of the ratings, so that the same tastes on another scale give the same clicks); same IdIndex.
    O(nnz)."""
    csr = matrix.csr
    keep = csr.data > threshold if threshold is not None else csr.data >= liked_from(matrix)
    kept_before = np.zeros(csr.nnz + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    out = sp.csr_matrix(
        (np.ones(int(kept_before[-1]), np.float32), csr.indices[keep], kept_before[csr.indptr]), shape=csr.shape
    )
    out.has_sorted_indices = True
    return out


def liked_from(matrix: RatingMatrix) -> float:
    """The rating from which a film counts as liked by default: ``relevance_threshold`` of the top rating (the
    relevance ``recae evaluate`` uses); an empty matrix has no top and likes nothing."""
    return relevance_threshold(float(matrix.csr.data.max())) if matrix.nnz else math.inf


@dataclass(frozen=True, eq=False)
class HeldOutUsers:
    """Users the model never trains on: it reads ``fold_in`` and must rank the ``hidden`` clicks."""

    rows: np.ndarray  # (n,) int64 rows of these users in the input matrix
    fold_in: sp.csr_matrix  # (n, n_items) float32 binary: what the model sees
    hidden: sp.csr_matrix  # (n, n_items) float32 binary: what it must rank; disjoint from fold_in

    @property
    def n_users(self) -> int:
        return int(self.rows.size)


@dataclass(frozen=True, eq=False)
class UserSplit:
    """A held-out-users split of a click matrix, in positions; columns are the training users' items."""

    items: np.ndarray  # (n_items,) int64 columns of the input matrix that are the model's items
    train_rows: np.ndarray  # (n_train,) int64 rows of the training users
    train: sp.csr_matrix  # (n_train, n_items) float32 binary, every click of the training users
    validation: HeldOutUsers
    test: HeldOutUsers


def resolve_heldout(value: float, n_eligible: int) -> int:
    """Held-out users per part: ``value`` >= 1 is a count, 0 < value < 1 a share of eligible users (>= 1)."""
    if not value > 0 or math.isinf(value) or math.isnan(value):
        raise TrainingError(f"held-out users must be a count >= 1 or a share in (0, 1), got {value}")
    if value >= 1:
        if value != int(value):
            raise TrainingError(f"held-out users must be a whole count or a share in (0, 1), got {value}")
        return int(value)
    return max(1, round(value * n_eligible))


def split_heldout_users(
    clicks: sp.csr_matrix,
    n_heldout: int,
    *,
    hidden_fraction: float = DEFAULT_HIDDEN_FRACTION,
    seed: int = 0,
    min_user_items: int = DEFAULT_MIN_USER_ITEMS,
) -> UserSplit:
    """Split users into train / validation / test, and each held-out user's clicks into fold-in / hidden.

    Args:
        clicks: (n_users, n_movies) binary CSR (see :func:`binarize`).
        n_heldout: users in validation, and again in test.
        hidden_fraction: share of a held-out user's clicks to hide, in (0, 1).
        seed: the same seed and input give the same split.
        min_user_items: users with fewer clicks are in no part at all.
    Raises:
        TrainingError: when fewer than ``2 * n_heldout + 1`` users have enough clicks, or a setting is out of range.
    """
    if not 0.0 < hidden_fraction < 1.0:
        raise TrainingError(f"the hidden fraction must be in (0, 1), got {hidden_fraction}")
    if n_heldout < 1:
        raise TrainingError(f"held-out users must be at least 1, got {n_heldout}")
    clicks = sp.csr_matrix(clicks)
    clicks.sort_indices()
    counts = np.diff(clicks.indptr)  # (n_users,)
    eligible = np.flatnonzero(counts >= max(min_user_items, 1))
    if eligible.size < 2 * n_heldout + 1:
        raise TrainingError(
            f"only {eligible.size} users have at least {min_user_items} liked films; {n_heldout} validation and "
            f"{n_heldout} test users need at least {2 * n_heldout + 1} (lower --heldout-users)"
        )
    order = eligible[np.random.default_rng([seed, 0]).permutation(eligible.size)]
    n_train = eligible.size - 2 * n_heldout
    train_rows = np.sort(order[:n_train])
    val_rows = np.sort(order[n_train : n_train + n_heldout])
    test_rows = np.sort(order[n_train + n_heldout :])

    train_full = clicks[train_rows]
    items = np.flatnonzero(np.diff(train_full.tocsc().indptr) > 0).astype(np.int64)
    column_of = np.full(clicks.shape[1], -1, dtype=np.int64)  # input column -> item position, -1 when not an item
    column_of[items] = np.arange(items.size)
    train = _restrict(train_full, column_of, items.size)
    hide_rng = np.random.default_rng([seed, 1])
    validation = _fold_in_hidden(_restrict(clicks[val_rows], column_of, items.size), val_rows, hidden_fraction,
                                 hide_rng)
    test = _fold_in_hidden(_restrict(clicks[test_rows], column_of, items.size), test_rows, hidden_fraction, hide_rng)
    return UserSplit(items=items, train_rows=train_rows, train=train, validation=validation, test=test)


def _restrict(block: sp.csr_matrix, column_of: np.ndarray, n_items: int) -> sp.csr_matrix:
    """The block's clicks on items only, columns renumbered to item positions (order kept, so still sorted)."""
    cols = column_of[block.indices]
    keep = cols >= 0
    kept_before = np.zeros(block.nnz + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    out = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), cols[keep], kept_before[block.indptr]),
                        shape=(block.shape[0], n_items))
    out.has_sorted_indices = True
    return out


def _fold_in_hidden(block: sp.csr_matrix, rows: np.ndarray, fraction: float,
                    rng: np.random.Generator) -> HeldOutUsers:
    """Hide ``clip(floor(fraction * n), 1, n - 1)`` random clicks of each user (none when n < 2)."""
    counts = np.diff(block.indptr)  # (n,)
    n_hidden = np.where(counts >= 2, np.clip(np.floor(fraction * counts).astype(np.int64), 1, counts - 1), 0)
    entry_row = np.repeat(np.arange(block.shape[0]), counts)
    order = np.lexsort((rng.random(block.nnz), entry_row))  # entries grouped by row, random order within a row
    rank = np.empty(block.nnz, dtype=np.int64)
    rank[order] = np.arange(block.nnz) - block.indptr[entry_row[order]]  # random rank of each entry in its row
    hidden_mask = rank < n_hidden[entry_row]
    return HeldOutUsers(rows=np.asarray(rows, np.int64), fold_in=_masked(block, ~hidden_mask),
                        hidden=_masked(block, hidden_mask))


def _masked(block: sp.csr_matrix, mask: np.ndarray) -> sp.csr_matrix:
    kept_before = np.zeros(block.nnz + 1, dtype=np.int64)
    np.cumsum(mask, out=kept_before[1:])
    out = sp.csr_matrix((block.data[mask], block.indices[mask], kept_before[block.indptr]), shape=block.shape)
    out.has_sorted_indices = True
    return out


@dataclass(frozen=True, eq=False)
class ImplicitSplit:
    """A :class:`UserSplit` of a store's ratings with the external ids and the settings that made it."""

    positions: UserSplit
    movie_ids: np.ndarray  # (n_items,) external movie id of each item column
    train_user_ids: np.ndarray  # (n_train,)
    validation_user_ids: np.ndarray  # (n_val,)
    test_user_ids: np.ndarray  # (n_test,)
    spec: dict[str, Any]  # threshold or liked_from, n_heldout, hidden_fraction, seed, min_user_items, fingerprint

    @property
    def train(self) -> sp.csr_matrix:
        return self.positions.train

    @property
    def validation(self) -> HeldOutUsers:
        return self.positions.validation

    @property
    def test(self) -> HeldOutUsers:
        return self.positions.test

    @property
    def n_items(self) -> int:
        return int(self.movie_ids.size)


def implicit_split(
    matrix: RatingMatrix,
    *,
    threshold: float | None = DEFAULT_THRESHOLD,
    heldout: float = DEFAULT_HELDOUT,
    hidden_fraction: float = DEFAULT_HIDDEN_FRACTION,
    seed: int = 0,
    min_user_items: int = DEFAULT_MIN_USER_ITEMS,
) -> ImplicitSplit:
    """Binarise ``matrix`` and split it by users (see the module docstring); ``heldout`` as :func:`resolve_heldout`."""
    clicks = binarize(matrix, threshold)
    n_eligible = int(np.count_nonzero(np.diff(clicks.indptr) >= max(min_user_items, 1)))
    n_heldout = resolve_heldout(heldout, n_eligible)
    positions = split_heldout_users(clicks, n_heldout, hidden_fraction=hidden_fraction, seed=seed,
                                    min_user_items=min_user_items)
    user_ids = matrix.index.user_ids
    liked = {"threshold": threshold} if threshold is not None else {"liked_from": liked_from(matrix)}
    spec = {**liked, "heldout_users": n_heldout, "hidden_fraction": hidden_fraction, "seed": seed,
            "min_user_items": min_user_items, "data_fingerprint": matrix.fingerprint()}
    return ImplicitSplit(
        positions=positions, movie_ids=matrix.index.movie_ids[positions.items],
        train_user_ids=user_ids[positions.train_rows], validation_user_ids=user_ids[positions.validation.rows],
        test_user_ids=user_ids[positions.test.rows], spec=spec,
    )


# --- metrics ---------------------------------------------------------------------------------------------------


def truncated_recall_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Per-user Recall@k of Liang et al.: hits_u / min(k, n_relevant_u), k = hits.shape[1]. Returns (n_users,).

    Unlike ``recae.evaluation.metrics.recall_at_k`` (hits_u / n_relevant_u) it reaches 1 whenever the top k is all hits.
    """
    hits = np.asarray(hits, dtype=bool)
    n_relevant = np.asarray(n_relevant, dtype=np.int64)
    if np.any(n_relevant < 1):
        raise ValueError("every user needs at least one relevant film (skip users without one)")
    return hits.sum(axis=1) / np.minimum(hits.shape[1], n_relevant)


@dataclass(frozen=True)
class TopNMetrics:
    """Mean truncated Recall@k and NDCG@k over held-out users with at least one hidden click."""

    ks: tuple[int, ...]
    recall: tuple[float, ...]  # recall[i] is Recall@ks[i]
    ndcg: tuple[float, ...]  # ndcg[i] is NDCG@ks[i]
    n_users: int  # users evaluated
    n_skipped: int = 0  # held-out users with nothing hidden

    def as_dict(self) -> dict[str, float]:
        """``{"recall@20": ..., "recall@100": ..., "ndcg@20": ..., "ndcg@100": ...}``."""
        out = {f"recall@{k}": r for k, r in zip(self.ks, self.recall, strict=True)}
        out.update({f"ndcg@{k}": n for k, n in zip(self.ks, self.ndcg, strict=True)})
        return out


def evaluate_top_n(score: ScoreFn, users: HeldOutUsers, ks: tuple[int, ...] = DEFAULT_KS,
                   batch_users: int = 1000) -> TopNMetrics:
    """Rank every item but the fold-in ones for each held-out user and compare the top k with the hidden clicks.

    Memory O(batch_users x n_items); the fold-in clicks are the only input ``score`` sees.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive list lengths, got {ks}")
    n_hidden_all = np.diff(users.hidden.indptr)  # (n,)
    evaluated = np.flatnonzero(n_hidden_all > 0)
    n_skipped = int(users.n_users - evaluated.size)
    if evaluated.size == 0:
        nan = tuple(math.nan for _ in ks)
        return TopNMetrics(tuple(ks), nan, nan, n_users=0, n_skipped=n_skipped)
    k_max = max(ks)
    recall_sum, ndcg_sum = np.zeros(len(ks)), np.zeros(len(ks))
    for start in range(0, evaluated.size, max(batch_users, 1)):
        rows = evaluated[start : start + batch_users]
        fold_in, hidden = users.fold_in[rows], users.hidden[rows]
        scores = np.asarray(score(fold_in))  # (batch, n_items)
        if scores.shape != fold_in.shape:
            raise ValueError(f"score returned shape {scores.shape}, expected {fold_in.shape}")
        top = top_k_unseen(scores, fold_in.toarray() > 0, k_max)  # (batch, k') best first, -1 padded
        relevant = hidden.toarray() > 0  # (batch, n_items)
        hits = (top >= 0) & np.take_along_axis(relevant, np.maximum(top, 0), axis=1)
        if hits.shape[1] < k_max:  # fewer items than k: the missing places are misses
            hits = np.pad(hits, ((0, 0), (0, k_max - hits.shape[1])))
        n_hidden = n_hidden_all[rows]
        for i, k in enumerate(ks):
            recall_sum[i] += truncated_recall_at_k(hits[:, :k], n_hidden).sum()
            ndcg_sum[i] += ndcg_at_k(hits[:, :k], n_hidden).sum()
    n = evaluated.size
    return TopNMetrics(tuple(ks), tuple(float(x) for x in recall_sum / n), tuple(float(x) for x in ndcg_sum / n),
                       n_users=int(n), n_skipped=n_skipped)


def popularity_scores(train: sp.csr_matrix) -> np.ndarray:
    """(n_items,) clicks per item among training users: the popularity baseline ranks every user by it."""
    return np.asarray(train.sum(axis=0), dtype=np.float64).ravel()


def popularity_scorer(train: sp.csr_matrix) -> ScoreFn:
    """A :data:`ScoreFn` giving every user the items' training popularity."""
    popularity = popularity_scores(train)

    def score(fold_in: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(popularity, (fold_in.shape[0], popularity.size))

    return score
