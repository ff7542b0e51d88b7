"""The user x movie rating matrix (scipy CSR) and the index between external ids and positions.

``*_id`` is an external MovieLens id; ``row``/``col`` a position. No torch and no SQL here: ``from_db`` takes
its columns from ``recae.store.readers`` (the fast per-dialect readers) and only builds the CSR, in O(nnz)
without sorting since the readers return ratings in (user_id, movie_id) order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recae.errors import EmptyStoreError, UnknownMovieError, UnknownUserError
from recae.store.readers import RatingColumns, read_columns

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: A dense id -> position table is used while ``max_id - min_id`` stays below this multiple of the id count
#: (plus a small constant): MovieLens ids are compact, so lookups are one gather instead of a binary search.
_DENSE_LOOKUP_SLACK = 4
_DENSE_LOOKUP_MIN = 1 << 20


def _describe_ids(ids: np.ndarray) -> str:
    if ids.size == 0:
        return "none"
    if ids.size == int(ids[-1] - ids[0] + 1):
        return f"{ids[0]}..{ids[-1]}"
    return f"{ids.size} ids between {ids[0]} and {ids[-1]}"


def _sorted_unique_ids(ids: np.ndarray) -> np.ndarray:
    """``np.unique(ids)`` in O(n) when ids are compact non-negative integers (a presence table), else by sorting."""
    if ids.size == 0:
        return np.zeros(0, np.int64)
    low, high = int(ids.min()), int(ids.max())
    if low >= 0 and high < _DENSE_LOOKUP_SLACK * ids.size + _DENSE_LOOKUP_MIN:
        present = np.zeros(high + 1, dtype=bool)
        present[ids] = True
        return np.flatnonzero(present).astype(np.int64)
    return np.unique(ids).astype(np.int64)


class _Lookup:
    """Vectorised id -> position: a dense table for compact ids, binary search otherwise; -1 for unknown ids."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids
        self.offset = int(ids[0]) if ids.size else 0
        span = int(ids[-1]) - self.offset + 1 if ids.size else 0
        self.table: np.ndarray | None = None
        if ids.size and span <= _DENSE_LOOKUP_SLACK * ids.size + _DENSE_LOOKUP_MIN:
            self.table = np.full(span, -1, dtype=np.int32 if ids.size < 2**31 else np.int64)
            self.table[ids - self.offset] = np.arange(ids.size, dtype=self.table.dtype)

    def known(self, query: np.ndarray) -> np.ndarray:
        """Positions of ids known to be present, in the table's own dtype (int32 below 2**31 ids); no checks."""
        if self.table is None:
            return np.searchsorted(self.ids, query)
        if self.offset == 0:
            return self.table[query]
        return self.table[query - self.offset]

    def __call__(self, query: np.ndarray) -> np.ndarray:
        query = np.asarray(query, dtype=np.int64)
        if self.ids.size == 0:
            return np.full(query.shape, -1, np.int64)
        if self.table is not None:
            shifted = query - self.offset
            inside = (shifted >= 0) & (shifted < self.table.size)
            if inside.all():
                return self.table[shifted].astype(np.int64, copy=False)
            out = np.full(query.shape, -1, np.int64)
            out[inside] = self.table[shifted[inside]]
            return out
        pos = np.searchsorted(self.ids, query)
        clipped = np.minimum(pos, self.ids.size - 1)
        return np.where(self.ids[clipped] == query, clipped, -1)


