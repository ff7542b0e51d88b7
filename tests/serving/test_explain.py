"""Leave-one-out reasons on a planted additive scorer, where each rated film's true contribution is known."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from recae.serving.explain import MAX_EXPLAINED, leave_one_out


class AdditiveScorer:
    """score(R)_j = base_j + sum_i W[i, j] * r_i over rated films i: contribution of i to j is W[i, j] * r_i."""

    def __init__(self, n_movies: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.base = rng.normal(3.0, 0.1, n_movies)
        self.weights = rng.normal(0.0, 0.2, (n_movies, n_movies))  # (rated film, scored film)
        self.calls = 0

    def __call__(self, ratings: Mapping[int, float]) -> np.ndarray:
        self.calls += 1
        scores = self.base.copy()
        for movie, rating in ratings.items():
            scores += self.weights[movie] * rating
        return scores.astype(np.float32)


def test_reasons_are_the_planted_contributions_largest_first() -> None:
    scorer = AdditiveScorer(30)
    ratings = {2: 5.0, 7: 4.0, 11: 1.0, 19: 3.5}
    full = scorer(ratings)
    cols = [0, 5, 13, 29]
    reasons = leave_one_out(scorer, ratings, full, cols, top=3)
    assert scorer.calls == 1 + len(ratings)  # one fold-in per rated film, no more
    for col, found in zip(cols, reasons, strict=True):
        truth = {m: scorer.weights[m, col] * r for m, r in ratings.items()}
        expected = sorted((m for m in truth if truth[m] > 0), key=lambda m: -truth[m])[:3]
        assert [c.movie_id for c in found] == expected
        for c in found:
            assert c.contribution == pytest.approx(truth[c.movie_id], abs=1e-4)
            assert c.rating == ratings[c.movie_id]


def test_a_film_no_rating_raised_gets_no_reason() -> None:
    scorer = AdditiveScorer(10, seed=1)
    scorer.weights[:, 4] = -0.1  # every rated film lowers film 4
    ratings = {1: 4.0, 2: 5.0}
    assert leave_one_out(scorer, ratings, scorer(ratings), [4]) == [[]]


def test_cost_is_bounded() -> None:
    scorer = AdditiveScorer(MAX_EXPLAINED + 5)
    too_many = {m: 3.0 for m in range(MAX_EXPLAINED + 1)}
    with pytest.raises(ValueError, match=f"at most {MAX_EXPLAINED}"):
        leave_one_out(scorer, too_many, scorer(too_many), [0])
