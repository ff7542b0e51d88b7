"""The fast readers behind ``RatingMatrix.from_db``: every rating of the store as numpy columns in CSR order.

Loading costs O(nnz) time and memory: ratings stream into numpy arrays in primary-key order, which is already
CSR order, so nothing is sorted and no Python object is made per rating. A SQLite file and PostgreSQL (psycopg)
each have a fast path (``_read_sqlite``, ``_read_postgresql``): worker threads read user id ranges of about a
million ratings on one shared snapshot while the calling thread decodes finished ranges. Any other database, or
data a fast path cannot read exactly, streams DBAPI rows (``_read_generic``). Every dialect-specific read of the
ratings lives here; ``recae.store.matrix`` turns the columns into a matrix and knows no SQL.
"""

from __future__ import annotations

import logging
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RatingColumns:
    """Ratings read from the store, one array per column, normally in (user_id, movie_id) order."""

    user_ids: np.ndarray  # (nnz,) int64
    movie_ids: np.ndarray  # (nnz,) int64
    values: np.ndarray  # (nnz,) float32
    timestamps: np.ndarray  # (nnz,) int64, 0 = unknown


def read_columns(engine: Engine) -> RatingColumns:
    """Every rating in the store, unknown (NULL) timestamps as 0, from one consistent snapshot; O(nnz).

    A SQLite file and PostgreSQL (psycopg) take the fast paths with no Python object per rating; any other
    database (or data a fast path cannot read exactly) streams DBAPI rows. Empty columns for an empty store.
    """
    from recae.store.db import is_postgresql, is_sqlite

    columns: RatingColumns | None = None
    if is_sqlite(engine) and engine.url.database not in (None, "", ":memory:"):  # threads need a file
        columns = _read_sqlite(engine)
    elif is_postgresql(engine):
        columns = _read_postgresql(engine)
    if columns is None:
        columns = _read_generic(engine)
    return columns


_GENERIC_BATCH = 65_536


def _read_generic(engine: Engine) -> RatingColumns:
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
        return RatingColumns(empty, empty, np.zeros(0, np.float32), empty)
    return RatingColumns(*(np.concatenate([p[k] for p in parts]) for k in range(4)))  # type: ignore[arg-type]


class _NotEncodable(Exception):
    """Rows a fast path cannot read exactly (a value that is not an integer where one is expected, an array
    not as expected): the caller then takes the generic path."""


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


# ----------------------------------------------------------------------------------------------------------------
# SQLite

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


class _Snapshot:
    """A read transaction on one raw DBAPI connection: closing it ends the transaction and frees the connection."""

    raw: Any
    cursor: Any

    def close(self) -> None:
        try:
            self.cursor.close()
            self.raw.rollback()
        finally:
            self.raw.close()


class _SqliteSnapshot(_Snapshot):
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


def _read_sqlite(engine: Engine) -> RatingColumns | None:
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
    return RatingColumns(users, movies, values, stamps)


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


class _PostgresSnapshot(_Snapshot):
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


def _pg_ranges(snapshot: _PostgresSnapshot) -> list[tuple[int, int]]:
    """Half-open user id ranges of about ``_PG_CHUNK_ROWS`` ratings each (equal id widths); none when empty."""
    if snapshot.low is None:
        return []
    n_chunks = max(1, -(-max(1, int(snapshot.estimate or 0)) // _PG_CHUNK_ROWS))
    edges = np.unique(np.linspace(int(snapshot.low), int(snapshot.high) + 1, n_chunks + 1).round().astype(np.int64))
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def _read_postgresql(engine: Engine) -> RatingColumns | None:
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
        return RatingColumns(empty, empty, np.zeros(0, np.float32), empty)
    if len(parts) == 1:
        return RatingColumns(*parts[0])
    return RatingColumns(*(np.concatenate([part[k] for part in parts]) for k in range(4)))  # type: ignore[arg-type]
