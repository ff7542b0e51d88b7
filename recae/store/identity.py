"""Which catalogue a store holds: in one home a film id means one film, and a model serves only the films it knew.

MovieLens releases number their films independently (movie 110 is "Operation Dumbo Drop" in ml-100k and
"Braveheart" in ml-latest-small), and their user ids name different people. So a store holds one release: the
first one ingested names the catalogue (the ``catalogue`` row); ingesting the same release again, or plain
ratings files (the nightly inbox, ``ingest --ratings``: ids of the catalogue already there) changes nothing here;
a different release is refused unless ``ingest --replace`` replaces the store's ratings and films with it, in the
same transaction that loads it. A store that so far holds only plain ratings files (no titles) takes the first
release ingested as its name.

Every model version records the identity its store had when it was published (``ModelVersion.catalogue``).
After a replace, a version of the earlier catalogue no longer serves: its precomputed lists and its film
indices name other films. ``check_model_catalogue`` is what the serving side asks before using a version.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine

from recae.errors import DataError, ModelNotFoundError
from recae.store.db import Catalogue, FoldTest, IngestRun, ModelVersion, Movie, Rating, Recommendation, utcnow

log = logging.getLogger(__name__)


class CatalogueConflictError(DataError):
    """An ingest would mix two catalogues whose ids mean different films (exit 65; nothing is loaded)."""


class CatalogueMismatchError(ModelNotFoundError):
    """The model was trained on another catalogue than the store now holds (exit 1; HTTP 503)."""


@dataclass(frozen=True)
class CatalogueInfo:
    """The store's catalogue: the release it is (None: plain ratings files only) and its identity."""

    name: str | None
    identity: str
    since: datetime

    def describe(self) -> str:
        """How messages name it: the release (or "plain ratings files") and since when."""
        since = self.since.date().isoformat() if isinstance(self.since, datetime) else str(self.since)[:10]
        return f"{self.name or 'plain ratings files'} (since {since})"


def current_catalogue(conn: Connection) -> CatalogueInfo | None:
    """The store's catalogue, or None for a store that holds no data yet."""
    row = conn.execute(select(Catalogue.name, Catalogue.identity, Catalogue.since).where(Catalogue.id == 1)).first()
    return CatalogueInfo(*row) if row is not None else None


def catalogue_identity(engine: Engine) -> str | None:
    """The store's catalogue identity now (None: no data yet); ``RatingMatrix.from_db`` keeps it with the ids."""
    with engine.connect() as conn:
        held = current_catalogue(conn)
    return held.identity if held is not None else None


def _new_identity(name: str | None) -> str:
    return f"{name or 'ratings'}:{uuid.uuid4().hex[:12]}"


def _record(conn: Connection, name: str | None) -> None:
    values = {"name": name, "identity": _new_identity(name), "since": utcnow()}
    if conn.execute(update(Catalogue).where(Catalogue.id == 1).values(**values)).rowcount == 0:
        conn.execute(insert(Catalogue).values(id=1, **values))


def claim_catalogue(conn: Connection, release: str | None, source: str) -> None:
    """Inside the ingest's transaction: record the catalogue an ingest of ``release`` (None: a plain ratings file)
    brings, or refuse it when the store holds another release.

    Raises:
        CatalogueConflictError: the store holds another release; the message says how to proceed.
    """
    held = current_catalogue(conn)
    if held is None:
        _record(conn, release)
    elif release is not None and held.name is None:
        conn.execute(update(Catalogue).where(Catalogue.id == 1).values(name=release))
        log.info("%s: the store's films are now named by %s", source, release)
    elif release is not None and held.name != release:
        raise CatalogueConflictError(
            f"{source}: this store holds {held.describe()}, whose movie and user ids mean other films and people "
            f"than {release}'s; nothing was loaded. Ingest {release} into a new home (--home DIR or RECAE_HOME), "
            f"or rerun with --replace to replace this store's ratings and films with it")


def replace_data(conn: Connection, release: str | None, run_id: int) -> None:
    """Inside the ingest's transaction: empty ratings, films and folds, mark earlier ingests ``replaced`` (so their
    files load again if asked) and, unless ``release`` is the one already held (its ids mean the same films, its
    models and lists stay valid), drop the precomputed lists (they name the earlier films) and start a new
    catalogue identity. Model versions stay listed; those of an earlier catalogue stop serving
    (``check_model_catalogue``)."""
    held = current_catalogue(conn)
    same = release is not None and held is not None and held.name == release  # its ids still mean the same films
    for table in (Rating, FoldTest, Movie) if same else (Rating, FoldTest, Movie, Recommendation):
        conn.execute(delete(table))
    conn.execute(update(IngestRun).where(IngestRun.status == "succeeded", IngestRun.id != run_id)
                 .values(status="replaced"))
    if not same:
        _record(conn, release)


def _recorded_and_held(conn: Connection, version: str) -> tuple[str | None, CatalogueInfo | None]:
    recorded = conn.execute(select(ModelVersion.catalogue).where(ModelVersion.version == version)).scalar()
    return recorded, current_catalogue(conn)


def model_fits_catalogue(conn: Connection, version: str) -> bool:
    """True unless ``version`` was published on another catalogue than the store holds now (a version or store
    with no record counts as fitting: nothing says otherwise)."""
    recorded, held = _recorded_and_held(conn, version)
    return recorded is None or held is None or recorded == held.identity


def check_model_catalogue(conn: Connection, version: str) -> None:
    """CatalogueMismatchError when ``version`` was published on another catalogue than the store holds now."""
    recorded, held = _recorded_and_held(conn, version)
    if recorded is None or held is None or recorded == held.identity:
        return
    raise CatalogueMismatchError(
        f"model {version} was trained on catalogue {recorded.split(':')[0]}, but the store now holds "
        f"{held.describe()}: its lists would name other films; train a model on it (`recae train`)")

