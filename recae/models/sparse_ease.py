"""Sparse EASE: EASE over every rated film of any catalogue, in memory that grows with the films, not films².

Dense EASE (``recae.models.rankers``) needs one films x films matrix: 30.7 GB at ML-32M's 87,585 films. Almost
all of a list's quality comes from the films people rate often, so this ranker splits the catalogue:

* the ``head``: the ``head_items`` most-rated films (default 12,000: one 576 MB float32 matrix) get EASE's exact
  closed form among themselves, ``B_hh = I - P / diag(P)`` with ``P = (X_h^T X_h + lambda I)^-1``;
* the ``tail``: every other rated film ``j`` is predicted from its ``neighbours`` head films ``N_j`` that co-occur
  with it most (largest ``(X_h^T X_t)_{.j}``) by the same ridge regression EASE solves, restricted to them::

      b_j = (G_{N_j N_j} + lambda I)^-1 G_{N_j j},   G = X^T X,   stored as column j of a sparse (H, T) matrix

  (a film's EASE column with every regressor outside ``N_j`` fixed at zero; with ``N_j`` the whole head it is
  EASE's column of a catalogue without the other tail films).

A user's scores are ``x_h B_hh`` on the head and ``x_h B_ht`` on the tail, ``x_h`` their ratings of head films
(r / r_max or 1, as EASE reads them): tail films are predicted but do not predict (their few ratings carry little).
When the head holds every rated film this *is* dense EASE, which is what ``ranker = "auto"`` serves on catalogues
that small. Choosing the tail's columns from the head only, rather than from every film, lost nothing measurable on
the validation carves of ml-latest-small and ml-1m (tests/benchmarks/README.md, Ranking) and keeps the fit to
three passes over X.

Cost: X_h^T X_h and X_h^T X_t are sparse products, O(sum over users of n_rated^2), summed into one dense (H, H)
matrix and (H, block) blocks; the head's inverse is O(H^3) in place (LAPACK), the tail O(T k^3) in batched solves;
memory H^2 + T k floats. Films never rated in training score below every rated film, as in dense EASE.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recae.errors import TrainingError
from recae.models.rankers import (LambdaTrial, best_trial, choose_ease_lambda, covered_items, ease_from_gram,
                                  gram_matrix, ranker_input, start_lambda)
from recae.threads import in_order_on_threads

if TYPE_CHECKING:
    from recae.store.matrix import RatingMatrix

log = logging.getLogger(__name__)

#: Films with exact EASE among themselves: one float32 matrix of this side is 576 MB, inverted in about 25 s on
#: two cores; on MovieLens-shaped data it holds every film rated more than a few hundred times.
DEFAULT_HEAD_ITEMS = 12_000
#: Head films each tail film is regressed on (ml-latest-small and ml-1m validation carves, heads of 500-2,000:
#: 32, 64 and 128 within 0.9% of each other, none ahead on both sets; 64 costs a quarter of 128's solves).
DEFAULT_NEIGHBOURS = 64
#: Tail films whose (H, block) co-occurrence block is formed at once: 12,000 x 2,048 float32 is 98 MB.
TAIL_BLOCK = 2048
#: Users whose tail scores one sparse product forms at once: its nearly dense sparse result (12 bytes an entry)
#: stays near 100 MB at ML-32M's 75,585 tail films instead of a GB for a batch of 1,024 users.
TAIL_SCORE_ROWS = 128
#: Tail films solved per batch of (block, k, k) systems.
SOLVE_BLOCK = 1024


@dataclass(frozen=True, eq=False)
class SparseEaseRanker:
    """A fitted sparse EASE: exact EASE over ``head``, sparse regressions from the head for ``tail``."""

    head: np.ndarray  # (H,) int64 columns of the IdIndex with exact EASE, ascending
    head_weights: np.ndarray  # (H, H) float32 B_hh, zero diagonal
    tail: np.ndarray  # (T,) int64 columns predicted from head films, ascending
    tail_weights: sp.csr_matrix  # (H, T) float32 B_ht, at most ``neighbours`` non-zeros per column
    n_movies: int
    lam: float
    input: str = "value"
    rating_max: float = 5.0
    neighbours: int = DEFAULT_NEIGHBOURS

    @property
    def items(self) -> np.ndarray:
        """(n_items,) int64 every column this ranker scores from the data, ascending."""
        return np.union1d(self.head, self.tail)

    def score_rows(self, ratings: sp.csr_matrix) -> np.ndarray:
        """(batch, n_movies) float32 scores of users with these rating rows (higher first).

        Films never rated in training score one below the user's lowest score, after every rated film.
        """
        x = ranker_input(sp.csr_matrix(ratings), self.input, self.rating_max)[:, self.head]  # (batch, H)
        head_scores = np.asarray(x @ self.head_weights, dtype=np.float32)  # (batch, H)
        batch = head_scores.shape[0]
        tail_scores = np.empty((batch, self.tail.size), dtype=np.float32)  # (batch, T)
        for start in range(0, batch, TAIL_SCORE_ROWS):  # the sparse product's own result is nearly dense: bound it
            rows = slice(start, start + TAIL_SCORE_ROWS)
            tail_scores[rows] = (x[rows] @ self.tail_weights).toarray()
        lowest = np.minimum(head_scores.min(axis=1, initial=0.0), tail_scores.min(axis=1, initial=0.0))
        out = np.repeat((lowest - 1.0).astype(np.float32)[:, None], self.n_movies, axis=1) if batch else \
            np.zeros((0, self.n_movies), dtype=np.float32)
        out[:, self.head] = head_scores
        out[:, self.tail] = tail_scores
        return out

    def describe(self) -> dict[str, object]:
        """The settings meta.json records beside the tensors."""
        return {"kind": "sparse-ease", "lambda": self.lam, "input": self.input, "rating_max": self.rating_max,
                "items": int(self.head.size + self.tail.size), "n_movies": self.n_movies,
                "head_items": int(self.head.size), "neighbours": self.neighbours,
                "tail_nonzeros": int(self.tail_weights.nnz)}


@dataclass(frozen=True, eq=False)
class SparseEaseGram:
    """What every lambda shares: the head's Gram matrix and each tail film's strongest head neighbours."""

    head: np.ndarray  # (H,) int64
    gram: np.ndarray  # (H, H) float32 Fortran-ordered X_h^T X_h
    tail: np.ndarray  # (T,) int64
    neighbours: np.ndarray  # (T, k) int32 positions in ``head``
    cooccurrence: np.ndarray  # (T, k) float32 (X_h^T X_t) at those positions
    n_movies: int
    input: str
    rating_max: float


def sparse_ease_gram(train: sp.csr_matrix, *, input: str = "value", rating_max: float = 5.0,
                     head_items: int = DEFAULT_HEAD_ITEMS, neighbours: int = DEFAULT_NEIGHBOURS) -> SparseEaseGram:
    """The lambda-independent part of a sparse EASE fit on ``train`` (n_users, n_movies)."""
    if head_items < 1 or neighbours < 1:
        raise TrainingError(f"sparse EASE needs head_items and neighbours >= 1, got {head_items} and {neighbours}")
    x = ranker_input(sp.csr_matrix(train), input, rating_max)
    rated = covered_items(x, x.shape[1])
    if rated.size == 0:
        raise TrainingError("EASE needs at least one rated film")
    head = covered_items(x, head_items)
    tail = np.setdiff1d(rated, head, assume_unique=True)
    x_head = x[:, head].tocsr()
    started = time.perf_counter()
    gram = gram_matrix(x_head)
    gram_seconds = time.perf_counter() - started
    k = min(neighbours, head.size)
    idx, val = _strongest_neighbours(x_head, x[:, tail].tocsc(), k)
    log.info("sparse EASE on %d ratings: %d head films (Gram %.1f s), %d tail films x %d neighbours (%.1f s)",
             x.nnz, head.size, gram_seconds, tail.size, k, time.perf_counter() - started - gram_seconds)
    return SparseEaseGram(head=head, gram=gram, tail=tail, neighbours=idx, cooccurrence=val,
                          n_movies=x.shape[1], input=input, rating_max=float(rating_max))


def _strongest_neighbours(x_head: sp.csr_matrix, x_tail: sp.csc_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, k) head positions with the largest co-occurrence ``X_h^T x_j`` of each tail film j, and those values.

    Blocks of ``TAIL_BLOCK`` tail films: one sparse product, densified to (H, block), then a partial sort.
    """
    n_tail = x_tail.shape[1]
    idx = np.zeros((n_tail, k), dtype=np.int32)
    val = np.zeros((n_tail, k), dtype=np.float32)
    head_by_film = x_head.T.tocsr()  # (H, n_users)

    def strongest(start: int) -> None:  # writes its own rows of idx and val only
        stop = min(start + TAIL_BLOCK, n_tail)
        block = (head_by_film @ x_tail[:, start:stop]).toarray()  # (H, b)
        top = np.argpartition(-block, k - 1, axis=0)[:k] if k < block.shape[0] else \
            np.broadcast_to(np.arange(block.shape[0])[:, None], block.shape)
        idx[start:stop] = top.T
        val[start:stop] = np.take_along_axis(block, top, axis=0).T

    for _ in in_order_on_threads(strongest, range(0, n_tail, TAIL_BLOCK)):
        pass
    return idx, val


