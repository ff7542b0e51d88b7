"""The Soft-Impute SVD blended beside the autoencoders (``TrainConfig.blend_svd``): its factors, scores and fold-in.

``r_ui = clip(mu + b_u + b_i + p_u . q_i)`` with ``p_u``, ``q_i`` of width ``rank``. It is fitted by
:class:`recae.evaluation.baselines.TruncatedSVDBaseline` (Soft-Impute, ``Z = U diag(s) V^T``) and stored balanced,
``P = U diag(sqrt(s))``, ``Q = V diag(sqrt(s))``: Soft-Impute's fixed point minimises
``1/2 ||P_obs(E - P Q^T)||^2 + lambda/2 (||P||^2 + ||Q||^2)`` (Hastie et al. 2015), so with ``Q`` fixed a user's
row is a ridge regression with strength ``lambda`` (the shrinkage) on the item factors of the films they rated.
That is the fold-in: a new user's (or a known user's, with fresh ratings) bias and factor from their ratings,
closed form, ``rank + 1`` unknowns, prior zero, the bias with the biases' own ``reg_user``. Arrays are float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from recae.models.ridge import ridge_closed_form

if TYPE_CHECKING:
    from recae.evaluation.baselines import Biases, TruncatedSVDBaseline
    from recae.store.matrix import RatingMatrix


#: Pairs predicted at once: their gathered float64 factors take 320 MB at rank 20 (3.2M held-out ratings at
#: ML-32M shape took 1 GB at once).
PREDICT_CHUNK = 1 << 20


@dataclass(frozen=True, eq=False)
class SvdPart:
    """A fitted biased low-rank model over an IdIndex's users and movies (see the module docstring)."""

    mu: float
    user_bias: np.ndarray  # (n_users,)
    item_bias: np.ndarray  # (n_movies,)
    user_factors: np.ndarray  # (n_users, rank) = U diag(sqrt(s))
    item_factors: np.ndarray  # (n_movies, rank) = V diag(sqrt(s))
    scale: tuple[float, float]
    ridge: float  # Soft-Impute's lambda: the factor's ridge in fold-in
    bias_ridge: float  # the user bias's regulariser (reg_user of the biases)

    @classmethod
    def from_baseline(cls, svd: TruncatedSVDBaseline) -> SvdPart:
        """The fitted ``TruncatedSVDBaseline``'s parts, balanced (its user factors are ``U diag(s)``, items ``V``)."""
        from recae.evaluation.baselines import TruncatedSVDBaseline

        if not isinstance(svd, TruncatedSVDBaseline) or svd.biases is None:
            raise ValueError("SvdPart.from_baseline needs a fitted TruncatedSVDBaseline")
        s = np.linalg.norm(svd.user_factors, axis=0)  # (rank,): U has orthonormal columns
        root = np.sqrt(s)
        user = np.divide(svd.user_factors, root, out=np.zeros_like(svd.user_factors), where=root > 0)
        return cls(mu=float(svd.biases.mu), user_bias=svd.biases.user.astype(np.float64),
                   item_bias=svd.biases.item.astype(np.float64), user_factors=user,
                   item_factors=svd.item_factors * root, scale=(float(svd.scale[0]), float(svd.scale[1])),
                   ridge=float(svd.shrinkage), bias_ridge=float(svd.reg_user))

    @property
    def shape(self) -> tuple[int, int]:
        return self.user_bias.size, self.item_bias.size

    @property
    def biases(self) -> Biases:
        """Its biases (``fit_biases`` with ``reg_user = bias_ridge``): what the side part's residuals are against."""
        from recae.evaluation.baselines import Biases

        return Biases(mu=self.mu, user=self.user_bias, item=self.item_bias)

    def check(self) -> None:
        """ValueError unless the arrays agree with each other (a damaged or hand-edited model file)."""
        n_users, n_movies = self.shape
        rank = self.user_factors.shape[1] if self.user_factors.ndim == 2 else -1
        if (self.user_factors.shape != (n_users, rank) or self.item_factors.shape != (n_movies, rank)
                or not self.scale[0] < self.scale[1] or self.ridge < 0 or self.bias_ridge < 0):
            raise ValueError("stored SVD part is inconsistent")

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(n,) float32 clipped predictions at (user row, movie col) pairs."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        out = np.empty(rows.shape, dtype=np.float32)
        for start in range(0, rows.size, PREDICT_CHUNK):  # the gathered factors: rank x 16 bytes a pair
            r, c = rows[start : start + PREDICT_CHUNK], cols[start : start + PREDICT_CHUNK]
            low_rank = np.einsum("nk,nk->n", self.user_factors[r], self.item_factors[c])
            out[start : start + PREDICT_CHUNK] = np.clip(self.mu + self.user_bias[r] + self.item_bias[c] + low_rank,
                                                         *self.scale)
        return out

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), n_movies) float32 clipped predictions: O(rows x rank x n_movies)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = self.user_factors[rows] @ self.item_factors.T
        out += self.mu + self.user_bias[rows][:, None] + self.item_bias[None, :]
        return np.clip(out, *self.scale).astype(np.float32)

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """(n_movies,) float32 predictions for a user with ``values`` at movie ``cols``: bias and factor by
        ``min sum_j (r_j - mu - b_j - b - q_j . p)^2 + ridge ||p||^2 + bias_ridge b^2`` (prior zero: no ratings,
        the movie means ``mu + b_j``)."""
        cols = np.asarray(cols, dtype=np.int64)
        rank = self.item_factors.shape[1]
        p, b = np.zeros(rank), 0.0
        if cols.size:
            target = np.asarray(values, dtype=np.float64) - self.mu - self.item_bias[cols]
            p, b = ridge_closed_form(self.item_factors[cols], target, np.zeros(rank), 0.0, self.ridge,
                                     self.bias_ridge)
        out = self.mu + b + self.item_bias + self.item_factors @ p
        return np.clip(out, *self.scale).astype(np.float32)


def fit_svd_part(fit_part: RatingMatrix, seed: int = 0) -> SvdPart:
    """Soft-Impute SVD (its documented defaults) fitted on ``fit_part`` alone, as an SvdPart."""
    from recae.evaluation.baselines import TruncatedSVDBaseline

    return SvdPart.from_baseline(TruncatedSVDBaseline(seed=seed).fit(fit_part))
