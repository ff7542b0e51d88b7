"""Read a SQLite store with the standard library's ``sqlite3`` alone, for commands that only read a few rows.

Why: importing SQLAlchemy costs about 0.15 s, ten times the read ``recae recommend --user 42`` does. So a read-only
command may open the store here instead, and gets None whenever this path cannot promise the same answer as
``recae.store.db.open_store``: not a plain ``sqlite:///PATH`` URL (PostgreSQL, a URI, ``~``, percent escapes), a file
that does not exist yet or that this process may not write (the full path opens those read-only its own way), or a
schema at another revision than this recae's (the full path migrates it, or says why it cannot). The caller then
takes the full path, which gives the answer or the one-line error.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

#: The newest migration's revision id; a test checks it equals Alembic's head (``recae.store.db`` hands it on).
SCHEMA_HEAD = "0004"
#: Seconds a read waits for a writer's lock, as the full path's busy timeout (WAL readers rarely wait at all).
BUSY_TIMEOUT_S = 30.0
_PREFIX = "sqlite:///"


def sqlite_file(database_url: str) -> Path | None:
    """The file of a plain ``sqlite:///PATH`` URL (PATH relative to the working folder, or ``//abs``), else None."""
    if not database_url.startswith(_PREFIX):
        return None
    database = database_url[len(_PREFIX):]
    if not database or database == ":memory:" or any(c in database for c in "?%~#"):
        return None
    return Path(database)


@contextmanager
def read_snapshot(database_url: str) -> Iterator[sqlite3.Connection | None]:
    """A sqlite3 connection inside one read transaction (every SELECT sees the same snapshot: a publish that
    commits meanwhile is seen whole or not at all), or None when the full path must answer (see the module).

    Writing through it fails (``PRAGMA query_only``). sqlite3 errors raised inside propagate; the caller decides.
    """
    path = sqlite_file(database_url)
    if path is None or not path.is_file() or not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        yield None
        return
    try:  # mode=rw: never creates a missing file (the full path makes a store and migrates it)
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S,
                               isolation_level=None)
    except sqlite3.Error as err:
        log.debug("sqlite3 cannot open %s (%s): the full path answers", path, err)
        yield None
        return
    try:
        conn.execute("PRAGMA query_only=ON")
        conn.execute("BEGIN")
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        if revision is None or revision[0] != SCHEMA_HEAD:
            log.debug("%s is at schema %s, not %s: the full path answers", path, revision, SCHEMA_HEAD)
            yield None
        else:
            yield conn
    finally:
        conn.close()  # ends the read transaction; nothing was written
