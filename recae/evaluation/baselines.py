"""Reference models every autoencoder must beat: global mean, user/item biases, truncated SVD of residuals.

Each is a small class: ``Model(...).fit(train)`` returns the fitted model, which implements
:class:`recae.evaluation.metrics.Scorer`. Fitting costs O(nnz) (biases) or O(nnz x rank) per iteration (SVD); nothing
ever builds a dense users x movies matrix except ``score_rows`` for the batch it is asked about.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recae.store.matrix import RatingMatrix
from recae.threads import in_order_on_threads

log = logging.getLogger(__name__)


class _NotFitted:
    def _require_fitted(self, attribute: str) -> None:
        if getattr(self, attribute, None) is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call .fit(train) first")


class GlobalMean(_NotFitted):
    """Predict the mean training rating mu for every user and film."""

    def __init__(self) -> None:
        self.mu: float | None = None
        self.n_movies = 0

    def fit(self, train: RatingMatrix) -> GlobalMean:
        train.rating_scale()  # raises EmptyStoreError on an empty matrix
        self.mu = float(np.mean(train.csr.data, dtype=np.float64))
        self.n_movies = train.shape[1]
        return self

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        self._require_fitted("mu")
        return np.full(np.asarray(rows).shape, self.mu, dtype=np.float64)  # (n,)

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        self._require_fitted("mu")
        return np.full((np.asarray(rows).size, self.n_movies), self.mu, dtype=np.float64)  # (batch, n_movies)


@dataclass(frozen=True)
class Biases:
    """Fitted baseline r_ui ~ mu + b_u + b_i (users/films without training ratings have bias 0)."""

    mu: float
    user: np.ndarray  # (n_users,) float64
    item: np.ndarray  # (n_movies,) float64

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.mu + self.user[rows] + self.item[cols]  # (n,)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return self.mu + self.user[rows][:, None] + self.item[None, :]  # (batch, n_movies)


def fit_biases(train: RatingMatrix, reg_user: float = 5.0, reg_item: float = 5.0, sweeps: int = 10) -> Biases:
    """Regularised user and item biases by alternating closed-form least squares (Koren 2010, sec. 2.1).

    Minimises sum_(u,i) (r_ui - mu - b_u - b_i)^2 + reg_user * sum_u b_u^2 + reg_item * sum_i b_i^2 by
    alternating the exact minimisers
        b_i = sum_{u in R(i)} (r_ui - mu - b_u) / (reg_item + |R(i)|)
        b_u = sum_{i in R(u)} (r_ui - mu - b_i) / (reg_user + |R(u)|)
    The regularisers damp the biases of users and films with few ratings towards 0. Each sweep is O(nnz).
    """
    if reg_user < 0 or reg_item < 0:
        raise ValueError(f"regularisers must be >= 0, got reg_user={reg_user}, reg_item={reg_item}")
    train.rating_scale()  # raises EmptyStoreError on an empty matrix
    rows, cols, values = train.coo()
    values = values.astype(np.float64)
    n_users, n_movies = train.shape
    mu = float(values.mean())
    count_user = np.bincount(rows, minlength=n_users)
    count_item = np.bincount(cols, minlength=n_movies)
    b_user = np.zeros(n_users)
    b_item = np.zeros(n_movies)
    centred = values - mu  # (nnz,)
    # A film or user with no ratings (0/0 when unregularised) keeps bias 0.
    item_denominator = np.maximum(reg_item + count_item, np.finfo(np.float64).tiny)
    user_denominator = np.maximum(reg_user + count_user, np.finfo(np.float64).tiny)
    for _ in range(sweeps):
        b_item = np.bincount(cols, centred - b_user[rows], minlength=n_movies) / item_denominator
        b_user = np.bincount(rows, centred - b_item[cols], minlength=n_users) / user_denominator
    return Biases(mu=mu, user=b_user, item=b_item)


class BiasBaseline(_NotFitted):
    """r_ui = mu + b_u + b_i with L2-regularised biases (see :func:`fit_biases`), clipped to the scale."""

    def __init__(self, reg_user: float = 5.0, reg_item: float = 5.0, sweeps: int = 10) -> None:
        self.reg_user, self.reg_item, self.sweeps = reg_user, reg_item, sweeps
        self.biases: Biases | None = None
        self.scale = (1.0, 5.0)

    def fit(self, train: RatingMatrix) -> BiasBaseline:
        self.scale = train.rating_scale()
        self.biases = fit_biases(train, self.reg_user, self.reg_item, self.sweeps)
        return self

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        self._require_fitted("biases")
        return np.clip(self.biases.at(rows, cols), *self.scale)  # (n,)

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        self._require_fitted("biases")
        return np.clip(self.biases.rows(np.asarray(rows)), *self.scale)  # (batch, n_movies)


class TruncatedSVDBaseline(_NotFitted):
    """r_ui = mu + b_u + b_i + (U diag(s) V^T)_ui: a rank-``rank`` fit of the bias residuals by Soft-Impute.

    Soft-Impute (Mazumder, Hastie & Tibshirani 2010) completes the residual matrix E (observed entries only)
    by repeating
        Z <- S_lambda( P_obs(E) + P_missing(Z) ),   S_lambda = truncated SVD with singular values max(s - lambda, 0)
    starting from Z = 0 (the first step is the plain truncated SVD of the zero-filled residuals). The matrix
    in brackets is never formed: it is sparse P_obs(E - Z) plus low-rank Z, so a product with a block of
    ``rank + 10`` vectors costs O((nnz + n_users + n_movies) x rank) and so does each iteration; the SVD is a
    warm-started randomised subspace iteration. Memory is O(nnz + (n_users + n_movies) x rank).

    ``shrinkage`` is lambda: singular values below it are treated as noise. The default 15 was tuned on a
    validation split of ml-100k u1.base and checked on ml-1m; it matches the largest singular value expected
    from noise, about residual_std x (sqrt(nnz / n_movies) + sqrt(nnz / n_users)) ~ 14 on ml-100k. Data with
    much less noise (planted tests) wants a smaller value.
    """

    def __init__(
        self,
        rank: int = 20,
        shrinkage: float = 15.0,
        iterations: int = 50,
        power_iterations: int = 1,
        tolerance: float = 1e-4,
        reg_user: float = 5.0,
        reg_item: float = 5.0,
        seed: int = 0,
    ) -> None:
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        self.rank, self.shrinkage, self.iterations, self.seed = rank, shrinkage, iterations, seed
        self.power_iterations, self.tolerance = power_iterations, tolerance
        self.reg_user, self.reg_item = reg_user, reg_item
        self.biases: Biases | None = None
        self.user_factors = np.zeros((0, 0))  # (n_users, rank) = U diag(s)
        self.item_factors = np.zeros((0, 0))  # (n_movies, rank) = V
        self.scale = (1.0, 5.0)

    def fit(self, train: RatingMatrix) -> TruncatedSVDBaseline:
        self.scale = train.rating_scale()
        biases = fit_biases(train, self.reg_user, self.reg_item)
        # int32 positions (the CSR's own column array, no copy): int64 ones took 460 MB more at ML-32M shape
        rows = np.repeat(np.arange(train.shape[0], dtype=np.int32), np.diff(train.csr.indptr))
        cols, values = train.csr.indices, train.csr.data
        residual = values.astype(np.float64) - biases.at(rows, cols)  # (nnz,)
        n_users, n_movies = train.shape
        rank = min(self.rank, n_users, n_movies)
        rng = np.random.default_rng(self.seed)
        u = np.zeros((n_users, 0))  # (n_users, r)
        s = np.zeros(0)  # (r,)
        v = np.zeros((n_movies, 0))  # (n_movies, r)
        for step in range(self.iterations):
            left = u * s  # (n_users, r)
            low_rank_at_obs = _low_rank_at(left, v, rows, cols)  # (nnz,)
            # Same sparsity pattern as train.csr (coo() is in CSR order), so reuse its indptr and indices.
            sparse_part = sp.csr_matrix(
                (residual - low_rank_at_obs, train.csr.indices, train.csr.indptr), shape=(n_users, n_movies)
            )
            operator = _SparsePlusLowRank(sparse_part, left, v)
            u_new, s_new, v_new = _top_singular(operator, rank, v, rng, self.power_iterations)
            s_new = np.maximum(s_new - self.shrinkage, 0.0)
            keep = s_new > 0
            change = _relative_change(u, s, v, u_new[:, keep], s_new[keep], v_new[:, keep])
            u, s, v = u_new[:, keep], s_new[keep], v_new[:, keep]
            log.debug("soft-impute step %d: rank %d, relative change %.2e", step + 1, s.size, change)
            if change < self.tolerance or s.size == 0:  # converged, or nothing above the noise: biases only
                break
        self.biases = biases
        self.user_factors = u * s
        self.item_factors = v
        return self

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        self._require_fitted("biases")
        rows, cols = np.asarray(rows), np.asarray(cols)
        low_rank = _low_rank_at(self.user_factors, self.item_factors, rows, cols)  # (n,)
        return np.clip(self.biases.at(rows, cols) + low_rank, *self.scale)  # (n,)

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        self._require_fitted("biases")
        rows = np.asarray(rows)
        low_rank = self.user_factors[rows] @ self.item_factors.T  # (batch, n_movies)
        return np.clip(self.biases.rows(rows) + low_rank, *self.scale)


#: Row blocks Soft-Impute's sparse products are cut into, to run side by side (scipy's kernels are single-threaded
#: and release the GIL): a fixed count, so the sums of partial products do not depend on the number of threads.
PRODUCT_BLOCKS = 4


def _low_rank_at(left: np.ndarray, right: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                 chunk: int = 65_536) -> np.ndarray:
    """(left @ right.T)[rows, cols] without forming the product; chunked so the gathers stay in cache, the chunks
    on threads (each writes its own slice)."""
    out = np.empty(rows.shape, dtype=np.float64)  # (n,)

    def fill(start: int) -> None:
        stop = start + chunk
        out[start:stop] = np.einsum("nk,nk->n", np.take(left, rows[start:stop], axis=0),
                                    np.take(right, cols[start:stop], axis=0))

    for _ in in_order_on_threads(fill, range(0, rows.size, chunk)):
        pass
    return out


def _row_blocks(matrix: sp.csr_matrix, count: int = PRODUCT_BLOCKS) -> list[tuple[int, sp.csr_matrix]]:
    """(first row, block) pairs cutting ``matrix`` into ``count`` runs of rows with about equal non-zeros; the
    blocks share its data and indices."""
    bounds = np.searchsorted(matrix.indptr, np.linspace(0, matrix.nnz, count + 1)[1:-1]).tolist()
    edges = [0, *bounds, matrix.shape[0]]
    blocks = []
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        lo, hi = matrix.indptr[start], matrix.indptr[stop]
        block = sp.csr_matrix((matrix.data[lo:hi], matrix.indices[lo:hi], matrix.indptr[start : stop + 1] - lo),
                              shape=(stop - start, matrix.shape[1]))
        blocks.append((start, block))
    return blocks


@dataclass(frozen=True)
class _SparsePlusLowRank:
    """X = sparse + left @ right.T, applied without forming it; shapes (m, n), (m, r), (n, r)."""

    sparse: sp.csr_matrix
    left: np.ndarray
    right: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", _row_blocks(self.sparse))

    def times(self, x: np.ndarray) -> np.ndarray:
        """X @ x for x (n, l); cost O(nnz x l + (m + n) x r x l)."""
        out = self.left @ (self.right.T @ x)  # (m, l)

        def add(part: tuple[int, sp.csr_matrix]) -> None:
            start, block = part
            out[start : start + block.shape[0]] += block @ x

        for _ in in_order_on_threads(add, self.blocks):  # type: ignore[attr-defined]
            pass
        return out

    def transpose_times(self, y: np.ndarray) -> np.ndarray:
        """X.T @ y for y (m, l): the blocks' partial products summed in block order."""
        out = self.right @ (self.left.T @ y)  # (n, l)
        parts = in_order_on_threads(lambda part: np.asarray(part[1].T @ y[part[0] : part[0] + part[1].shape[0]]),
                                    self.blocks)  # type: ignore[attr-defined]
        for partial in parts:
            out += partial
        return out