@dataclass(frozen=True, eq=False)
class IdIndex:
    """Sorted external ids; position in the array is the row (users) or column (movies)."""

    user_ids: np.ndarray  # (n_users,) int64, strictly increasing
    movie_ids: np.ndarray  # (n_movies,) int64, strictly increasing
    _user_lookup: _Lookup = field(init=False, repr=False, compare=False)
    _movie_lookup: _Lookup = field(init=False, repr=False, compare=False)
    #: The store's catalogue identity when these ids were read (``recae.store.identity``; None: not from a store):
    #: a model publishes the identity of the data it was trained on, not the one the store has at publish time.
    catalogue: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("user_ids", "movie_ids"):
            ids = np.ascontiguousarray(getattr(self, name), dtype=np.int64)
            if ids.ndim != 1 or (ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1]))):
                raise ValueError(f"IdIndex.{name} must be a strictly increasing 1-d array of ids")
            ids.flags.writeable = False
            object.__setattr__(self, name, ids)
        object.__setattr__(self, "_user_lookup", _Lookup(self.user_ids))
        object.__setattr__(self, "_movie_lookup", _Lookup(self.movie_ids))

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def n_movies(self) -> int:
        return int(self.movie_ids.size)

    def _user_position(self, user_id: int) -> int:
        return int(self._user_lookup(np.asarray([user_id]))[0])

    def _movie_position(self, movie_id: int) -> int:
        return int(self._movie_lookup(np.asarray([movie_id]))[0])

    def has_user(self, user_id: int) -> bool:
        return self._user_position(user_id) >= 0

    def has_movie(self, movie_id: int) -> bool:
        return self._movie_position(movie_id) >= 0

    def user_row(self, user_id: int) -> int:
        """Row of ``user_id``; raises UnknownUserError naming the known range."""
        row = self._user_position(user_id)
        if row < 0:
            raise UnknownUserError(f"user {user_id} is unknown; known users are {_describe_ids(self.user_ids)}")
        return row

    def movie_col(self, movie_id: int) -> int:
        """Column of ``movie_id``; raises UnknownMovieError naming the known range."""
        col = self._movie_position(movie_id)
        if col < 0:
            raise UnknownMovieError(
                f"movie {movie_id} is unknown; known movies are {_describe_ids(self.movie_ids)}"
            )
        return col

    def lookup_users(self, user_ids: np.ndarray) -> np.ndarray:
        """Vectorised rows (int64), -1 where the id is unknown; never raises."""
        return self._user_lookup(user_ids)

    def lookup_movies(self, movie_ids: np.ndarray) -> np.ndarray:
        """Vectorised columns (int64), -1 where the id is unknown; never raises."""
        return self._movie_lookup(movie_ids)

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Vectorised rows (int64) for ids that must all be known; O(len) for compact ids."""
        rows = self._user_lookup(user_ids)
        if rows.size and int(rows.min()) < 0:
            self.user_row(int(np.asarray(user_ids).ravel()[np.flatnonzero(rows.ravel() < 0)[0]]))
        return rows

    def movie_cols(self, movie_ids: np.ndarray) -> np.ndarray:
        """Vectorised columns (int64) for ids that must all be known; O(len) for compact ids."""
        cols = self._movie_lookup(movie_ids)
        if cols.size and int(cols.min()) < 0:
            self.movie_col(int(np.asarray(movie_ids).ravel()[np.flatnonzero(cols.ravel() < 0)[0]]))
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

    def row_of_each_rating(self) -> np.ndarray:
        """(nnz,) int64 row of every stored rating, in CSR order."""
        return np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.csr.indptr))

    def coo(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, values) of every rating, in CSR order."""
        return self.row_of_each_rating(), self.csr.indices.astype(np.int64), self.csr.data

    def rating_scale(self) -> tuple[float, float]:
        """Smallest and largest rating present (the clip range for predictions)."""
        if self.nnz == 0:
            raise EmptyStoreError("the rating matrix is empty")
        return float(self.csr.data.min()), float(self.csr.data.max())

    def subset(self, mask: np.ndarray) -> RatingMatrix:
        """The ratings where ``mask`` (bool, aligned with ``csr.data``) is True, on the same index; O(nnz)."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.nnz,):
            raise ValueError(f"mask has shape {mask.shape}; expected ({self.nnz},)")
        kept_before = np.zeros(self.nnz + 1, dtype=np.int64)
        np.cumsum(mask, out=kept_before[1:])
        indptr = kept_before[self.csr.indptr]
        return RatingMatrix._from_csr_parts(
            self.csr.data[mask], self.csr.indices[mask], indptr, self.timestamps[mask], self.index
        )

    def fingerprint(self) -> str:
        """sha256 over ids, ratings and timestamps: equal fingerprints mean the same data (and the same splits)."""
        return self._digest(with_timestamps=True)

    def ratings_fingerprint(self) -> str:
        """sha256 over (user, movie, rating) only: what a saved model keeps of its inputs (it stores no timestamps),
        so a loaded model's inputs compare equal to the same ratings read from the store."""
        return self._digest(with_timestamps=False)

    def _digest(self, with_timestamps: bool) -> str:
        digest = hashlib.sha256()
        indptr = self.csr.indptr.astype(np.int64)
        indices = self.csr.indices.astype(np.int32)
        data = self.csr.data.astype(np.float32)
        arrays = (self.index.user_ids, self.index.movie_ids, indptr, indices, data)
        for array in (*arrays, self.timestamps) if with_timestamps else arrays:
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    @classmethod
    def _from_csr_parts(
        cls,
        values: np.ndarray,
        cols: np.ndarray,
        indptr: np.ndarray,
        timestamps: np.ndarray,
        index: IdIndex,
    ) -> RatingMatrix:
        """Wrap arrays already in CSR order (sorted, unique columns per row) without copying or checking."""
        index_dtype = np.int32 if max(int(indptr[-1]), index.n_movies) < 2**31 else np.int64
        csr = sp.csr_matrix(
            (
                np.asarray(values, dtype=np.float32),
                np.asarray(cols, dtype=index_dtype),
                np.asarray(indptr, dtype=index_dtype),
            ),
            shape=(index.n_users, index.n_movies),
            copy=False,
        )
        csr.has_sorted_indices = True
        return cls(csr=csr, timestamps=np.asarray(timestamps, dtype=np.int64), index=index)

    @classmethod
    def from_positions(
        cls,
        rows: np.ndarray,
        cols: np.ndarray,
        values: np.ndarray,
        timestamps: np.ndarray | None,
        index: IdIndex,
    ) -> RatingMatrix:
        """Build from positions already mapped through ``index``; (row, col) pairs must be unique.

        Input already in (row, col) order is taken as is in O(n); otherwise it is sorted once.
        """
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        values = np.asarray(values, dtype=np.float32)
        ts = np.zeros(rows.size, np.int64) if timestamps is None else np.asarray(timestamps, dtype=np.int64)
        if not (rows.shape == cols.shape == values.shape == ts.shape and rows.ndim == 1):
            raise ValueError("rows, cols, values and timestamps must be 1-d arrays of one length")
        if rows.size and (rows.min() < 0 or rows.max() >= index.n_users or cols.min() < 0
                          or cols.max() >= index.n_movies):
            raise ValueError(f"positions outside the index's {index.n_users} x {index.n_movies} shape")
        in_order = rows.size < 2 or bool(
            np.all((rows[1:] > rows[:-1]) | ((rows[1:] == rows[:-1]) & (cols[1:] >= cols[:-1])))
        )
        if not in_order:
            order = np.lexsort((cols, rows))
            rows, cols, values, ts = rows[order], cols[order], values[order], ts[order]
        if rows.size > 1:
            same = (rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1])
            if same.any():
                k = int(np.flatnonzero(same)[0])
                raise ValueError(
                    f"duplicate rating for user {index.user_ids[rows[k]]} and movie {index.movie_ids[cols[k]]}"
                )
        indptr = np.zeros(index.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=index.n_users), out=indptr[1:])
        return cls._from_csr_parts(values, cols, indptr, ts, index)

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
            index = IdIndex(_sorted_unique_ids(user_ids), _sorted_unique_ids(movie_ids))
        return cls.from_positions(index.user_rows(user_ids), index.movie_cols(movie_ids), values, timestamps, index)

    @classmethod
    def from_db(cls, engine: Engine) -> RatingMatrix:
        """Every rating in the store; unknown (NULL) timestamps become 0. Raises EmptyStoreError when empty.

        One consistent snapshot, O(nnz) time and memory. A SQLite file and PostgreSQL (psycopg) take fast
        paths with no Python object per rating; any other database (or data a fast path cannot read exactly)
        streams DBAPI rows (see ``recae.store.readers``).
        """
        from recae.store.identity import catalogue_identity

        catalogue = catalogue_identity(engine)  # before the ratings: a replace in between makes the model look older
        columns = read_columns(engine)
        if columns.user_ids.size == 0:
            raise EmptyStoreError("the store holds no ratings; run `recae ingest ml-100k` first")
        return _matrix_from_sorted_columns(columns, catalogue)


