"""Users whose ratings the model rebuilds worst: candidate bots, shilling profiles or data errors.

A trained autoencoder rebuilds the rating patterns that many users share. A profile of random ratings (a bot),
or one pushing a few films against everyone's taste (shilling), shares nothing and is rebuilt badly. For every
user with at least ``min_ratings`` training ratings:

    err_u = sqrt( (1 / |R_u|) * sum_{m in R_u} (rhat_um - r_um)^2 )      (RMSE on the user's own observed ratings)
    z_u   = (err_u - mean_v err_v) / std_v err_v                           (over the users scored)

``rhat`` is the model's clipped prediction with the user's ratings as input (the reconstruction). Users are
scored in chunks of whole users cut by a budget of ratings, so time and memory follow the number of ratings.
A high error is a reason to look, not proof: a user of rare tastes is rebuilt badly too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from recae.errors import RecaeError
from recae.models.batches import batch_plan

if TYPE_CHECKING:
    from recae.artifacts.trained_model import TrainedModel

#: Fewer ratings than this give too noisy an RMSE to rank a user (MovieLens keeps users with at least 20).
DEFAULT_MIN_RATINGS = 20
_CHUNK_RATINGS = 500_000  # ratings predicted at once


@dataclass(frozen=True)
class Anomaly:
    """One user, ranked by how badly the model rebuilds their ratings."""

    rank: int
    user_id: int
    n_ratings: int
    rmse: float  # reconstruction RMSE on the user's own training ratings
    z_score: float  # (rmse - mean) / std over the users scored
    mean_rating: float  # the user's mean rating, to tell an all-5s profile from a random one


@dataclass(frozen=True, eq=False)
class ReconstructionErrors:
    """Reconstruction RMSE of every user of the model's index (nan for users below ``min_ratings``)."""

    user_ids: np.ndarray  # (n_users,) int64
    n_ratings: np.ndarray  # (n_users,) int64
    rmse: np.ndarray  # (n_users,) float64; nan where not scored
    mean_rating: np.ndarray  # (n_users,) float64
    min_ratings: int

    @property
    def scored(self) -> np.ndarray:
        """(n_users,) bool: users with enough ratings to be scored."""
        return ~np.isnan(self.rmse)

    def z_scores(self) -> np.ndarray:
        """(n_users,) z-score of each scored user's RMSE against all scored users (nan elsewhere)."""
        values = self.rmse[self.scored]
        z = np.full(self.rmse.shape, np.nan)
        if values.size:
            spread = float(values.std())
            z[self.scored] = (values - float(values.mean())) / spread if spread > 0 else 0.0
        return z


def reconstruction_errors(trained: TrainedModel, min_ratings: int = DEFAULT_MIN_RATINGS,
                          chunk_ratings: int = _CHUNK_RATINGS) -> ReconstructionErrors:
    """Per-user reconstruction RMSE on their own training ratings (masked: only observed entries count)."""
    if min_ratings < 1:
        raise ValueError(f"min_ratings must be at least 1, got {min_ratings}")
    csr = trained.inputs.csr
    counts = np.diff(csr.indptr).astype(np.int64)
    squared = np.zeros(counts.size)
    sums = np.zeros(counts.size)
    eligible = np.flatnonzero(counts >= min_ratings)
    for group in batch_plan(counts, chunk_ratings, seed=0, epoch=0, shuffle=False, rows=eligible):
        group = np.sort(group)
        lengths = counts[group]
        before = np.cumsum(lengths) - lengths  # where each user's ratings start in this chunk
        positions = np.repeat(csr.indptr[group] - before, lengths) + np.arange(int(lengths.sum()))
        rows = np.repeat(group, lengths)
        cols = csr.indices[positions].astype(np.int64)
        values = csr.data[positions].astype(np.float64)
        error = trained.predict(rows, cols).astype(np.float64) - values
        squared[group] = np.bincount(np.repeat(np.arange(group.size), lengths), weights=error**2,
                                     minlength=group.size)
    if csr.nnz:
        sums = np.add.reduceat(csr.data.astype(np.float64), csr.indptr[:-1])
        sums[counts == 0] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        rmse = np.where(counts >= min_ratings, np.sqrt(squared / np.maximum(counts, 1)), np.nan)
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return ReconstructionErrors(user_ids=trained.index.user_ids, n_ratings=counts, rmse=rmse, mean_rating=mean,
                                min_ratings=min_ratings)


def find_anomalies(trained: TrainedModel, n: int = 20, min_ratings: int = DEFAULT_MIN_RATINGS) -> list[Anomaly]:
    """The ``n`` users rebuilt worst, worst first (ties by user id).

    Raises RecaeError when no user has ``min_ratings`` training ratings.
    """
    errors = reconstruction_errors(trained, min_ratings)
    scored = np.flatnonzero(errors.scored)
    if scored.size == 0:
        most = int(errors.n_ratings.max()) if errors.n_ratings.size else 0
        raise RecaeError(f"no user has {min_ratings} training ratings (the most is {most}); lower --min-ratings")
    z = errors.z_scores()
    order = scored[np.lexsort((errors.user_ids[scored], -errors.rmse[scored]))][:n]
    return [Anomaly(rank=i + 1, user_id=int(errors.user_ids[r]), n_ratings=int(errors.n_ratings[r]),
                    rmse=float(errors.rmse[r]), z_score=float(z[r]), mean_rating=float(errors.mean_rating[r]))
            for i, r in enumerate(order)]
