"""Load MovieLens datasets and plain ratings files into the store: validated, all or nothing, idempotent.

One file is one transaction: the ``ingest_runs`` row, the movies, every rating and (ml-100k) the canonical
test folds commit together, so a failed or killed ingest leaves the store as it was. A file whose sha256 has
a succeeded run is skipped. Ratings upsert by (user_id, movie_id) with this rule, applied row by row in file
order::

    keep the new rating  iff  new.timestamp IS NULL or old.timestamp IS NULL or new.timestamp >= old.timestamp

i.e. the newer timestamp wins; with equal or unknown timestamps (0 or missing -> NULL) the later one wins.

Ratings are parsed in blocks of whole lines with pandas' C parser (explicit dtypes) and checked with numpy;
a block that does not parse cleanly is re-read line by line, so every reject names its exact file and line.

Writing: SQLite takes DBAPI ``executemany`` of tuples (straight into an empty table, else through a staging
table). PostgreSQL takes binary ``COPY`` into a temporary staging table, then one set-based upsert that gives
the same final state as applying the rule row by row (see ``_PostgresRatingsWriter``); a transaction-level
advisory lock makes a second concurrent ingest fail fast with LockHeldError instead of waiting.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import pandas as pd
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine

from recae.errors import DataError, LockHeldError
from recae.store.datasets import DatasetFormat, DataSource, RatingScale, fetch, get_format, sha256_file
from recae.store.db import (
    POSTGRES_INGEST_LOCK,
    POSTGRES_LOCK_TIMEOUT_MS,
    IngestRun,
    is_lock_timeout,
    is_postgresql,
    is_sqlite,
    utcnow,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ID = 2**31 - 1  # ids must fit a 32-bit INTEGER (PostgreSQL)
MAX_TIMESTAMP = 2**53
BLOCK_BYTES = 16 << 20  # ~700k ratings lines per parsed block
#: Longest ratings line read (MovieLens lines are under 64 bytes): a file without line breaks is refused after this
#: many bytes instead of being held whole in memory (a 157 KB zip can expand to a 100 MB line-less u.data).
MAX_LINE_BYTES = 1 << 16
REJECTS_KEPT = 10
PLAIN = "ratings-csv"

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
YEAR_AT_END = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{4})?\)\s*$")


@dataclass(frozen=True)
class Reject:
    """One refused input line."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file} line {self.line}: {self.reason}"


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did. ``rows_loaded`` counts ratings inserted or changed (an older one is kept out);
    ``movies_untitled`` counts catalogue rows created with a NULL title for rated movies not in a catalogue."""

    dataset: str
    source: str
    sha256: str
    rows_read: int
    rows_loaded: int
    rows_rejected: int
    movies_loaded: int
    already_ingested: bool
    rejects: tuple[Reject, ...]
    seconds: float
    movies_untitled: int = 0
    fold_tests_loaded: int = 0


@dataclass
class _RejectLog:
    skip_bad: bool
    count: int = 0
    first: list[Reject] = field(default_factory=list)

    def add(self, reject: Reject) -> None:
        """Keep the reject under --skip-bad; otherwise it ends the ingest."""
        if not self.skip_bad:
            raise DataError(str(reject))
        self.count += 1
        if len(self.first) < REJECTS_KEPT:
            self.first.append(reject)


@dataclass(frozen=True)
class RatingsLayout:
    """How to read one ratings file: separator, number of fields, scale, and whether a timestamp is required."""

    label: str
    sep: str
    n_fields: int
    scale: RatingScale
    timestamp_required: bool


@dataclass(frozen=True)
class _Chunk:
    user_id: np.ndarray  # (n,) int64
    movie_id: np.ndarray  # (n,) int64
    rating: np.ndarray  # (n,) float64
    timestamp: np.ndarray  # (n,) float64, NaN = unknown
    line: np.ndarray  # (n,) int64, the file line each rating came from (for messages about one rating)

    def rows(self) -> Iterator[tuple[int, int, float, int | None]]:
        """DBAPI tuples; timestamp None where unknown."""
        ts = self.timestamp
        unknown = np.isnan(ts)
        if unknown.any():
            ts_list = ts.astype(object)
            ts_list[unknown] = None
            ts_list[~unknown] = ts[~unknown].astype(np.int64).tolist()
            stamps = ts_list.tolist()
        else:
            stamps = ts.astype(np.int64).tolist()
        return zip(self.user_id.tolist(), self.movie_id.tolist(), self.rating.tolist(), stamps)


# --------------------------------------------------------------------------------------------- parsing


def _blocks(stream: BinaryIO, on_bytes: Callable[[int], None], label: str) -> Iterator[bytes]:
    """Whole-line blocks of about BLOCK_BYTES, each ending in a newline; DataError (nothing more read) when a line
    grows past MAX_LINE_BYTES, so memory stays bounded whatever the file holds."""
    rest = b""
    lines = 0
    while data := stream.read(BLOCK_BYTES):
        on_bytes(len(data))
        data = rest + data
        cut = data.rfind(b"\n") + 1
        if cut:
            lines += data.count(b"\n", 0, cut)
            yield data[:cut]
        rest = data[cut:]
        if len(rest) > MAX_LINE_BYTES:
            raise DataError(f"{label} line {lines + 1}: longer than {MAX_LINE_BYTES:,} bytes without a line break; "
                            "not a ratings file (one rating per line)")
    if rest:
        yield rest + b"\n"


def _fields(line: str, sep: str) -> list[str]:
    """The fields of one line; ValueError saying why when it is not a line of ``sep``-separated values."""
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"the line is longer than {MAX_LINE_BYTES:,} characters")
    if "\r" in line:
        raise ValueError("a carriage return inside the line (bare-CR line endings?); use LF or CRLF line endings")
    if sep == ",":
        try:
            return next(csv.reader([line]), [])
        except csv.Error as err:
            raise ValueError(f"not a CSV line ({err})") from None
    return line.split(sep)


def _is_number(value: str) -> bool:
    try:
        float(value.strip().strip('"'))
    except ValueError:
        return False
    return True


def _check_line(line: str, layout: RatingsLayout) -> tuple[int, int, float, float] | str:
    """Values of one ratings line, or the reason it is refused (the slow, exact path)."""
    try:
        parts = [p.strip() for p in _fields(line, layout.sep)]
    except ValueError as err:
        return str(err)
    n_ok = len(parts) == layout.n_fields or (len(parts) == 3 and not layout.timestamp_required)
    if not n_ok:
        expected = f"{layout.n_fields}" if layout.timestamp_required else "3 or 4"
        return f"expected {expected} fields separated by {layout.sep!r}, found {len(parts)}"
    ids = []
    for name, value in (("user id", parts[0]), ("movie id", parts[1])):
        if not re.fullmatch(r"\d+", value) or not 1 <= int(value) <= MAX_ID:
            return f"{name} {value!r} is not an integer in 1..{MAX_ID}"
        ids.append(int(value))
    try:
        rating = float(parts[2])
    except ValueError:
        return f"rating {parts[2]!r} is not a number"
    scale = layout.scale
    if not np.isfinite(rating) or not scale.low <= rating <= scale.high:
        return f"rating {parts[2]} is outside {scale.describe()}"
    steps = (rating - scale.low) / scale.step if scale.step else 0.0
    if abs(steps - round(steps)) > 1e-9:
        return f"rating {parts[2]} is not a step of {scale.step:g} on {scale.describe()}"
    stamp = parts[3] if len(parts) > 3 else ""
    if stamp == "":
        if layout.timestamp_required:
            return "timestamp is missing"
        return ids[0], ids[1], rating, float("nan")
    if not re.fullmatch(r"\d+", stamp) or int(stamp) >= MAX_TIMESTAMP:
        return f"timestamp {stamp!r} is not a whole number of seconds >= 0"
    return ids[0], ids[1], rating, float(stamp) if int(stamp) else float("nan")


def _slow_block(lines: list[str], first_line: int, layout: RatingsLayout, rejects: _RejectLog) -> tuple[_Chunk, int]:
    values: list[tuple[int, int, float, float]] = []
    numbers: list[int] = []
    n_read = 0
    for offset, line in enumerate(lines):
        if not line.strip():
            continue
        n_read += 1
        parsed = _check_line(line.rstrip("\r"), layout)
        if isinstance(parsed, str):
            rejects.add(Reject(layout.label, first_line + offset, parsed))
        else:
            values.append(parsed)
            numbers.append(first_line + offset)
    arr = np.array(values, dtype=np.float64).reshape(-1, 4)
    return _Chunk(arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2], arr[:, 3],
                  np.asarray(numbers, dtype=np.int64)), n_read


def _fast_block(block: bytes, n_lines: int, layout: RatingsLayout) -> pd.DataFrame | None:
    """The block parsed by pandas with explicit dtypes, or None when it needs the line-by-line path."""
    data, sep = (block.replace(b"::", b"\t"), "\t") if layout.sep == "::" else (block, layout.sep)
    dtypes = {0: np.int64, 1: np.int64, 2: np.float64, 3: np.float64}
    try:
        frame = pd.read_csv(io.BytesIO(data), sep=sep, header=None, dtype=dtypes, engine="c", quoting=csv.QUOTE_NONE,
                            skip_blank_lines=False)
    except (ValueError, pd.errors.ParserError, OverflowError):
        return None
    if len(frame) != n_lines or frame.shape[1] not in (layout.n_fields, 3 if not layout.timestamp_required else -1):
        return None
    return frame


def _valid_mask(user: np.ndarray, movie: np.ndarray, rating: np.ndarray, ts: np.ndarray,
                layout: RatingsLayout) -> np.ndarray:
    """Vectorised form of ``_check_line``: True where a row is acceptable."""
    scale = layout.scale
    ok = (user >= 1) & (user <= MAX_ID) & (movie >= 1) & (movie <= MAX_ID)
    with np.errstate(invalid="ignore"):
        ok &= np.isfinite(rating) & (rating >= scale.low) & (rating <= scale.high)
        if scale.step is not None:
            steps = (rating - scale.low) / scale.step
            ok &= np.abs(steps - np.round(steps)) <= 1e-9
        known = ~np.isnan(ts)
        ok &= ~known | ((ts >= 0) & (ts < MAX_TIMESTAMP) & (ts == np.floor(ts)))
    if layout.timestamp_required:
        ok &= known
    return ok


def read_ratings(stream: BinaryIO, layout: RatingsLayout, rejects: _RejectLog, *, header: bool | None,
                 on_bytes: Callable[[int], None] = lambda n: None) -> Iterator[tuple[_Chunk, int]]:
    """Yield (valid ratings, lines read) per block. ``header`` None: a first line whose id is not a number."""
    next_line = 1
    for block in _blocks(stream, on_bytes, layout.label):
        if next_line == 1:
            block = block.removeprefix(b"\xef\xbb\xbf")
            first = block.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r").strip()
            try:
                looks_like_header = not any(_is_number(f) for f in _fields(first, layout.sep))
            except ValueError as err:
                raise DataError(f"{layout.label} line 1: {err}") from None
            if header and not looks_like_header:
                raise DataError(f"{layout.label} line 1: expected a header line, found {first[:80]!r}")
            if header or (header is None and looks_like_header):
                block = block.split(b"\n", 1)[1]
                next_line = 2
        n_lines = block.count(b"\n")
        if n_lines == 0:
            continue
        frame = _fast_block(block, n_lines, layout)
        if frame is None:
            lines = block.decode("utf-8", "replace").split("\n")[:n_lines]
            yield _slow_block(lines, next_line, layout, rejects)
        else:
            user, movie, rating = (frame[i].to_numpy() for i in range(3))
            ts = frame[3].to_numpy() if frame.shape[1] > 3 else np.full(len(frame), np.nan)
            ok = _valid_mask(user, movie, rating, ts, layout)
            if not ok.all():
                lines = block.split(b"\n")
                for row in np.flatnonzero(~ok):
                    reason = _check_line(lines[row].decode("utf-8", "replace").rstrip("\r"), layout)
                    rejects.add(Reject(layout.label, next_line + int(row), reason if isinstance(reason, str)
                                       else "value out of range"))
            ts = np.where(ts == 0, np.nan, ts)
            yield _Chunk(user[ok], movie[ok], rating[ok], ts[ok], next_line + np.flatnonzero(ok)), n_lines
        next_line += n_lines


def parse_year(title: str) -> int | None:
    """Year from a title ending in ``(1995)``; None when absent. The title itself is kept as is."""
    match = YEAR_AT_END.search(title)
    return int(match.group(1)) if match else None


def read_movies(source: DataSource, fmt: DatasetFormat, rejects: _RejectLog) -> list[dict[str, object]]:
    """Catalogue rows (movie_id, title, year, genres) from the dataset's movies file."""
    genre_names: list[str] = []
    if fmt.genre_file:
        with source.open(fmt.genre_file) as stream:
            for line in stream.read().decode(fmt.encoding).splitlines():
                if line.strip():
                    genre_names.append(line.rsplit("|", 1)[0])
    with source.open(fmt.movies_file) as stream:
        content = stream.read().decode(fmt.encoding)
    if fmt.movies_kind == "csv":
        records: Iterator[list[str]] = csv.reader(io.StringIO(content, newline=""))
    else:
        records = (line.rstrip("\r").split(fmt.movies_sep) if line.strip() else [] for line in content.split("\n"))
    movies: list[dict[str, object]] = []
    expected = 5 + len(genre_names) if fmt.movies_kind == "item" else 3
    for number, parts in enumerate(records, start=1):
        if not parts or (number == 1 and fmt.header):
            continue
        if len(parts) != expected:
            rejects.add(Reject(fmt.movies_file, number, f"expected {expected} fields, found {len(parts)}"))
            continue
        if not parts[0].isdigit() or not 1 <= int(parts[0]) <= MAX_ID:
            rejects.add(Reject(fmt.movies_file, number, f"movie id {parts[0]!r} is not an integer in 1..{MAX_ID}"))
            continue
        if fmt.movies_kind == "item":
            genres = "|".join(name for name, flag in zip(genre_names, parts[5:]) if flag.strip() == "1")
        else:
            genres = parts[2]
        movies.append({"movie_id": int(parts[0]), "title": parts[1], "year": parse_year(parts[1]), "genres": genres})
    return movies


