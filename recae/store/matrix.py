"""The user x movie rating matrix (scipy CSR) and the index between external ids and positions.

``*_id`` is an external MovieLens id; ``row``/``col`` a position. No torch here.

Loading from the store costs O(nnz) time and memory: ratings stream into numpy arrays in primary-key order,
which is already CSR order, so nothing is sorted and no Python object is made per rating (on SQLite and
PostgreSQL; see ``_read_sqlite`` and ``_read_postgresql``).
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recae.errors import EmptyStoreError, UnknownMovieError, UnknownUserError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

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
        streams DBAPI rows.
        """
        from recae.store.db import is_postgresql, is_sqlite

        columns: _Columns | None = None
        if is_sqlite(engine) and engine.url.database not in (None, "", ":memory:"):  # threads need a file
            columns = _read_sqlite(engine)
        elif is_postgresql(engine):
            columns = _read_postgresql(engine)
        if columns is None:
            columns = _read_generic(engine)
        if columns.user_ids.size == 0:
            raise EmptyStoreError("the store holds no ratings; run `recae ingest ml-100k` first")
        return _matrix_from_sorted_columns(columns)


# ----------------------------------------------------------------------------------------------------------------
# Loading from the store


@dataclass(frozen=True)
class _Columns:
    """Ratings read from the store, one array per column, normally in (user_id, movie_id) order."""

    user_ids: np.ndarray  # (nnz,) int64
    movie_ids: np.ndarray  # (nnz,) int64
    values: np.ndarray  # (nnz,) float32
    timestamps: np.ndarray  # (nnz,) int64, 0 = unknown


def _matrix_from_sorted_columns(columns: _Columns) -> RatingMatrix:
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
        return RatingMatrix.from_ids(users, movies, columns.values, columns.timestamps)
    del new_user
    index = IdIndex(user_index, _sorted_unique_ids(movies))
    indptr = np.empty(starts.size + 1, dtype=np.int64)
    indptr[:-1] = starts
    indptr[-1] = users.size
    cols = index._movie_lookup.known(movies)  # every id is in the index: it was built from these ids
    return RatingMatrix._from_csr_parts(columns.values, cols, indptr, columns.timestamps, index)


_GENERIC_BATCH = 65_536