def sparse_ease_from_gram(parts: SparseEaseGram, lam: float) -> SparseEaseRanker:
    """Sparse EASE at ``lam`` from the shared parts (not consumed: each lambda works on a copy of the Gram)."""
    if lam <= 0:
        raise TrainingError(f"the EASE lambda must be positive, got {lam}")
    tail_weights = _tail_weights(parts, lam)
    head_weights = ease_from_gram(np.array(parts.gram, order="F", copy=True), lam)
    return SparseEaseRanker(head=parts.head, head_weights=head_weights, tail=parts.tail, tail_weights=tail_weights,
                            n_movies=parts.n_movies, lam=float(lam), input=parts.input, rating_max=parts.rating_max,
                            neighbours=int(parts.neighbours.shape[1]))


def _tail_weights(parts: SparseEaseGram, lam: float) -> sp.csr_matrix:
    """(H, T) B_ht: column j solves ``(G_NN + lam I) b = G_Nj`` over its neighbours N (batched Cholesky)."""
    n_tail, k = parts.neighbours.shape
    weights = np.zeros((n_tail, k), dtype=np.float32)
    gram = parts.gram
    ridge = np.float32(lam) * np.eye(k, dtype=np.float32)
    for start in range(0, n_tail, SOLVE_BLOCK):
        near = parts.neighbours[start:start + SOLVE_BLOCK]  # (b, k)
        systems = gram[near[:, :, None], near[:, None, :]] + ridge  # (b, k, k), symmetric positive definite
        rhs = parts.cooccurrence[start:start + SOLVE_BLOCK, :, None]  # (b, k, 1)
        weights[start:start + SOLVE_BLOCK] = np.linalg.solve(systems, rhs)[:, :, 0]
    columns = np.repeat(np.arange(n_tail, dtype=np.int64), k)
    csc = sp.csc_matrix((weights.ravel(), (parts.neighbours.ravel().astype(np.int64), columns)),
                        shape=(parts.head.size, n_tail), dtype=np.float32)
    csc.eliminate_zeros()
    return csc.tocsr()


