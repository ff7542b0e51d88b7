"""Title search on a real store: case-insensitive containment, prefix matches first, wildcards taken literally."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from recae.serving.catalogue import MAX_RESULTS, like_literal, search_titles
from recae.store.db import Movie

pytestmark = pytest.mark.backends("sqlite", "postgresql")  # LIKE, lower() and ESCAPE on both dialects

TITLES = {1: "Star Wars (1977)", 2: "Lone Star (1996)", 3: "Starship Troopers (1997)", 4: "100% Arabica (1997)",
          5: "1000 Days (2001)", 6: "A_B (2000)", 7: "AXB (2000)", 8: r"Back\Slash (1990)", 9: None}


def fill(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(insert(Movie), [{"movie_id": m, "title": t, "year": None, "genres": ""} for m, t in TITLES.items()])


def ids(engine, query: str, limit: int = 20) -> list[int]:  # type: ignore[no-untyped-def]
    return [m.movie_id for m in search_titles(engine, query, limit)]


def test_containment_is_case_insensitive_and_prefixes_come_first(engine) -> None:  # type: ignore[no-untyped-def]
    fill(engine)
    found = ids(engine, "STAR")  # titles starting with it (in the store's collation order), then "Lone Star"
    assert set(found[:2]) == {1, 3} and found[2:] == [2]
    assert ids(engine, "  star   wars ") == [1]
    assert ids(engine, "star", limit=1) == found[:1]


def test_wildcards_and_the_escape_character_match_literally(engine) -> None:  # type: ignore[no-untyped-def]
    fill(engine)
    assert ids(engine, "100%") == [4]
    assert ids(engine, "a_b") == [6]
    assert ids(engine, "%") == [4]
    assert ids(engine, "\\") == [8]
    assert like_literal("50%_\\") == "50\\%\\_\\\\"


def test_empty_queries_find_nothing_and_limits_are_capped(engine) -> None:  # type: ignore[no-untyped-def]
    fill(engine)
    assert ids(engine, "") == [] and ids(engine, "   ") == []
    with engine.begin() as conn:
        conn.execute(insert(Movie), [{"movie_id": 100 + i, "title": f"Same {i}", "genres": ""} for i in range(80)])
    assert len(ids(engine, "same", limit=10_000)) == MAX_RESULTS
