"""The user x movie rating matrix (scipy CSR) and the index between external ids and positions.

``*_id`` is an external MovieLens id; ``row``/``col`` a position. No torch here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recae.errors import EmptyStoreError, UnknownMovieError, UnknownUserError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def _describe_ids(ids: np.ndarray) -> str:
    if ids.size == 0:
        return "none"
    if ids.size == int(ids[-1] - ids[0] + 1):
        return f"{ids[0]}..{ids[-1]}"
    return f"{ids.size} ids between {ids[0]} and {ids[-1]}"


@dataclass(frozen=True, eq=False)
class IdIndex:
    """Sorted external ids; position in the array is the row (users) or column (movies)."""

    user_ids: np.ndarray  # (n_users,) int64, strictly increasing
    movie_ids: np.ndarray  # (n_movies,) int64, strictly increasing

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def n_movies(self) -> int:
        return int(self.movie_ids.size)

    def has_user(self, user_id: int) -> bool:
        i = int(np.searchsorted(self.user_ids, user_id))
        return i < self.user_ids.size and int(self.user_ids[i]) == int(user_id)

    def has_movie(self, movie_id: int) -> bool:
        i = int(np.searchsorted(self.movie_ids, movie_id))
        return i < self.movie_ids.size and int(self.movie_ids[i]) == int(movie_id)

    def user_row(self, user_id: int) -> int:
        """Row of ``user_id``; raises UnknownUserError naming the known range."""
        if not self.has_user(user_id):
            raise UnknownUserError(f"user {user_id} is unknown; known users are {_describe_ids(self.user_ids)}")
        return int(np.searchsorted(self.user_ids, user_id))

    def movie_col(self, movie_id: int) -> int:
        """Column of ``movie_id``; raises UnknownMovieError naming the known range."""
        if not self.has_movie(movie_id):
            raise UnknownMovieError(
                f"movie {movie_id} is unknown; known movies are {_describe_ids(self.movie_ids)}"
            )
        return int(np.searchsorted(self.movie_ids, movie_id))

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Vectorised rows for ids that must all be known."""
        rows = np.searchsorted(self.user_ids, user_ids)
        bad = (rows >= self.n_users) | (self.user_ids[np.minimum(rows, self.n_users - 1)] != user_ids)
        if bad.any():
            self.user_row(int(np.asarray(user_ids)[bad][0]))
        return rows

    def movie_cols(self, movie_ids: np.ndarray) -> np.ndarray:
        """Vectorised columns for ids that must all be known."""
        cols = np.searchsorted(self.movie_ids, movie_ids)
        bad = (cols >= self.n_movies) | (self.movie_ids[np.minimum(cols, self.n_movies - 1)] != movie_ids)
        if bad.any():
            self.movie_col(int(np.asarray(movie_ids)[bad][0]))
        return cols

    def to_json(self) -> dict[str, Any]:
        return {"user_ids": self.user_ids.tolist(), "movie_ids": self.movie_ids.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IdIndex:
        return cls(np.asarray(data["user_ids"], dtype=np.int64), np.asarray(data["movie_ids"], dtype=np.int64))


@dataclass(frozen=True, eq=False)
class RatingMatrix:
    """Immutable ratings as CSR (rows users, columns movies) plus timestamps aligned with ``csr.data``.

    ``timestamps`` holds Unix seconds with 0 meaning unknown. Several matrices (train/test) share one index.
    """

    csr: sp.csr_matrix  # (n_users, n_movies) float32, sorted indices, no duplicates, no explicit zeros
    timestamps: np.ndarray  # (nnz,) int64 aligned with csr.data; 0 = unknown
    index: IdIndex

    @property
    def nnz(self) -> int:
        return int(self.csr.nnz)

    @property
    def shape(self) -> tuple[int, int]:
        return self.csr.shape  # type: ignore[return-value]

    def coo(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, values) of every rating, in CSR order."""
        rows = np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.csr.indptr))
        return rows, self.csr.indices.astype(np.int64), self.csr.data

    def rating_scale(self) -> tuple[float, float]:
        """Smallest and largest rating present (the clip range for predictions)."""
        if self.nnz == 0:
            raise EmptyStoreError("the rating matrix is empty")
        return float(self.csr.data.min()), float(self.csr.data.max())

    def subset(self, mask: np.ndarray) -> RatingMatrix:
        """The ratings where ``mask`` (aligned with ``csr.data``) is True, on the same index."""
        rows, cols, values = self.coo()
        return RatingMatrix.from_positions(rows[mask], cols[mask], values[mask], self.timestamps[mask], self.index)

    def fingerprint(self) -> str:
        """sha256 over ids and ratings: two matrices with equal fingerprints hold the same data."""
        digest = hashlib.sha256()
        for array in (self.index.user_ids, self.index.movie_ids, self.csr.indptr, self.csr.indices, self.csr.data):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    @classmethod
    def from_positions(
        cls,
        rows: np.ndarray,
        cols: np.ndarray,
        values: np.ndarray,
        timestamps: np.ndarray | None,
        index: IdIndex,
    ) -> RatingMatrix:
        """Build from positions already mapped through ``index``; (row, col) pairs must be unique."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        ts = np.zeros(rows.size, np.int64) if timestamps is None else np.asarray(timestamps, dtype=np.int64)
        order = np.lexsort((cols, rows))
        if not (np.all(np.diff(rows) >= 0) and np.all(order == np.arange(order.size))):
            rows, cols, ts = rows[order], cols[order], ts[order]
            values = np.asarray(values)[order]
        if rows.size > 1:
            same = (rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1])
            if same.any():
                k = int(np.flatnonzero(same)[0])
                raise ValueError(
                    f"duplicate rating for user {index.user_ids[rows[k]]} and movie {index.movie_ids[cols[k]]}"
                )
        indptr = np.zeros(index.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=index.n_users), out=indptr[1:])
        csr = sp.csr_matrix(
            (np.asarray(values, dtype=np.float32), cols.astype(np.int32), indptr),
            shape=(index.n_users, index.n_movies),
        )
        return cls(csr=csr, timestamps=ts, index=index)

    @classmethod
    def from_ids(
        cls,
        user_ids: np.ndarray,
        movie_ids: np.ndarray,
        values: np.ndarray,
        timestamps: np.ndarray | None = None,
        index: IdIndex | None = None,
    ) -> RatingMatrix:
        """Build from external ids; the index is every id present unless one is given."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        movie_ids = np.asarray(movie_ids, dtype=np.int64)
        if index is None:
            index = IdIndex(np.unique(user_ids), np.unique(movie_ids))
        return cls.from_positions(index.user_rows(user_ids), index.movie_cols(movie_ids), values, timestamps, index)

    @classmethod
    def from_db(cls, engine: Engine) -> RatingMatrix:
        """Every rating in the store; unknown (NULL) timestamps become 0. Raises EmptyStoreError when empty."""
        from sqlalchemy import select

        from recae.db import Rating

        with engine.connect() as conn:
            result = conn.execute(
                select(Rating.user_id, Rating.movie_id, Rating.rating, Rating.timestamp).order_by(
                    Rating.user_id, Rating.movie_id
                )
            )
            rows = result.all()
        if not rows:
            raise EmptyStoreError("the store holds no ratings; run `recae ingest ml-100k` first")
        users, movies, values, ts = (np.asarray(c) for c in zip(*rows, strict=True))
        ts = np.asarray([0 if t is None else t for t in ts], dtype=np.int64)
        return cls.from_ids(users, movies, values.astype(np.float32), ts)