def fit_sparse_ease(train: sp.csr_matrix, lam: float, *, input: str = "value", rating_max: float = 5.0,
                    head_items: int = DEFAULT_HEAD_ITEMS, neighbours: int = DEFAULT_NEIGHBOURS) -> SparseEaseRanker:
    """Sparse EASE on the training ratings ``train`` (n_users, n_movies) at one lambda."""
    parts = sparse_ease_gram(train, input=input, rating_max=rating_max, head_items=head_items, neighbours=neighbours)
    return sparse_ease_from_gram(parts, lam)


#: Training ratings the lambda search reads at most: above this it carves a random sample of users (their whole
#: rows), so the search costs the same on ML-32M as on a 4M-rating catalogue (see :func:`search_sparse_ease_lambda`).
SEARCH_RATINGS = 4_000_000
#: Users whose held-out carve ratings score each lambda at most (scoring, not fitting, dominates a trial's time).
SEARCH_USERS = 5_000


def search_sparse_ease_lambda(train: RatingMatrix, *, input: str = "value", head_items: int = DEFAULT_HEAD_ITEMS,
                              neighbours: int = DEFAULT_NEIGHBOURS, val_fraction: float = 0.1, seed: int = 0,
                              relevant_from: float | None = None, search_ratings: int = SEARCH_RATINGS,
                              on_trial: Callable[[LambdaTrial], None] | None = None) -> dict[str, Any]:
    """Sparse EASE's lambda chosen on a validation carve of ``train`` (never the test part): the search record.

    Above ``search_ratings`` training ratings the search runs on a random sample of users holding about that many
    (seed ``seed``), and the winner is used for all users unchanged: a ridge penalty is a prior's strength, which
    does not grow with the number of users (on ml-1m's training part, users sampled to 300,000 ratings chose 256 as
    the whole part did; scaling lambda by the users' ratio would have chosen 790, where that carve's NDCG falls).
    The Gram matrix and neighbours are computed once; each lambda tried costs one head inversion and the tail's
    solves, never a new pass over the ratings.
    """
    from recae.evaluation.metrics import RowScores, ranking_metrics, relevance_threshold
    from recae.evaluation.splits import holdout_validation

    rating_max = train.rating_scale()[1]
    threshold = relevance_threshold(rating_max, relevant_from)
    sample = _user_sample(train, search_ratings, seed)
    fit, val = holdout_validation(sample, val_fraction, seed)
    val = _user_sample(val, SEARCH_USERS, seed, by_users=True)
    parts = sparse_ease_gram(fit.csr, input=input, rating_max=rating_max, head_items=head_items,
                             neighbours=neighbours)

    def score(candidate: float) -> float:
        started = time.perf_counter()
        ranker = sparse_ease_from_gram(parts, candidate)
        fitted = time.perf_counter()
        carve_scores = RowScores(lambda rows: ranker.score_rows(fit.csr[rows]))
        ndcg = ranking_metrics(carve_scores, fit, val, k=10, threshold=threshold).ndcg
        trial = LambdaTrial(candidate, -math.inf if math.isnan(ndcg) else ndcg)
        log.info("sparse EASE lambda %g: NDCG@10 %.4f on the carve (fit %.1f s, scored %.1f s)", candidate, trial.ndcg,
                 fitted - started, time.perf_counter() - fitted)
        if on_trial is not None:
            on_trial(trial)
        return trial.ndcg

    # the start follows the head's films (the Gram diagonal EASE inverts), not the long tail's rarely rated ones
    trials = choose_ease_lambda(score, start_lambda(fit.csr[:, parts.head], input, rating_max))
    best = best_trial(trials)
    log.info("sparse EASE lambda %g chosen on a validation carve of %d ratings (NDCG@10 %.4f)", best.lam,
             sample.nnz, best.ndcg)
    return {"input": input, "head_items": head_items, "neighbours": neighbours, "val_fraction": val_fraction,
            "seed": seed, "metric": "ndcg@10", "sample_ratings": sample.nnz,
            "trials": [{"lambda": t.lam, "ndcg@10": round(t.ndcg, 6)} for t in trials],
            "lambda": best.lam, "ndcg@10": round(best.ndcg, 6), "relevant_from": threshold}


