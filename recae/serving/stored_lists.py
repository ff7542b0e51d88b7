"""A known user's precomputed list, read from a SQLite store with ``sqlite3`` alone: no SQLAlchemy, no numpy.

Why: ``recae recommend --user 42`` is one indexed read of a hundred rows at most, about 2 ms; importing what the
full path (``recae.serving.recommend``) needs costs 0.35 s. This module answers that read, and only that: it returns
None whenever the answer needs more (a PostgreSQL store, a schema to migrate, no champion or one published on
another catalogue, a version not published, filters that leave the list short), and the caller takes the full path,
which answers or fails the same way it always has. Filters use :meth:`Filters.allows`, the predicate the model's
live answers use, over the stored rows in rank order. The records, filters and messages shared with the full path
live here so that both print the same thing.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from recae.errors import UnknownGenreError, UnknownUserError
from recae.store.lite import read_snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecommendedMovie:
    """One recommended film: the model's predicted rating, and the ranking score that put it at ``rank``."""

    rank: int
    movie_id: int
    title: str | None
    year: int | None
    genres: str
    predicted_rating: float
    score: float  # the ranker's score (higher first); the predicted rating for models without a ranker
    # "popular": the model knows none of the user's rated films, so the list is the most-rated films of its
    # training data and ``score`` is the film's number of training ratings (see recae.serving.recommend)
    basis: Literal["model", "popular"] = "model"


@dataclass(frozen=True)
class Filters:
    """Constraints on which films may be recommended."""

    genre: str | None = None
    min_year: int | None = None
    exclude: tuple[int, ...] = ()

    def allows(self, year: int | None, genres: str) -> bool:
        """True when a film of this year and these pipe-separated genres passes the filters."""
        if self.min_year is not None and (year is None or year < self.min_year):
            return False
        if self.genre is not None and self.genre.lower() not in {g.lower() for g in genres.split("|")}:
            return False
        return True


def unknown_genre_message(genre: str, genres_column: Iterable[str | None]) -> str | None:
    """The message for a ``genre`` that none of the catalogue's films has (compared ignoring case), listing those
    it has, or None when some film has it. ``genres_column`` is the films' pipe-separated genres."""
    known = sorted({g for genres in genres_column for g in (genres or "").split("|") if g}, key=str.lower)
    if genre.lower() in {g.lower() for g in known}:
        return None
    listed = ", ".join(known) if known else "none (the catalogue has no genres)"
    return f"genre {genre!r} is unknown; genres in the catalogue: {listed}"


def unknown_user_message(user_id: int, low: int | None, high: int | None, count: int) -> str:
    """``user 9999 is unknown; known users are 1..943 (943 users)``, from the store's lowest and highest user id
    and its number of users."""
    if not count:
        return f"user {user_id} is unknown; the store holds no ratings yet (run `recae ingest`)"
    return f"user {user_id} is unknown; known users are {low}..{high} ({count} users)"


def stored_list(database_url: str, user_id: int, n: int = 10, filters: Filters = Filters(),
                version: str | None = None) -> list[RecommendedMovie] | None:
    """The top ``n`` of ``user_id``'s precomputed list (default version: the champion) after ``filters``, or None
    when the full path must answer (see the module).

    Raises UnknownGenreError for a genre no film has, and UnknownUserError when the store has never seen the user,
    with the full path's messages.
    """
    answer = stored_answer(database_url, user_id, n, filters, version)
    return None if answer is None else answer[1]


def stored_answer(database_url: str, user_id: int, n: int = 10, filters: Filters = Filters(),
                  version: str | None = None) -> tuple[str, list[RecommendedMovie]] | None:
    """:func:`stored_list` with the version it was read from (the champion when ``version`` is None), read in the
    same snapshot as the list: what ``recae serve`` returns beside it. None when the full path must answer."""
    try:
        with read_snapshot(database_url) as conn:
            return None if conn is None else _read(conn, user_id, n, filters, version)
    except sqlite3.Error as err:  # locked, not a database, a table missing: the full path says what it is
        log.debug("the stored list could not be read with sqlite3 (%s): the full path answers", err)
        return None


def _read(conn: sqlite3.Connection, user_id: int, n: int, filters: Filters,
          version: str | None) -> tuple[str, list[RecommendedMovie]] | None:
    version = _servable_version(conn) if version is None else _published(conn, version)
    if version is None:
        return None
    if filters.genre is not None:
        message = unknown_genre_message(filters.genre, (g for (g,) in conn.execute(
            "SELECT DISTINCT genres FROM movies")))
        if message is not None:
            raise UnknownGenreError(message)
    filtered = filters.genre is not None or filters.min_year is not None or bool(filters.exclude)
    rows = conn.execute(  # LIMIT -1: every stored row, for the filters to choose from
        "SELECT r.movie_id, m.title, m.year, m.genres, COALESCE(r.predicted_rating, r.score), r.score "
        "FROM recommendations AS r LEFT OUTER JOIN movies AS m ON m.movie_id = r.movie_id "
        "WHERE r.version = ? AND r.user_id = ? ORDER BY r.rank LIMIT ?", (version, user_id, -1 if filtered else n)
    ).fetchall()
    if not rows:
        if conn.execute("SELECT 1 FROM ratings WHERE user_id = ? LIMIT 1", (user_id,)).fetchone() is None:
            low, high, count = conn.execute(
                "SELECT min(user_id), max(user_id), count(DISTINCT user_id) FROM ratings").fetchone()
            raise UnknownUserError(unknown_user_message(user_id, low, high, count))
        return None  # a user who joined after the model was trained: the model folds them in
    banned = set(filters.exclude)
    kept = [row for row in rows if row[0] not in banned and filters.allows(row[2], row[3] or "")][:n]
    if len(kept) < n:
        return None  # the filters leave the list short: the model ranks every film
    return version, [RecommendedMovie(rank=i + 1, movie_id=m, title=t, year=y, genres=g or "",
                                      predicted_rating=float(p), score=float(s)) for i, (m, t, y, g, p, s) in
                     enumerate(kept)]


def _servable_version(conn: sqlite3.Connection) -> str | None:
    """The champion when it was published on the catalogue the store holds, else None (the full path then says
    there is no model, or that the model and the store no longer match)."""
    row = conn.execute(
        "SELECT c.version, v.catalogue, (SELECT identity FROM catalogue WHERE id = 1) FROM champion AS c "
        "JOIN model_versions AS v ON v.version = c.version WHERE c.id = 1").fetchone()
    if row is None:
        return None
    version, recorded, held = row
    return str(version) if recorded is None or held is None or recorded == held else None


def _published(conn: sqlite3.Connection, version: str) -> str | None:
    """``version`` when it is published, else None (the full path names the versions that are)."""
    row = conn.execute("SELECT 1 FROM model_versions WHERE version = ?", (version,)).fetchone()
    return version if row is not None else None
