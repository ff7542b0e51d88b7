"""Rankers: autoencoders trained for the top of the list, not for the rating (EASE, Steck WWW 2019).

A rating autoencoder minimises the error of ratings users gave; a list of ten films must instead put first the
films a user will watch *and* like. That needs the "which films were rated" signal, which RMSE never sees
(Cremonesi, Koren & Turrin, RecSys 2010; Steck, KDD 2013). EASE is the one-layer linear autoencoder with the
closed form of that objective::

    X (n_users, n_items)   the training ratings, each entry weighted: x_ui = r_ui / r_max (``input = "value"``)
                           or 1 (``"binary"``); unrated entries are 0
    G = X^T X + lambda I   (n_items, n_items), dense
    P = G^-1,  B = I - P / diag(P)      so  B = argmin ||X - X B||^2 + lambda ||B||^2  s.t. diag(B) = 0
    score(u) = x_u B       (n_items,): a film scores by how strongly the user's films predict it

Cost: X^T X is a sparse product, O(sum over users of n_rated^2); the inverse is O(n_items^3) once, done in place
by LAPACK (Cholesky ``potrf`` then ``potri``), so memory is one n_items^2 float32 matrix (ml-1m: 55 MB). A user's
scores cost O(n_rated x n_items). At ML-25M shape (59k films) a full B is 14 GB, so EASE covers the
``max_items`` most-rated films (default 20,000: 1.6 GB); the rest of the catalogue (films with a handful of
ratings) scores one below the user's lowest covered score, so it ranks after every covered film.

Choosing lambda: :func:`choose_ease_lambda` fits EASE on a carve of the training ratings and keeps the lambda with
the best NDCG@10 on the carve's held-out ratings (relevant = rated >= ``relevant_from``: 0.8 x the top rating, 4
on 1-5, unless set; ``recae.evaluation.metrics.relevance_threshold``), walking a doubling grid from a start
that scales with the data. The test ratings are never read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import scipy.sparse as sp

from recae.errors import TrainingError
from recae.threads import in_order_on_threads

try:  # scipy's C++ kernel behind csr.toarray(); 25x faster than a numpy scatter when adding blocks into G
    from scipy.sparse._sparsetools import csr_todense as _csr_todense
except ImportError:  # pragma: no cover - a scipy that moved it: fall back to the public scatter
    _csr_todense = None

if TYPE_CHECKING:
    from recae.store.matrix import RatingMatrix

log = logging.getLogger(__name__)

RankerInput = Literal["value", "binary"]
RANKER_INPUTS: tuple[str, ...] = ("value", "binary")
#: Films covered by EASE at most: one float32 matrix of this side is 1.6 GB (see the module docstring).
DEFAULT_MAX_ITEMS = 20_000


class Ranker(Protocol):
    """What serving needs of a fitted ranker (dense :class:`EaseRanker`, ``sparse_ease.SparseEaseRanker``)."""

    n_movies: int
    lam: float

    @property
    def items(self) -> np.ndarray: ...  # (n_items,) int64 columns it scores from the data, ascending

    def score_rows(self, ratings: sp.csr_matrix) -> np.ndarray: ...  # (batch, n_movies) float32, higher first

    def describe(self) -> dict[str, object]: ...  # what meta.json records: kind, lambda, items, n_movies, ...


@dataclass(frozen=True, eq=False)
class EaseRanker:
    """A fitted EASE: ``weights`` B over ``items`` (the covered columns of the shared IdIndex)."""

    items: np.ndarray  # (n_sel,) int64 columns covered, ascending
    weights: np.ndarray  # (n_sel, n_sel) float32, zero diagonal
    n_movies: int  # columns of the IdIndex the scores are laid out on
    lam: float
    input: str = "value"
    rating_max: float = 5.0

    def encode(self, csr: sp.csr_matrix) -> sp.csr_matrix:
        """(batch, n_sel) weighted input: ratings of covered films as ``input`` says (no copy of uncovered ones)."""
        return ranker_input(csr, self.input, self.rating_max)[:, self.items]

    def score_rows(self, ratings: sp.csr_matrix) -> np.ndarray:
        """(batch, n_movies) float32 ranker scores of users with these rating rows (higher first).

        Films outside ``items`` score one below the user's lowest covered score: after every covered film.
        """
        x = self.encode(sp.csr_matrix(ratings))  # (batch, n_sel)
        covered = np.asarray(x @ self.weights, dtype=np.float32)  # (batch, n_sel)
        if self.items.size == self.n_movies:
            return covered
        floor = covered.min(axis=1, keepdims=True) - 1.0 if covered.size else np.zeros((ratings.shape[0], 1))
        out = np.repeat(floor.astype(np.float32), self.n_movies, axis=1)  # (batch, n_movies)
        out[:, self.items] = covered
        return out

    def describe(self) -> dict[str, object]:
        """The settings meta.json records beside the tensors."""
        return {"kind": "ease", "lambda": self.lam, "input": self.input, "rating_max": self.rating_max,
                "items": int(self.items.size), "n_movies": self.n_movies}


def ranker_input(csr: sp.csr_matrix, mode: str, rating_max: float) -> sp.csr_matrix:
    """The ratings as EASE reads them: r / r_max (``value``) or 1 (``binary``) at every rated entry, float32."""
    if mode not in RANKER_INPUTS:
        raise TrainingError(f"unknown ranker input {mode!r}; choose one of {', '.join(RANKER_INPUTS)}")
    out = sp.csr_matrix(csr, dtype=np.float32, copy=True)
    out.data = out.data / np.float32(rating_max) if mode == "value" else np.ones_like(out.data)
    return out


def covered_items(csr: sp.csr_matrix, max_items: int) -> np.ndarray:
    """Columns EASE covers: every rated film, or the ``max_items`` most-rated ones (ties: lower column)."""
    counts = np.bincount(csr.indices, minlength=csr.shape[1])
    rated = np.flatnonzero(counts > 0)
    if rated.size <= max_items:
        return rated.astype(np.int64)
    order = np.argsort(-counts[rated], kind="stable")[:max_items]
    return np.sort(rated[order]).astype(np.int64)


#: Largest Gram matrix kept across the lambda trials (a trial inverts a copy): 512 MB is 11,585 films; above it
#: each trial recomputes the Gram, so the search never holds two films x films matrices at ML-25M shape.
GRAM_CACHE_BYTES = 512 * 2**20
#: Products summed per block of users in :func:`gram_matrix`: bounds the sparse intermediate (~12 bytes each).
GRAM_BLOCK_PRODUCTS = 1 << 25


def gram_matrix(x: sp.csr_matrix, block_products: int = GRAM_BLOCK_PRODUCTS) -> np.ndarray:
    """X^T X as a dense (n, n) float32 Fortran-ordered matrix, summed over blocks of users.

    Cost O(sum over users of n_rated^2). One ``x.T @ x`` would build a sparse result with up to n^2 entries
    (ML-25M's 20,000 films: 400 M, about 5 GB); blocks of users whose products stay under ``block_products`` keep
    the intermediate near 400 MB and scatter it into the one dense matrix.
    """
    x = sp.csr_matrix(x, dtype=np.float32)
    n = x.shape[1]
    gram = np.zeros((n, n), dtype=np.float32, order="F")
    products = np.diff(x.indptr).astype(np.int64) ** 2  # (n_users,)
    bounds = []
    start = 0
    while start < x.shape[0]:
        stop = start + max(1, int(np.searchsorted(np.cumsum(products[start:]), block_products, side="right")))
        bounds.append((start, stop))
        start = stop

    def product(bound: tuple[int, int]) -> sp.spmatrix:
        block = x[bound[0]:bound[1]]
        return block.T @ block

    for part in in_order_on_threads(product, bounds):  # summed in block order: the same G on any thread count
        add_into(gram, part)
    return gram


def add_into(dense: np.ndarray, symmetric: sp.spmatrix) -> None:
    """``dense += symmetric`` in place, without a dense temporary (``dense`` is Fortran-ordered, so its transpose
    is a C-ordered view and, the product being symmetric, receives the same sums)."""
    part = sp.csr_matrix(symmetric)
    if _csr_todense is not None:  # scipy's kernel adds into its output (the public toarray() zeroes it first)
        _csr_todense(part.shape[0], part.shape[1], part.indptr, part.indices, part.data, dense.T)
    else:  # 25x slower: numpy's scatter of every entry
        coo = part.tocoo()
        dense[coo.row, coo.col] += coo.data


def ease_weights(x: sp.csr_matrix, lam: float) -> np.ndarray:
    """B = I - P / diag(P) with P = (X^T X + lam I)^-1, zero diagonal; (n, n) float32 (see :func:`ease_from_gram`)."""
    return ease_from_gram(gram_matrix(x), lam)


def ease_from_gram(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE's B from the Gram matrix X^T X (Fortran-ordered float32, overwritten: B is returned in its memory).

    Inverted in place in float32 (LAPACK ``spotrf`` + ``spotri``), so a film side of 20,000 needs one 1.6 GB
    matrix rather than the 9.6 GB of a float64 ``inv`` with its copies. B comes back C-ordered without a copy:
    P is symmetric, so the transposed view of its Fortran buffer is P itself.
    """
    from scipy.linalg import lapack  # here, not at import: scoring with a fitted ranker (serving) needs none of it

    if lam <= 0:
        raise TrainingError(f"the EASE lambda must be positive, got {lam}")
    gram[np.diag_indices_from(gram)] += np.float32(lam)
    factor, info = lapack.spotrf(gram, lower=1, overwrite_a=1, clean=0)
    if info != 0:
        raise TrainingError(f"EASE: the Gram matrix is not positive definite (LAPACK info {info}); raise lambda")
    inverse, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise TrainingError(f"EASE: inverting the Gram matrix failed (LAPACK info {info})")
    _mirror_lower(inverse)  # potri fills the lower triangle only
    weights = inverse.T  # C-ordered view of the symmetric P
    diagonal = weights.diagonal().copy()
    weights /= -diagonal[None, :]  # B = -P / diag(P), column-wise, in place
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def _mirror_lower(square: np.ndarray, block: int = 1024) -> None:
    """Copy the lower triangle onto the upper one in place, a band of ``block`` rows at a time.

    Index arrays for the whole triangle would take 16 bytes per entry (3.2 GB at 20,000 films); a band needs
    ``block x n`` floats.
    """
    n = square.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        square[start:stop, stop:] = square[stop:, start:stop].T  # right of the diagonal band, from below it
        band = square[start:stop, start:stop]
        upper = np.triu_indices(stop - start, k=1)
        band[upper] = band.T[upper]


@dataclass(frozen=True)
class TimeNeighbours:
    """Films rated within ``window`` places of each other in a user's time order, weighed ``weight`` in the Gram
    matrix (``recae.models.time_pairs``); ``timestamps`` aligned with the ratings' CSR data, 0 unknown."""

    timestamps: np.ndarray
    window: int
    weight: float


def ranker_gram(train: sp.csr_matrix, items: np.ndarray, input: str, rating_max: float,
                near: TimeNeighbours | None = None) -> np.ndarray:
    """The covered ``items``' Gram matrix as EASE reads the ratings, with the time-neighbour term when ``near``."""
    x = ranker_input(train, input, rating_max)
    gram = gram_matrix(x[:, items])
    if near is not None:
        from recae.models.time_pairs import add_time_neighbours

        add_time_neighbours(gram, x, near.timestamps, items, near.window, near.weight)
    return gram


def fit_ease(train: sp.csr_matrix, lam: float, *, input: str = "value", rating_max: float = 5.0,
             max_items: int = DEFAULT_MAX_ITEMS, gram: np.ndarray | None = None,
             near: TimeNeighbours | None = None) -> EaseRanker:
    """EASE on the training ratings ``train`` (n_users, n_movies), with the time-neighbour term when ``near``.

    ``gram`` is the covered films' Gram matrix when the caller already has it (trying several lambdas on one
    carve): it is copied, not consumed.
    """
    items = covered_items(train, max_items)
    if items.size == 0:
        raise TrainingError("EASE needs at least one rated film")
    if gram is None:
        gram = ranker_gram(train, items, input, rating_max, near)
    else:
        gram = np.array(gram, order="F", copy=True)
    return EaseRanker(items=items, weights=ease_from_gram(gram, lam), n_movies=train.shape[1], lam=float(lam),
                      input=input, rating_max=float(rating_max))


@dataclass(frozen=True)
class LambdaTrial:
    """One lambda tried on the validation carve."""

    lam: float
    ndcg: float  # NDCG@10 on the carve's held-out ratings


def start_lambda(train: sp.csr_matrix, input: str, rating_max: float) -> float:
    """A first lambda: four times a film's mean squared input norm (the Gram diagonal's scale), a power of two.

    Lambda must grow with how much each film is rated; this start follows the data, so a short walk finds the
    optimum on a 3,000 x 3,000 catalogue as on ml-1m (on the u1.base and ml-1m training carves the start, 128 and
    512, was the optimum itself: three fits each).
    """
    x = ranker_input(train, input, rating_max)
    per_film = np.bincount(x.indices, weights=x.data.astype(np.float64) ** 2, minlength=x.shape[1])
    rated = per_film[per_film > 0]
    return float(max(1.0, 2 ** round(math.log2(max(4 * float(np.mean(rated)), 1.0))))) if rated.size else 1.0


def choose_ease_lambda(score: Callable[[float], float], start: float, max_trials: int = 8) -> list[LambdaTrial]:
    """Walk a doubling grid from ``start`` towards higher validation ``score(lam)``; every trial, in order.

    Steps up (x2) while that improves; when the first step up does not, steps down (/2) likewise. The NDCG curve
    over log-lambda is single-peaked in practice (Steck 2019, fig. 1), so this finds the grid's best in a few fits.
    """
    trials = [LambdaTrial(start, score(start))]
    for factor in (2.0, 0.5):
        lam = start * factor
        while len(trials) < max_trials:
            trials.append(LambdaTrial(lam, score(lam)))
            if trials[-1].ndcg <= max(t.ndcg for t in trials[:-1]):
                break
            lam *= factor
        if best_trial(trials).lam != start:
            break
    return trials


def best_trial(trials: list[LambdaTrial]) -> LambdaTrial:
    """The trial with the highest validation NDCG (the earliest on a tie)."""
    return max(trials, key=lambda t: t.ndcg)


def train_ease(train: RatingMatrix, *, lam: float = 0.0, input: str = "value", max_items: int = DEFAULT_MAX_ITEMS,
               val_fraction: float = 0.1, seed: int = 0, on_trial: Callable[[LambdaTrial], None] | None = None,
               relevant_from: float | None = None, time_window: int = 0,
               time_weight: float = 0.0) -> tuple[EaseRanker, dict[str, Any]]:
    """EASE on every training rating, with lambda chosen on a validation carve of them unless ``lam`` > 0, and
    with ``time_window`` and ``time_weight`` > 0 the time-neighbour term (:class:`TimeNeighbours`).

    See :func:`search_ease_lambda` for the choice. Returns the ranker refitted on all of ``train`` and the search
    record for meta.json.
    """
    search: dict[str, Any] = {"input": input, "max_items": max_items}
    if lam <= 0:
        search = search_ease_lambda(train, input=input, max_items=max_items, val_fraction=val_fraction, seed=seed,
                                    on_trial=on_trial, relevant_from=relevant_from, time_window=time_window,
                                    time_weight=time_weight)
        lam = search["lambda"]
    search["lambda"] = lam
    near = _time_neighbours(train, time_window, time_weight)
    if near is not None:
        search.update(time_window=time_window, time_weight=time_weight)
    return fit_ease(train.csr, lam, input=input, rating_max=train.rating_scale()[1], max_items=max_items,
                    near=near), search


def _time_neighbours(train: RatingMatrix, window: int, weight: float) -> TimeNeighbours | None:
    """The time-neighbour term of ``train``, or None when it is off or no rating has a known time."""
    if window <= 0 or weight <= 0 or not np.any(train.timestamps > 0):
        return None
    return TimeNeighbours(train.timestamps, int(window), float(weight))


def search_ease_lambda(train: RatingMatrix, *, input: str = "value", max_items: int = DEFAULT_MAX_ITEMS,
                       val_fraction: float = 0.1, seed: int = 0, on_trial: Callable[[LambdaTrial], None] | None = None,
                       relevant_from: float | None = None, time_window: int = 0,
                       time_weight: float = 0.0) -> dict[str, Any]:
    """EASE's lambda chosen on a validation carve of ``train``: the search record, ``lambda`` the winner.

    The carve (``val_fraction`` of ``train``, seed ``seed``) is split off, EASE is fitted on the rest for each
    lambda tried, and NDCG@10 on the carve decides (held-out ratings >= ``relevant_from`` relevant, by default 0.8 x
    ``train``'s top rating, as ``recae evaluate`` counts; the record keeps the threshold used).
    ``ndcg@10`` is the winner's figure, so searches with other inputs compare on the same carve.
    """
    from recae.evaluation.metrics import RowScores, ranking_metrics, relevance_threshold
    from recae.evaluation.splits import holdout_validation

    rating_max = train.rating_scale()[1]
    threshold = relevance_threshold(rating_max, relevant_from)
    fit, val = holdout_validation(train, val_fraction, seed)
    # one Gram matrix for every lambda tried (only the inverse changes), when a second copy of it is cheap
    fit_items = covered_items(fit.csr, max_items)
    near = _time_neighbours(fit, time_window, time_weight)
    fit_gram = None
    if 4 * fit_items.size**2 <= GRAM_CACHE_BYTES:
        fit_gram = ranker_gram(fit.csr, fit_items, input, rating_max, near)

    def score(candidate: float) -> float:
        ranker = fit_ease(fit.csr, candidate, input=input, rating_max=rating_max, max_items=max_items,
                          gram=fit_gram, near=near)
        carve_scores = RowScores(lambda rows: ranker.score_rows(fit.csr[rows]))
        ndcg = ranking_metrics(carve_scores, fit, val, k=10, threshold=threshold).ndcg
        trial = LambdaTrial(candidate, -math.inf if math.isnan(ndcg) else ndcg)
        if on_trial is not None:
            on_trial(trial)
        return trial.ndcg

    trials = choose_ease_lambda(score, start_lambda(fit.csr, input, rating_max))
    del fit_gram
    best = best_trial(trials)
    log.info("EASE lambda %g chosen on validation (NDCG@10 %.4f, %s input)", best.lam, best.ndcg, input)
    return {"input": input, "max_items": max_items, "val_fraction": val_fraction, "seed": seed, "metric": "ndcg@10",
            "trials": [{"lambda": t.lam, "ndcg@10": round(t.ndcg, 6)} for t in trials], "lambda": best.lam,
            "ndcg@10": round(best.ndcg, 6), "relevant_from": threshold}
