""""Because you rated ...": which of a visitor's rated films pushed each recommended film up, by leave-one-out.

For a score function ``s(R)`` (every film's score given the rated films ``R``; fold-in in practice) the
contribution of rated film ``i`` to recommended film ``j`` is

    c_ij = s(R)_j - s(R \\ {i})_j

the drop in ``j``'s score when ``i`` is left out. It needs nothing from the model but the score function, so it
follows whatever scorer serves (an autoencoder, a blend, a ranker) without knowing its insides. Cost: one extra
fold-in per rated film, so it is offered only up to MAX_EXPLAINED rated films. Scores clipped at the top of the
scale can hide a contribution (both sides read 5.0); such a film simply gets fewer reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Most rated films explained by leave-one-out (each costs one fold-in).
MAX_EXPLAINED = 20


@dataclass(frozen=True)
class Contribution:
    """How much leaving ``movie_id`` (rated ``rating``) out lowers a recommended film's score."""

    movie_id: int
    rating: float
    contribution: float


def leave_one_out(
    score: Callable[[Mapping[int, float]], np.ndarray],
    ratings: Mapping[int, float],
    full: np.ndarray,
    cols: Sequence[int],
    top: int = 3,
) -> list[list[Contribution]]:
    """For each column in ``cols``, its ``top`` positive contributions from ``ratings``, largest first.

    Args:
        score: ratings -> (n_movies,) scores; the same function that produced ``full``.
        ratings: movie_id -> rating the scores were conditioned on (at most MAX_EXPLAINED of them).
        full: (n_movies,) ``score(ratings)``.
        cols: columns of the recommended films in the score vector.
    Returns:
        one list per entry of ``cols``; empty when no rated film raised that film's score.
    """
    if len(ratings) > MAX_EXPLAINED:
        raise ValueError(f"leave-one-out explains at most {MAX_EXPLAINED} rated films, got {len(ratings)}")
    picked = np.asarray(cols, dtype=np.int64)
    rated = list(ratings.items())
    drops = np.empty((len(rated), picked.size), dtype=np.float64)  # (n_rated, n_recommended)
    for k, (movie_id, _) in enumerate(rated):
        without = {m: r for m, r in rated if m != movie_id}
        drops[k] = full[picked].astype(np.float64) - np.asarray(score(without), dtype=np.float64)[picked]
    reasons = []
    for j in range(picked.size):
        order = np.argsort(-drops[:, j], kind="stable")[:top]
        reasons.append([Contribution(int(rated[k][0]), float(rated[k][1]), float(drops[k, j]))
                        for k in order if drops[k, j] > 0])
    return reasons
