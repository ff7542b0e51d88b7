"""Load MovieLens datasets and plain ratings files into the store: validated, all or nothing, idempotent.

One file is one transaction: the ``ingest_runs`` row, the movies, every rating and (ml-100k) the canonical
test folds commit together, so a failed or killed ingest leaves the store as it was. A file whose sha256 has
a succeeded run is skipped. Ratings upsert by (user_id, movie_id) with this rule, applied row by row in file
order::

    keep the new rating  iff  new.timestamp IS NULL or old.timestamp IS NULL or new.timestamp >= old.timestamp

i.e. the newer timestamp wins; with equal or unknown timestamps (0 or missing -> NULL) the later one wins.

Ratings are parsed in blocks of whole lines with pandas' C parser (explicit dtypes) and checked with numpy;
a block that does not parse cleanly is re-read line by line, so every reject names its exact file and line.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import pandas as pd
from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from recae.datasets import DataSource, DatasetFormat, RatingScale, fetch, get_format, sha256_file
from recae.db import IngestRun, is_sqlite, utcnow
from recae.errors import DataError, LockHeldError

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ID = 2**31 - 1  # ids must fit a 32-bit INTEGER (PostgreSQL)
MAX_TIMESTAMP = 2**53
BLOCK_BYTES = 16 << 20  # ~700k ratings lines per parsed block
REJECTS_KEPT = 10
PLAIN = "ratings-csv"

UPSERT_RATING_WHERE = (
    ' ON CONFLICT (user_id, movie_id) DO UPDATE SET rating = excluded.rating, "timestamp" = excluded."timestamp"'
    ' WHERE excluded."timestamp" IS NULL OR ratings."timestamp" IS NULL'
    ' OR excluded."timestamp" >= ratings."timestamp"'
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


def _blocks(stream: BinaryIO, on_bytes: Callable[[int], None]) -> Iterator[bytes]:
    """Whole-line blocks of about BLOCK_BYTES, each ending in a newline."""
    rest = b""
    while data := stream.read(BLOCK_BYTES):
        on_bytes(len(data))
        data = rest + data
        cut = data.rfind(b"\n") + 1
        if cut:
            yield data[:cut]
        rest = data[cut:]
    if rest:
        yield rest + b"\n"


def _fields(line: str, sep: str) -> list[str]:
    if sep == ",":
        return next(csv.reader([line]), [])
    return line.split(sep)


def _is_number(value: str) -> bool:
    try:
        float(value.strip().strip('"'))
    except ValueError:
        return False
    return True


def _check_line(line: str, layout: RatingsLayout) -> tuple[int, int, float, float] | str:
    """Values of one ratings line, or the reason it is refused (the slow, exact path)."""
    parts = [p.strip() for p in _fields(line, layout.sep)]
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
    arr = np.array(values, dtype=np.float64).reshape(-1, 4)
    return _Chunk(arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2], arr[:, 3]), n_read


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
    for block in _blocks(stream, on_bytes):
        if next_line == 1:
            block = block.removeprefix(b"\xef\xbb\xbf")
            first = block.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
            looks_like_header = not any(_is_number(f) for f in _fields(first, layout.sep))
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
            yield _Chunk(user[ok], movie[ok], rating[ok], ts[ok]), n_lines
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
    """Portable path: one upsert statement per rating through SQLAlchemy (PostgreSQL, other engines)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.statement = text('INSERT INTO ratings (user_id, movie_id, rating, "timestamp")'
                              ' VALUES (:u, :m, :r, :t)' + UPSERT_RATING_WHERE)

    def add(self, rows: list[tuple[int, int, float, int | None]]) -> int:
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


def _writer(conn: Connection) -> _RatingsWriter:
    return _SqliteRatingsWriter(conn) if is_sqlite(conn.engine) else _RatingsWriter(conn)


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
            # The first statement writes, so SQLite takes the write lock before anything is read.
            run_id = conn.execute(insert(IngestRun).values(
                dataset=plan.dataset, source=plan.source, sha256=plan.sha256, status="running", rows_read=0,
                rows_loaded=0, rows_rejected=0, started_at=utcnow())).inserted_primary_key[0]
            if _succeeded_run(conn, plan.sha256):
                raise _AlreadyIngested  # another process finished the same file meanwhile; roll back our row
            movies = plan.movies(rejects) if plan.movies else []
            if movies:
                conn.execute(UPSERT_MOVIE, movies)
            bar = stack.enter_context(_progress(progress, plan.source, plan.ratings_size))
            task = bar.add_task("ratings", total=plan.ratings_size)
            writer = stack.enter_context(_writer(conn))
            rows_read = rows_loaded = 0
            rated_movies: set[int] = set()
            stream = plan.open_ratings(stack)
            blocks = read_ratings(stream, plan.layout, rejects, header=plan.header,
                                  on_bytes=lambda n: bar.advance(task, n))
            for n_read, rows, movie_ids in _prefetch((n, list(c.rows()), np.unique(c.movie_id)) for c, n in blocks):
                rows_read += n_read
                rows_loaded += writer.add(rows)
                rated_movies.update(movie_ids.tolist())
                log.debug("%s: %d lines read, %d ratings written so far (uncommitted)", plan.source, rows_read,
                          rows_loaded)
            rows_loaded += writer.finish()
            folds = plan.folds(rejects) if plan.folds else []
            if folds:
                conn.execute(ADD_FOLD_TEST, folds)
            before = conn.execute(text("SELECT COUNT(*) FROM movies")).scalar_one()
            if rated_movies:
                conn.execute(ADD_UNTITLED_MOVIE, [{"movie_id": m} for m in sorted(rated_movies)])
            untitled = conn.execute(text("SELECT COUNT(*) FROM movies")).scalar_one() - before
            conn.execute(update(IngestRun).where(IngestRun.id == run_id).values(
                status="succeeded", rows_read=rows_read, rows_loaded=rows_loaded, rows_rejected=rejects.count,
                finished_at=utcnow(), message=f"{untitled} untitled movies added" if untitled else None))
    except _AlreadyIngested:
        return report(already_ingested=True)
    except OperationalError as err:
        if "locked" in str(err).lower():
            raise LockHeldError(
                f"{plan.source}: the store is busy (another ingest or retrain is writing); nothing was loaded, "
                "try again when it finishes"
            ) from None
        raise
    except DataError as err:
        _record_failure(engine, plan, str(err))
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
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    with open(file, "rb") as probe:
        first = probe.readline().removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace").strip()
    n_fields = len(next(csv.reader([first]), []))
    if n_fields not in (3, 4):
        raise DataError(f"{file.name} line 1: expected user_id,movie_id,rating[,timestamp], found {n_fields} fields")
    low, high = float(scale[0]), float(scale[1])
    if not low < high:
        raise DataError(f"rating scale {low:g}..{high:g} is empty; give LOW < HIGH")
    layout = RatingsLayout(file.name, ",", 4, RatingScale(low, high, step), timestamp_required=False)
    plan = _Plan(dataset=PLAIN, source=str(file), sha256=sha256_file(file),
                 open_ratings=lambda stack: stack.enter_context(open(file, "rb")),
                 ratings_size=file.stat().st_size, layout=layout, header=None)
    return _run(engine, plan, skip_bad, progress)
