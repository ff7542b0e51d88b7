"""The store: SQLAlchemy 2.x tables, an engine factory, and Alembic migrations run from code.

The schema is created only by the migrations in ``migrations/`` (shipped as ``recae._migrations``);
the ORM classes below describe it for queries and for Alembic's autogenerate check.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from recae.errors import RecaeError
from recae.store.lite import SCHEMA_HEAD  # the newest migration's revision (sqlite3 readers check it too)

log = logging.getLogger(__name__)


#: How long a SQLite writer waits for another's write lock before "database is locked" (exit 75).
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: PostgreSQL writers wait this long for a row or table lock before giving up (as SQLite's busy timeout).
POSTGRES_LOCK_TIMEOUT_MS = 30_000
#: Keys of transaction-level advisory locks (``pg_advisory_xact_lock``): one per kind of exclusive work.
POSTGRES_MIGRATE_LOCK = 0x7265_6361_6501
POSTGRES_INGEST_LOCK = 0x7265_6361_6502


class StoreUnavailableError(RecaeError):
    """The database cannot be used: bad URL, missing driver, or a server that does not answer."""


def utcnow() -> datetime:
    """Timezone-aware now, for run timestamps."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base for every recae table."""


class Movie(Base):
    """One film of the catalogue; ``genres`` is pipe-separated as in MovieLens (``Action|Comedy``)."""

    __tablename__ = "movies"

    movie_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    title: Mapped[str | None] = mapped_column(String(512))
    year: Mapped[int | None] = mapped_column(Integer)
    genres: Mapped[str] = mapped_column(String(512), default="", server_default="")


class Rating(Base):
    """One rating; at most one per user and movie. ``timestamp`` is Unix seconds, NULL when unknown."""

    __tablename__ = "ratings"
    __table_args__ = {"sqlite_with_rowid": False}

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    movie_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    rating: Mapped[float] = mapped_column(Float, nullable=False)
    timestamp: Mapped[int | None] = mapped_column(BigInteger)


class FoldTest(Base):
    """Membership of a rating in the test part of a dataset's canonical fold (ml-100k u1..u5, ua, ub)."""

    __tablename__ = "fold_tests"
    __table_args__ = {"sqlite_with_rowid": False}

    split: Mapped[str] = mapped_column(String(16), primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    movie_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)


class IngestRun(Base):
    """One ingest attempt: what was read, how much loaded, and whether it finished."""

    __tablename__ = "ingest_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed
    rows_read: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_loaded: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Catalogue(Base):
    """The single row naming the catalogue the store holds (``recae.store.identity``): a film id means one film.

    ``name`` is the MovieLens release whose films these are (NULL while only plain ratings files were ingested);
    ``identity`` changes only when ``ingest --replace`` replaces the data, and every model version records it.
    """

    __tablename__ = "catalogue"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(String(64))
    identity: Mapped[str] = mapped_column(String(64))
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelVersion(Base):
    """A trained model whose artifact folder is ``path``; metrics and config are JSON text.

    ``catalogue`` is the store's catalogue identity when the version was published (filled in by the INSERT
    itself, so every writer records it); NULL only for a version published into a store that had none.
    """

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(64))
    orientation: Mapped[str] = mapped_column(String(8))
    split: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[str] = mapped_column(Text, default="{}")
    config: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    catalogue: Mapped[str | None] = mapped_column(
        String(64), default=select(Catalogue.identity).where(Catalogue.id == 1).scalar_subquery())


class Champion(Base):
    """The single row pointing at the model that serves; switching it is one UPDATE."""

    __tablename__ = "champion"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[str] = mapped_column(ForeignKey("model_versions.version"))
    switched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Recommendation(Base):
    """Precomputed top-N for every known user of a model version (``rank`` 1 is best)."""

    __tablename__ = "recommendations"
    __table_args__ = {"sqlite_with_rowid": False}

    version: Mapped[str] = mapped_column(
        ForeignKey("model_versions.version", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    movie_id: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)  # what orders the list (the ranker's score; NULL: not covered)
    predicted_rating: Mapped[float | None] = mapped_column(Float, nullable=True)  # NULL in rows before 0003



class RetrainRun(Base):
    """One nightly ``recae retrain``: what it ingested, how the challenger compared, what it decided.

    ``status`` is running | succeeded | failed | interrupted (a killed run, found by the next one);
    ``decision`` is unchanged | published | kept | first (NULL until the run decides); ``summary`` is the JSON
    line the run printed.
    """

    __tablename__ = "retrain_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    decision: Mapped[str | None] = mapped_column(String(16))
    champion_before: Mapped[str | None] = mapped_column(String(64))
    challenger: Mapped[str | None] = mapped_column(String(64))
    champion_after: Mapped[str | None] = mapped_column(String(64))
    data_fingerprint: Mapped[str | None] = mapped_column(String(64))
    files_ingested: Mapped[int] = mapped_column(Integer, default=0)
    files_rejected: Mapped[int] = mapped_column(Integer, default=0)
    rows_loaded: Mapped[int] = mapped_column(BigInteger, default=0)
    champion_rmse: Mapped[float | None] = mapped_column(Float)
    challenger_rmse: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text, default="{}")