def _read_generic(engine: Engine) -> _Columns:
    """Any SQLAlchemy database: a raw DBAPI cursor streamed with ``fetchmany`` into numpy batches."""
    from sqlalchemy import func, select

    from recae.store.db import Rating

    statement = select(
        Rating.user_id, Rating.movie_id, Rating.rating, func.coalesce(Rating.timestamp, 0)
    ).order_by(Rating.user_id, Rating.movie_id)
    # The only parameter is the constant 0, rendered inline so the raw cursor needs no bindings.
    sql = str(statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(sql)
        while batch := cursor.fetchmany(_GENERIC_BATCH):
            users, movies, values, stamps = zip(*batch, strict=True)
            parts.append((
                np.fromiter(users, np.int64, len(batch)),
                np.fromiter(movies, np.int64, len(batch)),
                np.fromiter(values, np.float32, len(batch)),
                np.fromiter(stamps, np.int64, len(batch)),
            ))
        cursor.close()
        raw.rollback()
    finally:
        raw.close()
    if not parts:
        empty = np.zeros(0, np.int64)
        return _Columns(empty, empty, np.zeros(0, np.float32), empty)
    return _Columns(*(np.concatenate([p[k] for p in parts]) for k in range(4)))  # type: ignore[arg-type]


class _NotEncodable(Exception):
    """SQLite rows the fast path cannot read exactly (a value that is not an integer where one is expected)."""


_SQLITE_CHUNK_ROWS = 1_000_000  # ratings per query, bounding the text held at once (~30 MB)

# One query per user id range returns each column as one comma-joined text. Ratings travel as twice their
# value when that is an integer (every MovieLens dataset: half stars), else as NULL, which group_concat skips;
# a chunk whose rating count then falls short is read again with ratings as REAL text.
_SQLITE_COLUMNS_SQL = (
    "SELECT group_concat(user_id), group_concat(movie_id),"
    " group_concat(iif(rating * 2 = CAST(rating * 2 AS INTEGER), CAST(rating * 2 AS INTEGER), NULL)),"
    " group_concat(ifnull(timestamp, 0))"
    " FROM ratings WHERE user_id >= ? AND user_id < ?"
)
_SQLITE_REAL_RATINGS_SQL = "SELECT group_concat(rating) FROM ratings WHERE user_id >= ? AND user_id < ?"


def _parse_into(text: str | None, out: np.ndarray) -> bool:
    """Parse comma-joined numbers into ``out``; False unless there are exactly ``out.size`` of them."""
    if text is None:
        return out.size == 0
    try:
        parsed = np.fromstring(text, dtype=out.dtype, sep=",")
    except ValueError:  # unparsable text (numpy >= 2.3 raises; older versions warn and stop early)
        return False
    if parsed.size != out.size:
        return False
    out[:] = parsed
    return True


def _user_ranges(low: int, high: int, n_rows: int) -> list[tuple[int, int]]:
    """Half-open user id ranges of about ``_SQLITE_CHUNK_ROWS`` ratings each (equal id widths)."""
    n_chunks = max(1, -(-n_rows // _SQLITE_CHUNK_ROWS))
    edges = np.unique(np.linspace(low, high + 1, n_chunks + 1).round().astype(np.int64))
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


class _SqliteSnapshot:
    """One SQLite read transaction, used from a single worker thread (sqlite3 objects stay in their thread)."""

    def __init__(self, engine: Engine) -> None:
        self.raw = engine.raw_connection()
        self.cursor = self.raw.cursor()
        self.cursor.execute("BEGIN")
        # The first read fixes the snapshot. Three statements, not one: alone, count(*) and min/max of the
        # key need no full scan.
        (self.n_rows,) = self.cursor.execute("SELECT count(*) FROM ratings").fetchone()
        (self.low,) = self.cursor.execute("SELECT min(user_id) FROM ratings").fetchone()
        (self.high,) = self.cursor.execute("SELECT max(user_id) FROM ratings").fetchone()

    def columns(self, first: int, stop: int) -> tuple[str | None, ...]:
        return tuple(self.cursor.execute(_SQLITE_COLUMNS_SQL, (first, stop)).fetchone())

    def real_ratings(self, first: int, stop: int) -> str | None:
        return self.cursor.execute(_SQLITE_REAL_RATINGS_SQL, (first, stop)).fetchone()[0]

    def close(self) -> None:
        try:
            self.cursor.close()
            self.raw.rollback()
        finally:
            self.raw.close()


_SQLITE_READERS = 2  # connections reading ranges in parallel (the GIL is released inside SQLite)
_SNAPSHOT_LOCK_WAIT_MS = 2_000


def _open_snapshots(engine: Engine, workers: list[Any]) -> list[_SqliteSnapshot]:
    """One read transaction per worker thread, all on the same snapshot of the database.

    While a helper connection holds the write lock for a few milliseconds (``BEGIN IMMEDIATE``) no commit
    can land, so every reader that starts then sees the same data; the lock is released before the long
    reads. When the lock cannot be had quickly (a long write, a read-only file) one reader is used alone.
    """
    from recae.store.db import SQLITE_BUSY_TIMEOUT_MS

    def start_all(count: int) -> list[_SqliteSnapshot]:
        started: list[_SqliteSnapshot] = []
        try:
            for worker in workers[:count]:
                started.append(worker.submit(_SqliteSnapshot, engine).result())
        except BaseException:
            for worker, snapshot in zip(workers, started, strict=False):
                worker.submit(snapshot.close).result()
            raise
        return started

    if len(workers) < 2:
        return start_all(1)
    guard = engine.raw_connection()
    try:
        cursor = guard.cursor()
        cursor.execute(f"PRAGMA busy_timeout={_SNAPSHOT_LOCK_WAIT_MS:d}")
        try:
            cursor.execute("BEGIN IMMEDIATE")
        except Exception as exc:  # sqlite3.OperationalError: locked or read-only
            log.info("no shared snapshot (%s); loading with one reader", exc)
            return start_all(1)
        try:
            return start_all(len(workers))
        finally:
            guard.rollback()
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
            cursor.close()
    finally:
        guard.close()


def _in_order(workers: list[Any], snapshots: list[Any], ranges: list[tuple[int, int]],
              method: str) -> Iterator[tuple[int, int, int, Any]]:
    """(i, first, stop, ``snapshot.method(first, stop)``) for each range, in order; range i runs on snapshot
    ``i % len(snapshots)`` in that snapshot's own thread, two queries per snapshot queued ahead (this bounds the
    results held at once), so the database reads while the caller decodes. Closing it cancels what is queued."""
    from concurrent.futures import Future

    in_flight = 2 * len(snapshots)
    pending: dict[int, Future[Any]] = {}

    def submit(i: int) -> None:
        if i < len(ranges):
            k = i % len(snapshots)
            pending[i] = workers[k].submit(getattr(snapshots[k], method), *ranges[i])

    for i in range(in_flight):
        submit(i)
    try:
        for i, (first, stop) in enumerate(ranges):
            result = pending.pop(i).result()
            submit(i + in_flight)
            yield i, first, stop, result
    finally:
        for future in pending.values():
            future.cancel()


def _close_readers(workers: list[Any], snapshots: list[Any]) -> None:
    """Close each snapshot in the thread that opened it, then stop the threads."""
    for worker, snapshot in zip(workers, snapshots, strict=False):
        worker.submit(snapshot.close).result()
    for worker in workers:
        worker.shutdown(wait=True)


def _read_sqlite(engine: Engine) -> _Columns | None:
    """SQLite fast path: per user id range, one query returns each column as one text parsed by numpy.

    Python's sqlite3 otherwise makes a tuple and four objects per rating, several times slower. The ratings
    table is WITHOUT ROWID with key (user_id, movie_id), so a range scan yields rows in CSR order and
    ``group_concat`` keeps it (checked again when the CSR is built). Worker threads, each with its own
    connection on one shared snapshot, run the queries (SQLite releases the GIL) while this thread parses
    finished ranges, so both cores work. Returns None when a value cannot be read exactly this way; the
    caller then takes the generic path.
    """
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    workers = [ThreadPoolExecutor(max_workers=1, thread_name_prefix="recae-matrix-load")
               for _ in range(_SQLITE_READERS)]
    snapshots: list[_SqliteSnapshot] = []
    try:
        snapshots = _open_snapshots(engine, workers)
        first_snapshot = snapshots[0]
        n_rows = int(first_snapshot.n_rows)
        ranges = _user_ranges(int(first_snapshot.low), int(first_snapshot.high), n_rows) if n_rows else []
        users = np.empty(n_rows, np.int64)
        movies = np.empty(n_rows, np.int64)
        values = np.empty(n_rows, np.float32)
        stamps = np.empty(n_rows, np.int64)
        done = 0
        try:
            with warnings.catch_warnings(), closing(_in_order(workers, snapshots, ranges, "columns")) as results:
                warnings.simplefilter("ignore", DeprecationWarning)  # numpy < 2.3 on unparsable text
                for i, first, stop, (user_text, movie_text, code_text, stamp_text) in results:
                    count = 0 if user_text is None else user_text.count(",") + 1
                    end = done + count
                    if end > n_rows:
                        raise _NotEncodable("more rows than counted")
                    if not (_parse_into(user_text, users[done:end]) and _parse_into(movie_text, movies[done:end])
                            and _parse_into(stamp_text, stamps[done:end])):
                        raise _NotEncodable(f"a non-integer id or timestamp for users {first}..{stop - 1}")
                    if _parse_into(code_text, values[done:end]):
                        values[done:end] *= np.float32(0.5)
                    else:  # some rating is not a half star: read this range's ratings as REAL text
                        k = i % len(snapshots)
                        exact = np.empty(count, np.float64)
                        if not _parse_into(workers[k].submit(snapshots[k].real_ratings, first, stop).result(), exact):
                            raise _NotEncodable(f"a non-numeric rating for users {first}..{stop - 1}")
                        values[done:end] = exact
                    done = end
            if done != n_rows:
                raise _NotEncodable(f"read {done} of {n_rows} rows")
        except _NotEncodable as exc:
            log.info("SQLite fast load not applicable (%s); streaming rows instead", exc)
            return None
    finally:
        _close_readers(workers, snapshots)
    return _Columns(users, movies, values, stamps)


# ----------------------------------------------------------------------------------------------------------------
# PostgreSQL

_PG_CHUNK_ROWS = 1_000_000  # ratings per query (about 30 MB of arrays on the wire)
_PG_READERS = 2  # connections reading ranges in parallel, each a server process of its own

# One query per user id range returns each column as one array in binary form, read by numpy without a Python
# object per element. The index scan of the primary key yields (user_id, movie_id) order, which array_agg keeps
# (checked again when the CSR is built).
_PG_COLUMNS_SQL = (
    'SELECT array_agg(user_id), array_agg(movie_id), array_agg(rating), array_agg(coalesce("timestamp", 0))'
    ' FROM (SELECT user_id, movie_id, rating, "timestamp" FROM ratings WHERE user_id >= %s AND user_id < %s'
    " ORDER BY user_id, movie_id) AS chunk"
)
# (element type, its binary width) of the four arrays above; the store's schema fixes them.
_PG_ARRAY_ELEMENTS = ((">i4", 4), (">i4", 4), (">f8", 8), (">i8", 8))


def _pg_array(data: bytes | None, element: str, width: int) -> np.ndarray:
    """Values of a one-dimensional PostgreSQL array without NULLs in binary form (``array_send``)::

        int32 ndim, int32 has_nulls, int32 element oid, int32 length, int32 lower bound,
        then per element: int32 byte width, value (big-endian)
    """
    if data is None:
        return np.zeros(0, np.dtype(element).newbyteorder("="))
    item = np.dtype([("width", ">i4"), ("value", element)])
    if len(data) < 20 or (len(data) - 20) % item.itemsize:
        raise _NotEncodable(f"an array of {len(data)} bytes")
    ndim, has_nulls, _oid, length, _lower = np.frombuffer(data, ">i4", count=5).tolist()
    if ndim != 1 or has_nulls:
        raise _NotEncodable(f"an array with {ndim} dimensions or NULLs")
    items = np.frombuffer(data, dtype=item, offset=20)
    if items.size != length or bool((items["width"] != width).any()):
        raise _NotEncodable("an array element of unexpected width")
    return items["value"]


class _PostgresSnapshot:
    """One REPEATABLE READ, READ ONLY transaction; the first exports its snapshot, the others import it, so
    every reader sees the same data. Each is used from one worker thread."""

    def __init__(self, engine: Engine, snapshot_id: str | None) -> None:
        import psycopg
        from psycopg import sql
        from psycopg.adapt import Loader

        class RawArray(Loader):
            format = psycopg.pq.Format.BINARY

            def load(self, data: Any) -> bytes:
                return bytes(data)

        self.raw = engine.raw_connection()
        try:
            driver = self.raw.driver_connection
            driver.rollback()  # start from no transaction: the next statement opens ours
            self.cursor = driver.cursor()
            for name in ("int4", "int8", "float8"):
                self.cursor.adapters.register_loader(psycopg.postgres.types[name].array_oid, RawArray)
            self.cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if snapshot_id is not None:
                self.cursor.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_id)))
            # Steer the planner to the primary-key index scan (already in CSR order) over a bitmap scan + sort,
            # which it picks when statistics are missing or stale.
            self.cursor.execute("SET LOCAL enable_bitmapscan = off")
            self.cursor.execute("SET LOCAL enable_sort = off")
            # The first query fixes the snapshot. The row estimate only sizes the ranges; min/max use the index.
            self.snapshot_id, self.low, self.high, self.estimate = self.cursor.execute(
                "SELECT pg_export_snapshot(), (SELECT min(user_id) FROM ratings), (SELECT max(user_id) FROM ratings),"
                " (SELECT greatest(reltuples, pg_relation_size(oid) / 40.0) FROM pg_class"
                "  WHERE oid = 'ratings'::regclass)"
            ).fetchone()
        except BaseException:
            self.raw.close()
            raise

    def columns(self, first: int, stop: int) -> tuple[bytes | None, ...]:
        return tuple(self.cursor.execute(_PG_COLUMNS_SQL, (first, stop), binary=True).fetchone())

    def close(self) -> None:
        try:
            self.cursor.close()
            self.raw.rollback()
        finally:
            self.raw.close()


