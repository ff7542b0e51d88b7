"""What the catalogue says about each film (genres and release year) in a rating matrix's column order: the side
information training stacks beside the ratings (``recae.models.side_part``). One select of three
columns; films the catalogue does not describe get no genres and no year."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine

from recae.store.db import Movie, connect


def read_film_facts(engine: Engine, movie_ids: np.ndarray) -> tuple[list[str | None], list[int | None]]:
    """(genres, years) of ``movie_ids`` in their order: genres as stored ("Comedy|Drama"), years None if unknown."""
    with connect(engine) as conn:
        known = {int(m): (g, y) for m, g, y in conn.execute(select(Movie.movie_id, Movie.genres, Movie.year))}
    facts = [known.get(int(m), (None, None)) for m in movie_ids]
    return [g for g, _ in facts], [y for _, y in facts]