def is_sqlite(engine: Engine | Connection) -> bool:
    """True when the engine talks to SQLite (bulk paths and PRAGMAs differ)."""
    return engine.dialect.name == "sqlite"


def is_postgresql(engine: Engine | Connection) -> bool:
    """True when the engine talks to PostgreSQL through psycopg 3 (COPY paths)."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"


def _set_sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
    cursor.close()


def is_lock_timeout(err: BaseException) -> bool:
    """SQLite's "database is locked" (its busy timeout ran out), or PostgreSQL's lock_not_available (SQLSTATE
    55P03) whether it came through SQLAlchemy or straight from psycopg (the COPY paths use the raw connection)."""
    if isinstance(err, OperationalError) and "locked" in str(getattr(err, "orig", None) or err).lower():
        return True
    return getattr(getattr(err, "orig", None) or err, "sqlstate", None) == "55P03"


def _read_only_sqlite_url(parsed: URL) -> URL | None:
    """A read-only URL for a SQLite file we may read but not write (a read-only home: a backup, a read-only mount),
    else None. WAL needs its ``-shm`` file: without one that could be made, the file is opened as immutable."""
    path = Path(str(parsed.database)).expanduser()
    if not path.is_file() or (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        return None
    shm = path.with_name(path.name + "-shm")
    mode = "ro" if shm.exists() else "ro&immutable=1"
    log.info("%s is read-only here: opened read-only (commands that write will fail)", path)
    return make_url(f"sqlite:///file:{quote(str(path.resolve()))}?mode={mode}&uri=true")


def _set_read_only_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
    cursor.close()


#: SQLite's SQLITE_FULL result code, PostgreSQL's disk_full SQLSTATE, and the OSError numbers of a full disk.
_SQLITE_FULL = 13
_POSTGRES_DISK_FULL = "53100"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err: BaseException) -> bool:
    """A full disk (or a database at its size limit) under any of the names it surfaces by: SQLAlchemy's
    OperationalError, a raw sqlite3 error from the bulk writer's cursor, psycopg's disk_full, or ENOSPC."""
    for cause in (err, getattr(err, "orig", None), err.__cause__, err.__context__):
        if cause is None:
            continue
        if isinstance(cause, OSError) and cause.errno in _NO_SPACE:
            return True
        if getattr(cause, "sqlite_errorcode", None) == _SQLITE_FULL or "database or disk is full" in str(cause):
            return True
        if getattr(cause, "sqlstate", None) == _POSTGRES_DISK_FULL:
            return True
    return False


def disk_full_message(err: BaseException, where: Path | None) -> str:
    """"the disk is full at PATH (N MB free there)...": the file the error names, else ``where`` (the store's file
    or home); never the SQL or the values being written."""
    named = getattr(err, "filename", None) or getattr(getattr(err, "orig", None), "filename", None)
    path = Path(named) if named else where
    if path is None:
        return "the disk is full; the store was left as it was: free some space and run it again"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    free = f" ({shutil.disk_usage(existing).free / 1e6:,.0f} MB free there)" if existing is not None else ""
    return (f"the disk is full at {path}{free}; the store was left as it was: free some space there (or use a --home "
            "on a larger disk) and run it again")


def store_error(err: BaseException, where: Path | None = None) -> RecaeError | None:
    """The one-line RecaeError a database error means to a user (busy: exit 75; read-only; disk full: exit 1,
    naming ``where``, the store's file or home, when the error names no file), or None."""
    from recae.errors import STORE_BUSY, StoreBusyError

    if is_disk_full(err):
        return StoreUnavailableError(disk_full_message(err, where))
    if is_lock_timeout(err):
        return StoreBusyError(f"{STORE_BUSY}; nothing was changed, try again when it finishes")
    if isinstance(err, OperationalError) and "readonly" in str(getattr(err, "orig", None) or err).lower():
        return StoreUnavailableError("the store is read-only here and this command writes to it; nothing was "
                                     "changed (use a writable --home, or read-only commands such as recommend)")
    return None


def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreUnavailableError(
            f"{url!r} is not a database URL; use e.g. sqlite:///path/recae.db or "
            "postgresql+psycopg://user@localhost/recae"
        ) from None
    if parsed.drivername == "postgresql":  # no driver named: use the one the `postgres` extra installs
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str) -> Engine:
    """Create an engine (no connection yet).

    SQLite: make the folder and set WAL, NORMAL sync, foreign keys and a busy timeout on every connection.
    PostgreSQL (``postgresql+psycopg://``; a plain ``postgresql://`` means the same): pre-ping pooled
    connections. Raises StoreUnavailableError for a malformed URL or a missing driver.
    """
    parsed = _parse_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                make_folder(Path(parsed.database).expanduser().parent)
                read_only = _read_only_sqlite_url(parsed)
                if read_only is not None:
                    engine = create_engine(read_only)
                    event.listen(engine, "connect", _set_read_only_pragmas)
                    return engine
            engine = create_engine(parsed)
            event.listen(engine, "connect", _set_sqlite_pragmas)
            return engine
        return create_engine(parsed, pool_pre_ping=True)
    except (ImportError, NoSuchModuleError) as err:
        if parsed.get_backend_name() == "postgresql":
            hint = "PostgreSQL needs psycopg 3: pip install 'recae[postgres]'"
        else:
            hint = f"the driver for {parsed.drivername} is not installed"
        raise StoreUnavailableError(f"cannot open {_safe(parsed)}: {hint} ({err})") from None