def _pg_ranges(snapshot: _PostgresSnapshot) -> list[tuple[int, int]]:
    """Half-open user id ranges of about ``_PG_CHUNK_ROWS`` ratings each (equal id widths); none when empty."""
    if snapshot.low is None:
        return []
    n_chunks = max(1, -(-max(1, int(snapshot.estimate or 0)) // _PG_CHUNK_ROWS))
    edges = np.unique(np.linspace(int(snapshot.low), int(snapshot.high) + 1, n_chunks + 1).round().astype(np.int64))
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def _read_postgresql(engine: Engine) -> _Columns | None:
    """PostgreSQL fast path: per user id range, one query returns each column as one binary array.

    Reading rows through the DBAPI makes a tuple and four objects per rating (about 0.3M ratings/s); here
    ``_PG_READERS`` server processes scan ranges in parallel on one exported snapshot while this thread decodes
    finished ranges with numpy. Returns None when an array is not as expected; the caller then streams rows.
    """
    from concurrent.futures import ThreadPoolExecutor

    workers = [ThreadPoolExecutor(max_workers=1, thread_name_prefix="recae-matrix-pg") for _ in range(_PG_READERS)]
    snapshots: list[_PostgresSnapshot] = []
    parts: list[tuple[np.ndarray, ...]] = []
    try:
        snapshots.append(workers[0].submit(_PostgresSnapshot, engine, None).result())
        for worker in workers[1:]:
            snapshots.append(worker.submit(_PostgresSnapshot, engine, snapshots[0].snapshot_id).result())
        ranges = _pg_ranges(snapshots[0])
        try:
            with closing(_in_order(workers, snapshots, ranges, "columns")) as results:
                for _, first, stop, arrays in results:
                    users, movies, values, stamps = (_pg_array(data, element, width)
                                                     for data, (element, width) in zip(arrays, _PG_ARRAY_ELEMENTS))
                    if not users.size == movies.size == values.size == stamps.size:
                        raise _NotEncodable(f"columns of different lengths for users {first}..{stop - 1}")
                    if users.size:
                        parts.append((users.astype(np.int64), movies.astype(np.int64), values.astype(np.float32),
                                      stamps.astype(np.int64)))
        except _NotEncodable as exc:
            log.info("PostgreSQL fast load not applicable (%s); streaming rows instead", exc)
            return None
    finally:
        _close_readers(workers, snapshots)
    if not parts:
        empty = np.zeros(0, np.int64)
        return _Columns(empty, empty, np.zeros(0, np.float32), empty)
    if len(parts) == 1:
        return _Columns(*parts[0])
    return _Columns(*(np.concatenate([part[k] for part in parts]) for k in range(4)))  # type: ignore[arg-type]
