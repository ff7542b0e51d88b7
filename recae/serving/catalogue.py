"""Title search over the catalogue, for people who know a film by name rather than by id (the web page's search).

One bound-parameter query: ``lower(title) LIKE '%<words>%'`` with ``%``, ``_`` and the escape character itself
escaped, so a query is always matched literally. Titles that start with the query come first, then the rest
alphabetically. Control and other invisible characters (Unicode category C) count as spaces: a NUL would end the
pattern early in SQLite's C API, so ``%00`` would match every title. No torch here.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine

from recae.store.db import Movie

#: Most titles one search returns (a page of suggestions, not an export).
MAX_RESULTS = 50
_ESCAPE = "\\"


@dataclass(frozen=True)
class CatalogueMovie:
    """One film as the catalogue knows it."""

    movie_id: int
    title: str | None
    year: int | None
    genres: str


def like_literal(text: str) -> str:
    """``text`` with LIKE's wildcards and the escape character escaped, to be matched as written."""
    return text.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")


def query_words(query: str) -> str:
    """``query`` lower-cased with invisible characters as spaces and runs of spaces collapsed ("" when nothing
    visible is left)."""
    visible = "".join(" " if unicodedata.category(c).startswith("C") else c for c in query)
    return " ".join(visible.split()).lower()


def search_titles(engine: Engine, query: str, limit: int = 20) -> list[CatalogueMovie]:
    """Films whose title contains ``query`` (case-insensitive, spaces collapsed), prefix matches first.

    An empty query (or one of only spaces and control characters) finds nothing rather than the whole catalogue.
    ``limit`` is capped at MAX_RESULTS.
    """
    words = query_words(query)
    if not words:
        return []
    limit = max(1, min(int(limit), MAX_RESULTS))
    title = func.lower(Movie.title)
    prefix_first = case((title.like(like_literal(words) + "%", escape=_ESCAPE), 0), else_=1)
    rows = (
        select(Movie.movie_id, Movie.title, Movie.year, Movie.genres)
        .where(title.like("%" + like_literal(words) + "%", escape=_ESCAPE))
        .order_by(prefix_first, Movie.title, Movie.movie_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [CatalogueMovie(int(m), t, y, g or "") for m, t, y, g in conn.execute(rows)]
