"""Small synthetic rating data with a planted structure whose right answer is known in advance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recae.store.matrix import IdIndex, RatingMatrix


@dataclass(frozen=True)
class Planted:
    """A planted low-rank rating matrix: ``full`` is the truth, ``observed`` the sampled ratings."""

    full: np.ndarray  # (n_users, n_movies) true ratings on the 1..5 scale
    observed: RatingMatrix


def planted_low_rank(
    n_users: int = 200, n_movies: int = 120, rank: int = 3, density: float = 0.25, noise: float = 0.1, seed: int = 0,
    user_id_offset: int = 1, movie_id_offset: int = 1,
) -> Planted:
    """Ratings = clip(3 + U V^T + noise) on 1..5, observed at random with ``density``; ids start at the offsets.

    Every user and movie gets at least two observed ratings, so no row or column is empty.
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(0, 1, (n_users, rank))
    v = rng.normal(0, 1, (n_movies, rank))
    full = np.clip(3.0 + (u @ v.T) / np.sqrt(rank) * 1.2, 1.0, 5.0)
    mask = rng.random((n_users, n_movies)) < density
    for r in range(n_users):
        mask[r, rng.choice(n_movies, 2, replace=False)] = True
    for c in range(n_movies):
        mask[rng.choice(n_users, 2, replace=False), c] = True
    rows, cols = np.nonzero(mask)
    values = np.clip(full[rows, cols] + rng.normal(0, noise, rows.size), 1.0, 5.0).astype(np.float32)
    timestamps = rng.integers(1_000_000_000, 1_100_000_000, rows.size)
    index = IdIndex(np.arange(n_users, dtype=np.int64) + user_id_offset,
                    np.arange(n_movies, dtype=np.int64) + movie_id_offset)
    return Planted(full=full, observed=RatingMatrix.from_positions(rows, cols, values, timestamps, index))


def planted_tastes(seed: int = 0, n_users: int = 300, n_movies: int = 80, density: float = 0.3,
                   ) -> tuple[RatingMatrix, list[str], np.ndarray]:
    """(ratings, each film's genre, the planted taste (n_users, n_movies) of +-1): rating = 3 + the film's quality
    + the user's taste for its genre + noise. Half the users love comedies and dislike dramas, half the reverse;
    films alternate comedy, drama. What the ratings say beyond the biases is the genre taste alone."""
    rng = np.random.default_rng(seed)
    comedy = np.arange(n_movies) % 2 == 0
    loves_comedy = rng.random(n_users) < 0.5
    taste = np.where(loves_comedy[:, None] == comedy[None, :], 1.0, -1.0)
    values = 3.0 + rng.normal(0, 0.3, n_movies)[None, :] + taste + rng.normal(0, 0.3, (n_users, n_movies))
    rows, cols = np.nonzero(rng.random((n_users, n_movies)) < density)
    matrix = RatingMatrix.from_ids(rows + 1, cols + 1, np.clip(values[rows, cols], 1, 5).astype(np.float32))
    return matrix, ["Comedy" if c else "Drama" for c in comedy], taste