def _top_singular(
    operator: _SparsePlusLowRank, rank: int, warm: np.ndarray, rng: np.random.Generator, power_iterations: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leading ``rank`` singular triplets (U (m, rank), s (rank,), V (n, rank)) by randomised subspace iteration.

    Halko, Martinsson & Tropp (2011), Alg. 4.4, started from the previous iteration's right singular vectors
    ``warm`` (plus random columns), so the few power iterations per Soft-Impute step keep converging across steps.
    """
    n = operator.right.shape[0]
    width = min(rank + 10, n)
    start = np.hstack([warm, rng.standard_normal((n, width - warm.shape[1]))])  # (n, width)
    q, _ = np.linalg.qr(operator.times(start))  # (m, width)
    for _ in range(power_iterations):
        w, _ = np.linalg.qr(operator.transpose_times(q))  # (n, width)
        q, _ = np.linalg.qr(operator.times(w))  # (m, width)
    bt = operator.transpose_times(q)  # (n, width) = (Q^T X)^T
    v_full, s_full, ut_small = np.linalg.svd(bt, full_matrices=False)
    keep = min(rank, s_full.size)
    return q @ ut_small.T[:, :keep], s_full[:keep], v_full[:, :keep]


def _relative_change(u0: np.ndarray, s0: np.ndarray, v0: np.ndarray, u1: np.ndarray, s1: np.ndarray,
                     v1: np.ndarray) -> float:
    """||Z0 - Z1||_F^2 / ||Z0||_F^2 for Z = U diag(s) V^T, computed in the rank space (Mazumder et al. 2010)."""
    norm0 = float(np.sum(s0**2))
    if norm0 == 0.0:
        return np.inf
    norm1 = float(np.sum(s1**2))
    cross = float(np.sum((u0.T @ u1) * np.outer(s0, s1) * (v0.T @ v1)))
    return max(norm0 + norm1 - 2.0 * cross, 0.0) / norm0
