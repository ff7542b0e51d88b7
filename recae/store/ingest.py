"""Load MovieLens datasets and plain ratings files into the store: validated, all or nothing, idempotent.

One file is one transaction: the ``ingest_runs`` row, the movies, every rating and (ml-100k) the canonical
test folds commit together, so a failed or killed ingest leaves the store as it was. A file whose sha256 has
a succeeded run is skipped. Ratings upsert by (user_id, movie_id) with this rule, applied row by row in file
order::

    keep the new rating  iff  new.timestamp IS NULL or old.timestamp IS NULL or new.timestamp >= old.timestamp

i.e. the newer timestamp wins; with equal or unknown timestamps (0 or missing -> NULL) the later one wins.

Parsing and validation live in ``recae.store.parse``, the per-dialect bulk writers and the ingest lock in
``recae.store.writers``; this module runs them in one transaction, parsing the next block in a worker thread
while the database writes the current one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import Connection, Engine

from recae.errors import DataError, LockHeldError
from recae.store.datasets import DataSource, RatingScale, fetch, get_format, sha256_file
from recae.store.db import IngestRun, is_lock_timeout, utcnow
from recae.store.identity import claim_catalogue, replace_data
from recae.store.parse import RatingsLayout, Reject, RejectLog, plain_file_layout, read_movies, read_ratings
from recae.store.writers import (
    add_fold_tests,
    add_untitled_movies,
    busy_message,
    lock_for_ingest,
    ratings_writer,
    upsert_movies,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

PLAIN = "ratings-csv"


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
    replaced: bool = False


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
    movies: Callable[[RejectLog], list[dict[str, object]]] | None = None
    folds: Callable[[RejectLog], list[dict[str, object]]] | None = None


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


def _run(engine: Engine, plan: _Plan, skip_bad: bool, progress: bool, replace: bool = False) -> IngestReport:
    started = time.perf_counter()

    def report(**counts: object) -> IngestReport:
        base = dict(dataset=plan.dataset, source=plan.source, sha256=plan.sha256, rows_read=0, rows_loaded=0,
                    rows_rejected=0, movies_loaded=0, already_ingested=False, rejects=())
        base.update(counts)
        return IngestReport(**base, seconds=round(time.perf_counter() - started, 3))  # type: ignore[arg-type]

    with engine.connect() as conn:
        if not replace and _succeeded_run(conn, plan.sha256):
            log.info("%s: already ingested (sha256 %s)", plan.source, plan.sha256)
            return report(already_ingested=True)
    rejects = RejectLog(skip_bad)
    try:
        with engine.begin() as conn, ExitStack() as stack:
            lock_for_ingest(conn, plan.source)
            # The first statement writes, so SQLite takes the write lock before anything is read.
            run_id = conn.execute(insert(IngestRun).values(
                dataset=plan.dataset, source=plan.source, sha256=plan.sha256, status="running", rows_read=0,
                rows_loaded=0, rows_rejected=0, started_at=utcnow())).inserted_primary_key[0]
            if not replace and _succeeded_run(conn, plan.sha256):
                raise _AlreadyIngested  # another process finished the same file meanwhile; roll back our row
            release = None if plan.dataset == PLAIN else plan.dataset
            if replace:
                replace_data(conn, release, run_id)
            else:
                claim_catalogue(conn, release, plan.source)
            movies = plan.movies(rejects) if plan.movies else []
            if movies:
                upsert_movies(conn, movies)
            bar = stack.enter_context(_progress(progress, plan.source, plan.ratings_size))
            task = bar.add_task("ratings", total=plan.ratings_size)
            writer = stack.enter_context(ratings_writer(conn))
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
                add_fold_tests(conn, folds)
            before = conn.execute(text("SELECT COUNT(*) FROM movies")).scalar_one()
            if rated_movies:
                add_untitled_movies(conn, sorted(rated_movies))
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
            raise LockHeldError(busy_message(plan.source)) from None
        raise
    if untitled:
        log.warning("%s: %d rated movies were not in the catalogue; added with NULL title", plan.source, untitled)
    return report(rows_read=rows_read, rows_loaded=rows_loaded, rows_rejected=rejects.count,
                  movies_loaded=len(movies), rejects=tuple(rejects.first), movies_untitled=untitled,
                  fold_tests_loaded=len(folds), replaced=replace)


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
                   skip_bad: bool = False, progress: bool = False, replace: bool = False) -> IngestReport:
    """Ingest a MovieLens release from its zip or extracted folder (``path``), else download it by name.

    Args:
        engine: a migrated store (``db.open_store``).
        name: one of ``datasets.FORMATS`` (``ml-100k``, ``ml-1m``, ..., ``ml-latest-small``).
        path: the GroupLens zip or a folder holding its files; None downloads into ``downloads_dir``.
        skip_bad: load the good rows and report rejects instead of failing on the first bad line.
        progress: show a progress bar on stderr (when it is a terminal).
        replace: replace the store's ratings, films and folds with this release, in the transaction that loads
            it (``recae.store.identity``); without it, a store holding another release refuses it.

    Raises:
        DataError: a malformed line or unsafe archive (nothing is loaded); DownloadError when offline;
            CatalogueConflictError (a DataError) when the store holds another release.
    """
    fmt = get_format(name)
    archive = Path(path).expanduser() if path is not None else fetch(fmt, downloads_dir).path
    with DataSource(archive) as source:
        used = [fmt.ratings_file, fmt.movies_file, *([fmt.genre_file] if fmt.genre_file else []),
                *(member for _, member in fmt.fold_files)]
        layout = RatingsLayout(fmt.ratings_file, fmt.sep, 4, fmt.scale, timestamp_required=True)

        def folds(rejects: RejectLog) -> list[dict[str, object]]:
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
        return _run(engine, plan, skip_bad, progress, replace)


def ingest_ratings_file(engine: Engine, path: str | Path, *, scale: tuple[float, float] = (0.5, 5.0),
                        step: float | None = 0.5, skip_bad: bool = False, progress: bool = False,
                        replace: bool = False, source: str | None = None) -> IngestReport:
    """Ingest a plain ``user_id,movie_id,rating[,timestamp]`` CSV (header optional): new ratings from production.

    Movies not yet in the catalogue are added with a NULL title (``IngestReport.movies_untitled``).

    Args:
        scale: allowed (low, high) ratings; ``step`` the allowed increment from ``low`` (None: any value).
        replace: replace the store's ratings, films and folds with this file's ratings (a new catalogue).
        source: how the report, the log and the store's ingest record name the data (default: the file's path;
            the Python API names a DataFrame it wrote to a scratch file).
    """
    low, high = float(scale[0]), float(scale[1])
    if not low < high:
        raise DataError(f"rating scale {low:g}..{high:g} is empty; give LOW < HIGH")
    file, layout = plain_file_layout(path, RatingScale(low, high, step))
    plan = _Plan(dataset=PLAIN, source=source or str(file), sha256=sha256_file(file),
                 open_ratings=lambda stack: stack.enter_context(open(file, "rb")),
                 ratings_size=file.stat().st_size, layout=layout, header=None)
    return _run(engine, plan, skip_bad, progress, replace)


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
    file, layout = plain_file_layout(path, ANY_RATING)
    sha256 = sha256_file(file)
    with open(file, "rb") as stream:
        chunks = [chunk for chunk, _ in read_ratings(stream, layout, RejectLog(skip_bad=False), header=None)]
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
