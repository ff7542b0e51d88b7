"""Fast writes into the store, per dialect: the ingest's ratings, movies, folds and lock, and row batches for
callers outside the store (``insert_columns``: precomputed recommendations). Every dialect-specific write lives
here, so ``recae.store.ingest`` and ``recae.serving`` only say what to write.

SQLite takes DBAPI ``executemany`` of tuples (ratings straight into an empty table, else through a staging table).
PostgreSQL takes binary ``COPY`` into a temporary staging table, then one set-based upsert that gives the same
final state as applying the upsert rule row by row (see ``_PostgresRatingsWriter``); a transaction-level advisory
lock makes a second concurrent ingest fail fast with LockHeldError instead of waiting (``lock_for_ingest``).
Any other database takes one portable upsert statement per rating.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection

from recae.errors import LockHeldError
from recae.store.db import POSTGRES_INGEST_LOCK, POSTGRES_LOCK_TIMEOUT_MS, is_postgresql, is_sqlite

if TYPE_CHECKING:
    from recae.store.parse import RatingsChunk

log = logging.getLogger(__name__)

# The last condition skips updates that change nothing, so that ``rows_loaded`` counts changed ratings, not lines
# (a file repeating one line a million times loads one rating); the final state is the same.
UPSERT_RATING_WHERE = (
    ' ON CONFLICT (user_id, movie_id) DO UPDATE SET rating = excluded.rating, "timestamp" = excluded."timestamp"'
    ' WHERE (excluded."timestamp" IS NULL OR ratings."timestamp" IS NULL'
    ' OR excluded."timestamp" >= ratings."timestamp")'
    ' AND (ratings.rating IS DISTINCT FROM excluded.rating'
    ' OR ratings."timestamp" IS DISTINCT FROM excluded."timestamp")'
)
UPSERT_MOVIE = text(
    "INSERT INTO movies (movie_id, title, year, genres) VALUES (:movie_id, :title, :year, :genres)"
    " ON CONFLICT (movie_id) DO UPDATE SET title = excluded.title, year = excluded.year, genres = excluded.genres"
)
ADD_UNTITLED_MOVIE = text(
    "INSERT INTO movies (movie_id, genres) VALUES (:movie_id, '') ON CONFLICT (movie_id) DO NOTHING"
)
ADD_FOLD_TEST = text(
    "INSERT INTO fold_tests (split, user_id, movie_id) VALUES (:split, :user_id, :movie_id)"
    " ON CONFLICT (split, user_id, movie_id) DO NOTHING"
)


class _RatingsWriter:
    """Portable path: one upsert statement per rating through SQLAlchemy (engines without a bulk path).

    ``prepare`` turns a parsed chunk into what ``add`` writes; it runs in the prefetch thread, so it must not
    touch the connection. ``add`` returns the ratings inserted or changed so far, ``finish`` the rest.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.statement = text('INSERT INTO ratings (user_id, movie_id, rating, "timestamp")'
                              ' VALUES (:u, :m, :r, :t)' + UPSERT_RATING_WHERE)

    def prepare(self, chunk: RatingsChunk) -> object:
        return list(chunk.rows())

    def add(self, rows: list[tuple[int, int, float, int | None]]) -> int:  # type: ignore[override]
        params = [{"u": u, "m": m, "r": r, "t": t} for u, m, r, t in rows]
        return self.conn.execute(self.statement, params).rowcount if params else 0

    def finish(self) -> int:
        return 0

    def close(self) -> None:
        """Undo per-connection settings (the connection goes back to the pool)."""

    def __enter__(self) -> _RatingsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SqliteRatingsWriter(_RatingsWriter):
    """SQLite fast path: DBAPI executemany of tuples straight into an empty ``ratings`` table, else into a
    temporary staging table followed by one ``INSERT ... SELECT ... ON CONFLICT`` in file order.
    A bigger page cache during the load; synchronous and journal settings (durability) stay as they are."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.dbapi = conn.connection.driver_connection
        self.cursor = self.dbapi.cursor()
        self.old_cache = self.cursor.execute("PRAGMA cache_size").fetchone()[0]
        self.cursor.execute("PRAGMA cache_size=-262144")  # 256 MiB for this connection, restored in close()
        self.direct = self.cursor.execute("SELECT 1 FROM ratings LIMIT 1").fetchone() is None
        columns = 'INSERT INTO {} (user_id, movie_id, rating, "timestamp")'
        if self.direct:
            self.sql = columns.format("ratings") + " VALUES (?, ?, ?, ?)" + UPSERT_RATING_WHERE
        else:
            self.cursor.execute('CREATE TEMP TABLE IF NOT EXISTS recae_staging (user_id INTEGER NOT NULL,'
                                ' movie_id INTEGER NOT NULL, rating REAL NOT NULL, "timestamp" INTEGER)')
            self.cursor.execute("DELETE FROM recae_staging")
            self.sql = columns.format("recae_staging") + " VALUES (?, ?, ?, ?)"

    def add(self, rows: list[tuple[int, int, float, int | None]]) -> int:
        self.cursor.executemany(self.sql, rows)
        return self.cursor.rowcount if self.direct else 0

    def finish(self) -> int:
        changed = 0
        if not self.direct:
            self.cursor.execute('INSERT INTO ratings (user_id, movie_id, rating, "timestamp")'
                                ' SELECT user_id, movie_id, rating, "timestamp" FROM recae_staging WHERE true'
                                " ORDER BY rowid" + UPSERT_RATING_WHERE)
            changed = self.cursor.rowcount
            self.cursor.execute("DROP TABLE recae_staging")
        return changed

    def close(self) -> None:
        self.cursor.execute(f"PRAGMA cache_size={int(self.old_cache):d}")
        self.cursor.close()


#: Binary COPY framing (PostgreSQL docs, "Binary Format"): signature, flags, header extension length; trailer.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
#: One staging tuple in binary COPY form: field count, then (byte length, big-endian value) per column.
_STAGING_TUPLE = np.dtype([
    ("fields", ">i2"), ("seq_len", ">i4"), ("seq", ">i8"), ("user_len", ">i4"), ("user_id", ">i4"),
    ("movie_len", ">i4"), ("movie_id", ">i4"), ("rating_len", ">i4"), ("rating", ">f8"),
    ("ts_len", ">i4"), ("ts", ">i8"),
])
_STAGING_LENGTHS = {"fields": 5, "seq_len": 8, "user_len": 4, "movie_len": 4, "rating_len": 8, "ts_len": 8}

# Final state per (user_id, movie_id) of applying the upsert rule row by row in file order (seq), in one pass.
# With ``u`` the position of the key's last unknown timestamp (0 in staging) in the file:
#   no unknown:             the row with the highest timestamp wins (the later on ties), then meets the stored
#                           rating under the usual rule;
#   the last row unknown:   it wins, whatever is stored;
#   unknown, then known:    the highest timestamp after ``u`` wins (later on ties), whatever is stored.
# ``reset`` marks the last two cases, which replace the stored rating unconditionally.
_PG_WINNERS_SQL = """
CREATE TEMP TABLE recae_winners ON COMMIT DROP AS
SELECT DISTINCT ON (user_id, movie_id) user_id, movie_id, rating, ts, last_unknown IS NOT NULL AS reset
FROM (
    SELECT s.*, max(CASE WHEN ts = 0 THEN seq END) OVER key_rows AS last_unknown, max(seq) OVER key_rows AS last_seq
    FROM recae_staging s
    WINDOW key_rows AS (PARTITION BY user_id, movie_id)
) marked
WHERE last_unknown IS NULL OR seq > last_unknown OR (seq = last_seq AND last_unknown = last_seq)
ORDER BY user_id, movie_id, ts DESC, seq DESC
"""
_PG_INSERT_RATINGS = ('INSERT INTO ratings (user_id, movie_id, rating, "timestamp")'
                      " SELECT user_id, movie_id, rating, NULLIF(ts, 0) FROM {source}")
_PG_REPLACE = (' ON CONFLICT (user_id, movie_id) DO UPDATE SET rating = excluded.rating,'
               ' "timestamp" = excluded."timestamp" WHERE ratings.rating IS DISTINCT FROM excluded.rating'
               ' OR ratings."timestamp" IS DISTINCT FROM excluded."timestamp"')


class _PostgresRatingsWriter(_RatingsWriter):
    """PostgreSQL path: binary ``COPY`` of each block into a temporary staging table through psycopg's raw
    connection (inside the ingest's transaction), then one ``INSERT ... SELECT ... ON CONFLICT``.

    Into an empty ``ratings`` table a plain ``INSERT`` (no conflict handling) is about 1.5x faster.
    PostgreSQL refuses to update one row twice in a statement, so a file rating the same movie twice for a
    user cannot go through either; that case (found when the statement fails, inside a savepoint) first
    reduces the staged rows to one per key with ``_PG_WINNERS_SQL``, giving the same final state as SQLite's
    row-by-row upsert. Staging holds unknown timestamps as 0 so that every tuple has a fixed width.
    """

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        self.direct = self.cursor.execute("SELECT 1 FROM ratings LIMIT 1").fetchone() is None
        self.cursor.execute("CREATE TEMP TABLE recae_staging (seq bigint NOT NULL, user_id integer NOT NULL,"
                            " movie_id integer NOT NULL, rating double precision NOT NULL, ts bigint NOT NULL)"
                            " ON COMMIT DROP")
        self.next_seq = 0  # touched only by prepare(), which runs in one thread in file order

    def prepare(self, chunk: RatingsChunk) -> np.ndarray:
        tuples = np.empty(chunk.user_id.size, dtype=_STAGING_TUPLE)
        for name, length in _STAGING_LENGTHS.items():
            tuples[name] = length
        tuples["seq"] = np.arange(self.next_seq, self.next_seq + tuples.size)
        self.next_seq += tuples.size
        tuples["user_id"] = chunk.user_id
        tuples["movie_id"] = chunk.movie_id
        tuples["rating"] = chunk.rating
        tuples["ts"] = np.nan_to_num(chunk.timestamp, nan=0.0).astype(np.int64)
        return tuples

    def add(self, tuples: np.ndarray) -> int:  # type: ignore[override]
        if tuples.size:
            with self.cursor.copy("COPY recae_staging FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(_COPY_SIGNATURE)
                copy.write(memoryview(tuples).cast("B"))
                copy.write(_COPY_TRAILER)
        return 0

    def finish(self) -> int:
        import psycopg

        self.cursor.execute("SAVEPOINT recae_upsert")
        try:
            changed = self.cursor.execute(_PG_INSERT_RATINGS.format(source="recae_staging")
                                          + ("" if self.direct else UPSERT_RATING_WHERE)).rowcount
        except (psycopg.errors.CardinalityViolation, psycopg.errors.UniqueViolation):  # repeated (user, movie)
            self.cursor.execute("ROLLBACK TO SAVEPOINT recae_upsert")
            log.info("the file repeats some (user, movie) pairs; reducing them in file order")
            self.cursor.execute(_PG_WINNERS_SQL)
            changed = self.cursor.execute(
                _PG_INSERT_RATINGS.format(source="recae_winners WHERE NOT reset") + UPSERT_RATING_WHERE).rowcount
            changed += self.cursor.execute(
                _PG_INSERT_RATINGS.format(source="recae_winners WHERE reset") + _PG_REPLACE).rowcount
        self.cursor.execute("RELEASE SAVEPOINT recae_upsert")
        return changed

    def close(self) -> None:
        self.cursor.close()


def ratings_writer(conn: Connection) -> _RatingsWriter:
    """The fastest writer this connection's dialect allows; use it as a context manager."""
    if is_sqlite(conn.engine):
        return _SqliteRatingsWriter(conn)
    if is_postgresql(conn.engine):
        return _PostgresRatingsWriter(conn)
    return _RatingsWriter(conn)


def _pg_stage(conn: Connection, table: str, columns: str, rows: Iterable[Sequence[object]]) -> None:
    """COPY ``rows`` into a new temporary table (dropped at commit). ``table``/``columns`` are constants."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"CREATE TEMP TABLE {table} ({columns}) ON COMMIT DROP")
        with cursor.copy(f"COPY {table} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    finally:
        cursor.close()


def upsert_movies(conn: Connection, movies: list[dict[str, object]]) -> None:
    """Catalogue rows in; for a movie listed twice the later line wins (as row-by-row upserts would)."""
    if not is_postgresql(conn.engine):
        conn.execute(UPSERT_MOVIE, movies)
        return
    _pg_stage(conn, "recae_movies_in", "seq bigint, movie_id integer, title text, year integer, genres text",
              ((i, m["movie_id"], m["title"], m["year"], m["genres"]) for i, m in enumerate(movies)))
    conn.execute(text(
        "INSERT INTO movies (movie_id, title, year, genres) SELECT DISTINCT ON (movie_id) movie_id, title, year,"
        " genres FROM recae_movies_in ORDER BY movie_id, seq DESC"
        " ON CONFLICT (movie_id) DO UPDATE SET title = excluded.title, year = excluded.year, genres = excluded.genres"
    ))


def add_untitled_movies(conn: Connection, movie_ids: list[int]) -> None:
    """Catalogue rows with a NULL title for rated movies not listed yet; listed movies stay as they are."""
    if not is_postgresql(conn.engine):
        conn.execute(ADD_UNTITLED_MOVIE, [{"movie_id": m} for m in movie_ids])
        return
    _pg_stage(conn, "recae_rated_movies", "movie_id integer", ((m,) for m in movie_ids))
    conn.execute(text("INSERT INTO movies (movie_id, genres) SELECT movie_id, '' FROM recae_rated_movies"
                      " ON CONFLICT (movie_id) DO NOTHING"))


def add_fold_tests(conn: Connection, folds: list[dict[str, object]]) -> None:
    """The release's canonical test folds (split, user_id, movie_id); pairs already stored stay."""
    if not is_postgresql(conn.engine):
        conn.execute(ADD_FOLD_TEST, folds)
        return
    _pg_stage(conn, "recae_folds_in", "split text, user_id integer, movie_id integer",
              ((f["split"], f["user_id"], f["movie_id"]) for f in folds))
    conn.execute(text("INSERT INTO fold_tests (split, user_id, movie_id) SELECT split, user_id, movie_id"
                      " FROM recae_folds_in ON CONFLICT (split, user_id, movie_id) DO NOTHING"))


def lock_for_ingest(conn: Connection, source: str) -> None:
    """First statement of an ingest's transaction. PostgreSQL: take the ingest lock or fail at once
    (LockHeldError), and bound waits for row locks. SQLite needs nothing here: the ingest's first statement
    writes, which takes its write lock (waits bounded by the busy timeout)."""
    if not is_postgresql(conn.engine):
        return
    if not conn.execute(select(func.pg_try_advisory_xact_lock(POSTGRES_INGEST_LOCK))).scalar_one():
        raise LockHeldError(busy_message(source))
    conn.execute(select(func.set_config("lock_timeout", f"{POSTGRES_LOCK_TIMEOUT_MS:d}ms", True)))


def busy_message(source: str) -> str:
    """The one-line LockHeldError message (exit 75) of an ingest that found the store busy."""
    return (f"{source}: the store is busy (another ingest or retrain is writing); nothing was loaded, "
            "try again when it finishes")


#: Column name -> the values of one batch of rows; a column may be endless (``itertools.repeat``) if another is not.
Columns = Mapping[str, Iterable[object]]


def insert_columns(conn: Connection, table: Any, columns: Columns) -> None:
    """One batch of rows into ``table`` (an ORM class or Table) in the caller's transaction: tuples on SQLite
    (2x the rows/s of dicts), else dicts."""
    if is_sqlite(conn) and conn.dialect.positional:
        _insert_positional(conn, table, columns)
    else:
        _insert_mappings(conn, table, columns)


def _insert_positional(conn: Connection, table: Any, columns: Columns) -> None:
    """The Core INSERT compiled for the dialect, run as one DBAPI executemany of tuples (bound parameters)."""
    compiled = insert(table).compile(dialect=conn.dialect, column_keys=list(columns))
    rows = list(zip(*(columns[key] for key in compiled.positiontup), strict=False))  # repeat() is endless
    conn.exec_driver_sql(str(compiled), rows)


def _insert_mappings(conn: Connection, table: Any, columns: Columns) -> None:
    """The portable Core executemany of dicts (SQLAlchemy batches it into multi-row INSERTs on PostgreSQL)."""
    keys = list(columns)
    rows = [dict(zip(keys, row, strict=True)) for row in zip(*(columns[k] for k in keys), strict=False)]
    conn.execute(insert(table), rows)