def _user_sample(train: RatingMatrix, limit: int, seed: int, *, by_users: bool = False) -> RatingMatrix:
    """Every rating of a random set of users holding about ``limit`` ratings (or ``limit`` users, ``by_users``);
    ``train`` itself when it is within the limit."""
    counts = np.diff(train.csr.indptr)
    users = np.flatnonzero(counts > 0)
    if (users.size if by_users else train.nnz) <= limit or users.size < 2:
        return train
    order = np.random.default_rng(seed).permutation(users)
    n_kept = limit if by_users else max(1, int(np.searchsorted(np.cumsum(counts[order]), limit, side="right")))
    kept = np.zeros(train.shape[0], dtype=bool)
    kept[order[:n_kept]] = True
    return train.subset(np.repeat(kept, counts))


def train_sparse_ease(train: RatingMatrix, *, lam: float = 0.0, input: str = "value",
                      head_items: int = DEFAULT_HEAD_ITEMS, neighbours: int = DEFAULT_NEIGHBOURS,
                      val_fraction: float = 0.1, seed: int = 0, relevant_from: float | None = None,
                      on_trial: Callable[[LambdaTrial], None] | None = None) -> tuple[SparseEaseRanker, dict[str, Any]]:
    """Sparse EASE on every training rating, lambda chosen on a carve unless ``lam`` > 0; (ranker, search record)."""
    search: dict[str, Any] = {"input": input, "head_items": head_items, "neighbours": neighbours}
    if lam <= 0:
        search = search_sparse_ease_lambda(train, input=input, head_items=head_items, neighbours=neighbours,
                                           val_fraction=val_fraction, seed=seed, relevant_from=relevant_from,
                                           on_trial=on_trial)
        lam = search["lambda"]
    search["lambda"] = lam
    ranker = fit_sparse_ease(train.csr, lam, input=input, rating_max=train.rating_scale()[1], head_items=head_items,
                             neighbours=neighbours)
    return ranker, search