# --------------------------------------------------------------------------------------------- writing


class _RatingsWriter:
    """Portable path: one upsert statement per rating through SQLAlchemy (engines without a bulk path).

    ``prepare`` turns a parsed chunk into what ``add`` writes; it runs in the prefetch thread, so it must not
    touch the connection. ``add`` returns the ratings inserted or changed so far, ``finish`` the rest.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.statement = text('INSERT INTO ratings (user_id, movie_id, rating, "timestamp")'
                              ' VALUES (:u, :m, :r, :t)' + UPSERT_RATING_WHERE)

    def prepare(self, chunk: _Chunk) -> object:
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

    def prepare(self, chunk: _Chunk) -> np.ndarray:
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


def _writer(conn: Connection) -> _RatingsWriter:
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


def _upsert_movies(conn: Connection, movies: list[dict[str, object]]) -> None:
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


def _add_untitled_movies(conn: Connection, movie_ids: list[int]) -> None:
    if not is_postgresql(conn.engine):
        conn.execute(ADD_UNTITLED_MOVIE, [{"movie_id": m} for m in movie_ids])
        return
    _pg_stage(conn, "recae_rated_movies", "movie_id integer", ((m,) for m in movie_ids))
    conn.execute(text("INSERT INTO movies (movie_id, genres) SELECT movie_id, '' FROM recae_rated_movies"
                      " ON CONFLICT (movie_id) DO NOTHING"))


def _add_fold_tests(conn: Connection, folds: list[dict[str, object]]) -> None:
    if not is_postgresql(conn.engine):
        conn.execute(ADD_FOLD_TEST, folds)
        return
    _pg_stage(conn, "recae_folds_in", "split text, user_id integer, movie_id integer",
              ((f["split"], f["user_id"], f["movie_id"]) for f in folds))
    conn.execute(text("INSERT INTO fold_tests (split, user_id, movie_id) SELECT split, user_id, movie_id"
                      " FROM recae_folds_in ON CONFLICT (split, user_id, movie_id) DO NOTHING"))


def _pg_lock_for_ingest(conn: Connection, source: str) -> None:
    """First statement of a PostgreSQL ingest: take the ingest lock or fail at once; bound waits for row locks."""
    if not conn.execute(select(func.pg_try_advisory_xact_lock(POSTGRES_INGEST_LOCK))).scalar_one():
        raise LockHeldError(_busy_message(source))
    conn.execute(select(func.set_config("lock_timeout", f"{POSTGRES_LOCK_TIMEOUT_MS:d}ms", True)))


def _busy_message(source: str) -> str:
    return (f"{source}: the store is busy (another ingest or retrain is writing); nothing was loaded, "
            "try again when it finishes")


# --------------------------------------------------------------------------------------------- orchestration


@dataclass(frozen=True)
class _Plan:
    """What to load from one source, and the ingest's identity."""

    dataset: str
    source: str
    sha256: str
    open_ratings: Callable[[ExitStack], BinaryIO]
    ratings_size: int
    layout: RatingsLayout
    header: bool | None
    movies: Callable[[_RejectLog], list[dict[str, object]]] | None = None
    folds: Callable[[_RejectLog], list[dict[str, object]]] | None = None