def make_folder(folder: Path) -> None:
    """``mkdir -p folder``; StoreUnavailableError in one line when a file is in the way or it may not be made."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise StoreUnavailableError(f"cannot use {folder} as a folder: {blocking} is a file, not a folder; "
                                    "choose another --home (or RECAE_HOME)") from None
    except OSError as err:
        raise StoreUnavailableError(f"cannot create the folder {folder}: {err.strerror or err}") from None


def _safe(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _first_line(err: BaseException) -> str:
    detail = str(getattr(err, "orig", None) or err)
    return next((line.strip() for line in detail.splitlines() if line.strip()), type(err).__name__)


@contextmanager
def connect(engine: Engine, *, begin: bool = False) -> Iterator[Connection]:
    """``engine.connect()`` (or ``begin()``) whose failure to connect is a one-line StoreUnavailableError.

    Only errors raised while connecting are translated; errors of the statements run inside pass unchanged.
    """
    try:
        conn = engine.connect()
    except DBAPIError as err:
        raise StoreUnavailableError(f"cannot connect to {_safe(engine.url)}: {_first_line(err)}") from None
    with conn:
        if begin:
            with conn.begin():
                yield conn
        else:
            yield conn


def migrations_dir() -> Path:
    """Folder of the Alembic scripts, found inside the installed package."""
    return Path(str(resources.files("recae._migrations")))


def _revision(conn: Connection) -> str | None:
    from sqlalchemy import inspect

    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def current_revision(engine: Engine) -> str | None:
    """The store's schema revision, or None for a blank database."""
    with connect(engine) as conn:
        return _revision(conn)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run Alembic migrations up to ``revision`` on ``engine`` (idempotent).

    On PostgreSQL an advisory lock serialises concurrent first uses: the second waits, then finds the schema
    migrated and does nothing.
    """
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    # configparser treats % as interpolation; Alembic runs on the connection below, the URL is informative.
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    with connect(engine, begin=True) as conn:
        if is_postgresql(conn):
            conn.execute(select(func.pg_advisory_xact_lock(POSTGRES_MIGRATE_LOCK)))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    log.info("store schema at revision %s", revision)


def open_store(url: str) -> Engine:
    """Engine for ``url`` with its schema migrated to the newest revision on first use.

    Raises StoreUnavailableError when the URL is malformed, its driver is missing or the server does not answer.
    """
    engine = make_engine(url)
    if current_revision(engine) != SCHEMA_HEAD:
        upgrade(engine)
    return engine


def count_ratings(engine: Engine) -> int:
    """Number of ratings in the store."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Rating)).scalar_one())