def _matrix_from_sorted_columns(columns: RatingColumns, catalogue: str | None = None) -> RatingMatrix:
    """CSR straight from columns in (user_id, movie_id) order: O(nnz), no sort; falls back to a sort otherwise."""
    users, movies = columns.user_ids, columns.movie_ids
    new_user = np.empty(users.size, dtype=bool)
    new_user[0] = True
    np.not_equal(users[1:], users[:-1], out=new_user[1:])
    starts = np.flatnonzero(new_user)
    user_index = users[starts]
    ordered = bool(np.all(user_index[1:] > user_index[:-1])) and bool(
        np.all((movies[1:] > movies[:-1]) | new_user[1:])
    )
    if not ordered:  # a database that ignored ORDER BY, or duplicates: the general path sorts and checks
        index = IdIndex(_sorted_unique_ids(users), _sorted_unique_ids(movies), catalogue=catalogue)
        return RatingMatrix.from_ids(users, movies, columns.values, columns.timestamps, index=index)
    del new_user
    index = IdIndex(user_index, _sorted_unique_ids(movies), catalogue=catalogue)
    indptr = np.empty(starts.size + 1, dtype=np.int64)
    indptr[:-1] = starts
    indptr[-1] = users.size
    cols = index._movie_lookup.known(movies)  # every id is in the index: it was built from these ids
    return RatingMatrix._from_csr_parts(columns.values, cols, indptr, columns.timestamps, index)