_END = object()


def _prefetch(items: Iterator[T]) -> Iterator[T]:
    """Yield ``items``, computing the next one in a worker thread meanwhile: parsing block n+1 overlaps the
    database writing block n (sqlite3 releases the GIL while it steps). Errors surface in order."""
    with ThreadPoolExecutor(1, thread_name_prefix="recae-ingest") as pool:
        future = pool.submit(next, items, _END)
        while (item := future.result()) is not _END:
            future = pool.submit(next, items, _END)
            yield item  # type: ignore[misc]


class _AlreadyIngested(Exception):
    """Raised inside the transaction to roll it back when a concurrent run already loaded the file."""


def _succeeded_run(conn: Connection, sha256: str) -> bool:
    query = select(IngestRun.id).where(IngestRun.sha256 == sha256, IngestRun.status == "succeeded").limit(1)
    return conn.execute(query).first() is not None


def _progress(enabled: bool, label: str, total: int):  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn(f"ingest {label}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not (enabled and console.is_terminal))


def _run(engine: Engine, plan: _Plan, skip_bad: bool, progress: bool) -> IngestReport:
    started = time.perf_counter()

    def report(**counts: object) -> IngestReport:
        base = dict(dataset=plan.dataset, source=plan.source, sha256=plan.sha256, rows_read=0, rows_loaded=0,
                    rows_rejected=0, movies_loaded=0, already_ingested=False, rejects=())
        base.update(counts)
        return IngestReport(**base, seconds=round(time.perf_counter() - started, 3))  # type: ignore[arg-type]

    with engine.connect() as conn:
        if _succeeded_run(conn, plan.sha256):
            log.info("%s: already ingested (sha256 %s)", plan.source, plan.sha256)
            return report(already_ingested=True)
    rejects = _RejectLog(skip_bad)
    try:
        with engine.begin() as conn, ExitStack() as stack:
            if is_postgresql(conn.engine):
                _pg_lock_for_ingest(conn, plan.source)
            # The first statement writes, so SQLite takes the write lock before anything is read.
            run_id = conn.execute(insert(IngestRun).values(
                dataset=plan.dataset, source=plan.source, sha256=plan.sha256, status="running", rows_read=0,
                rows_loaded=0, rows_rejected=0, started_at=utcnow())).inserted_primary_key[0]
            if _succeeded_run(conn, plan.sha256):
                raise _AlreadyIngested  # another process finished the same file meanwhile; roll back our row
            movies = plan.movies(rejects) if plan.movies else []
            if movies:
                _upsert_movies(conn, movies)
            bar = stack.enter_context(_progress(progress, plan.source, plan.ratings_size))
            task = bar.add_task("ratings", total=plan.ratings_size)
            writer = stack.enter_context(_writer(conn))
            rows_read = rows_loaded = 0
            rated_movies: set[int] = set()
            stream = plan.open_ratings(stack)
            blocks = read_ratings(stream, plan.layout, rejects, header=plan.header,
                                  on_bytes=lambda n: bar.advance(task, n))
            for n_read, payload, movie_ids in _prefetch((n, writer.prepare(c), np.unique(c.movie_id))
                                                        for c, n in blocks):
                rows_read += n_read
                rows_loaded += writer.add(payload)
                rated_movies.update(movie_ids.tolist())
                log.debug("%s: %d lines read, %d ratings written so far (uncommitted)", plan.source, rows_read,
                          rows_loaded)
            rows_loaded += writer.finish()
            folds = plan.folds(rejects) if plan.folds else []
            if folds:
                _add_fold_tests(conn, folds)
            before = conn.execute(text("SELECT COUNT(*) FROM movies")).scalar_one()
            if rated_movies:
                _add_untitled_movies(conn, sorted(rated_movies))
            untitled = conn.execute(text("SELECT COUNT(*) FROM movies")).scalar_one() - before
            conn.execute(update(IngestRun).where(IngestRun.id == run_id).values(
                status="succeeded", rows_read=rows_read, rows_loaded=rows_loaded, rows_rejected=rejects.count,
                finished_at=utcnow(), message=f"{untitled} untitled movies added" if untitled else None))
    except _AlreadyIngested:
        return report(already_ingested=True)
    except DataError as err:
        _record_failure(engine, plan, str(err))
        raise
    except Exception as err:
        if is_lock_timeout(err):
            raise LockHeldError(_busy_message(plan.source)) from None
        raise
    if untitled:
        log.warning("%s: %d rated movies were not in the catalogue; added with NULL title", plan.source, untitled)
    return report(rows_read=rows_read, rows_loaded=rows_loaded, rows_rejected=rejects.count,
                  movies_loaded=len(movies), rejects=tuple(rejects.first), movies_untitled=untitled,
                  fold_tests_loaded=len(folds))


def _record_failure(engine: Engine, plan: _Plan, message: str) -> None:
    """Best effort: note the failed attempt (the data transaction itself was rolled back)."""
    try:
        with engine.begin() as conn:
            conn.execute(insert(IngestRun).values(
                dataset=plan.dataset, source=plan.source, sha256=plan.sha256, status="failed", rows_read=0,
                rows_loaded=0, rows_rejected=0, message=message[:2000], started_at=utcnow(), finished_at=utcnow()))
    except Exception:  # noqa: BLE001 - never hide the original error behind a logging failure
        log.exception("could not record the failed ingest")


def ingest_dataset(engine: Engine, name: str, path: str | Path | None = None, *, downloads_dir: Path,
                   skip_bad: bool = False, progress: bool = False) -> IngestReport:
    """Ingest a MovieLens release from its zip or extracted folder (``path``), else download it by name.

    Args:
        engine: a migrated store (``db.open_store``).
        name: one of ``datasets.FORMATS`` (``ml-100k``, ``ml-1m``, ..., ``ml-latest-small``).
        path: the GroupLens zip or a folder holding its files; None downloads into ``downloads_dir``.
        skip_bad: load the good rows and report rejects instead of failing on the first bad line.
        progress: show a progress bar on stderr (when it is a terminal).

    Raises:
        DataError: a malformed line or unsafe archive (nothing is loaded); DownloadError when offline.
    """
    fmt = get_format(name)
    archive = Path(path).expanduser() if path is not None else fetch(fmt, downloads_dir).path
    with DataSource(archive) as source:
        used = [fmt.ratings_file, fmt.movies_file, *([fmt.genre_file] if fmt.genre_file else []),
                *(member for _, member in fmt.fold_files)]
        layout = RatingsLayout(fmt.ratings_file, fmt.sep, 4, fmt.scale, timestamp_required=True)

        def folds(rejects: _RejectLog) -> list[dict[str, object]]:
            rows: list[dict[str, object]] = []
            for split, member in fmt.fold_files:
                if source.has(member):
                    with source.open(member) as stream:
                        fold_layout = RatingsLayout(member, fmt.sep, 4, fmt.scale, timestamp_required=True)
                        for chunk, _ in read_ratings(stream, fold_layout, rejects, header=False):
                            rows.extend({"split": split, "user_id": u, "movie_id": m}
                                        for u, m in zip(chunk.user_id.tolist(), chunk.movie_id.tolist()))
            return rows

        plan = _Plan(
            dataset=fmt.name, source=str(archive), sha256=source.fingerprint(used),
            open_ratings=lambda stack: stack.enter_context(source.open(fmt.ratings_file)),
            ratings_size=source.size(fmt.ratings_file), layout=layout, header=fmt.header,
            movies=lambda rejects: read_movies(source, fmt, rejects), folds=folds if fmt.fold_files else None,
        )
        return _run(engine, plan, skip_bad, progress)


def ingest_ratings_file(engine: Engine, path: str | Path, *, scale: tuple[float, float] = (0.5, 5.0),
                        step: float | None = 0.5, skip_bad: bool = False, progress: bool = False) -> IngestReport:
    """Ingest a plain ``user_id,movie_id,rating[,timestamp]`` CSV (header optional): new ratings from production.

    Movies not yet in the catalogue are added with a NULL title (``IngestReport.movies_untitled``).

    Args:
        scale: allowed (low, high) ratings; ``step`` the allowed increment from ``low`` (None: any value).
    """
    low, high = float(scale[0]), float(scale[1])
    if not low < high:
        raise DataError(f"rating scale {low:g}..{high:g} is empty; give LOW < HIGH")
    file, layout = _plain_file(path, RatingScale(low, high, step))
    plan = _Plan(dataset=PLAIN, source=str(file), sha256=sha256_file(file),
                 open_ratings=lambda stack: stack.enter_context(open(file, "rb")),
                 ratings_size=file.stat().st_size, layout=layout, header=None)
    return _run(engine, plan, skip_bad, progress)


def _plain_file(path: str | Path, scale: RatingScale) -> tuple[Path, RatingsLayout]:
    """The file and its layout after a look at line 1: DataError unless it is a 3- or 4-field CSV."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    with open(file, "rb") as probe:
        first = probe.readline(MAX_LINE_BYTES + 1).removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace")
    try:
        n_fields = len(_fields(first.rstrip("\r\n").strip(), ","))
    except ValueError as err:
        raise DataError(f"{file.name} line 1: {err}") from None
    if n_fields not in (3, 4):
        raise DataError(f"{file.name} line 1: expected user_id,movie_id,rating[,timestamp], found {n_fields} fields")
    return file, RatingsLayout(file.name, ",", 4, scale, timestamp_required=False)


#: Held-out files are compared with stored ratings or predictions, not stored: any finite rating parses.
ANY_RATING = RatingScale(-float("inf"), float("inf"), None)


@dataclass(frozen=True)
class RatingsFile:
    """A plain ratings CSV read whole but not stored (a held-out test set): one entry per rating, in file order."""

    path: Path
    sha256: str
    user_ids: np.ndarray  # (n,) int64
    movie_ids: np.ndarray  # (n,) int64
    ratings: np.ndarray  # (n,) float64
    lines: np.ndarray  # (n,) int64, the line each rating is on

    @property
    def label(self) -> str:
        return self.path.name

    def where(self, k: int) -> str:
        """``FILE line N: user U movie M`` for entry ``k``: how a message names one pair."""
        return f"{self.label} line {int(self.lines[k])}: user {int(self.user_ids[k])} movie {int(self.movie_ids[k])}"


def read_ratings_file(path: str | Path) -> RatingsFile:
    """Parse a ``user_id,movie_id,rating[,timestamp]`` CSV exactly as ``ingest --ratings`` does (header optional,
    same checks), without storing it. Timestamps are read and dropped. A pair listed twice is refused: a test set
    scores each pair once.

    Raises:
        DataError: the file is missing, a line is malformed, it holds no ratings, or it repeats a pair.
    """
    file, layout = _plain_file(path, ANY_RATING)
    sha256 = sha256_file(file)
    with open(file, "rb") as stream:
        chunks = [chunk for chunk, _ in read_ratings(stream, layout, _RejectLog(skip_bad=False), header=None)]
    users, movies, ratings, lines = (np.concatenate([getattr(c, name) for c in chunks]) if chunks
                                     else np.zeros(0, dtype) for name, dtype in
                                     (("user_id", np.int64), ("movie_id", np.int64), ("rating", np.float64),
                                      ("line", np.int64)))
    if users.size == 0:
        raise DataError(f"{file.name}: no ratings in the file; expected lines user_id,movie_id,rating")
    held = RatingsFile(path=file.resolve(), sha256=sha256, user_ids=users, movie_ids=movies, ratings=ratings,
                       lines=lines)
    order = np.lexsort((movies, users))
    repeated = np.flatnonzero((users[order][1:] == users[order][:-1]) & (movies[order][1:] == movies[order][:-1]))
    if repeated.size:
        later = np.maximum(order[repeated], order[repeated + 1])
        pick = int(np.argmin(later))  # the earliest line that repeats a pair
        first, again = int(np.minimum(order[repeated], order[repeated + 1])[pick]), int(later[pick])
        raise DataError(f"{held.where(again)} is listed twice (first on line {int(lines[first])}); "
                        "a test set lists each pair once")
    return held
