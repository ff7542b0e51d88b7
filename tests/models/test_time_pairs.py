"""Films rated close together in time as a term of EASE's Gram matrix (``recae.models.time_pairs``): the exact
increments, what is left out, and a planted order that only the time term can see."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recae.models.rankers import fit_ease, train_ease
from recae.models.time_pairs import add_time_neighbours
from recae.store.matrix import RatingMatrix


def test_pairs_within_the_window_add_their_product_off_and_on_the_diagonal() -> None:
    # one user: films 0, 2, 1 in time order (stamps 10, 20, 30), film 3 undated, film 4 not covered
    x = sp.csr_matrix((np.array([1.0, 0.5, 0.8, 0.6, 0.9], np.float32), np.array([0, 1, 2, 3, 4]), np.array([0, 5])),
                      shape=(1, 5))
    stamps = np.array([10, 30, 20, 0, 40])
    items = np.array([0, 1, 2, 3])
    gram = np.zeros((4, 4), np.float32, order="F")
    add_time_neighbours(gram, x, stamps, items, window=1, weight=0.5)
    w02, w21 = 0.5 * 1.0 * 0.8, 0.5 * 0.8 * 0.5  # neighbours: (0, 2) and (2, 1); 3 undated, 4 not covered
    expected = np.zeros((4, 4))
    expected[0, 2] = expected[2, 0] = w02
    expected[2, 1] = expected[1, 2] = w21
    expected[np.diag_indices(4)] = [w02, w21, w02 + w21, 0.0]
    np.testing.assert_allclose(gram, expected, rtol=1e-6)
    wider = np.zeros((4, 4), np.float32, order="F")
    add_time_neighbours(wider, x, stamps, items, window=2, weight=0.5)
    assert wider[0, 1] == pytest.approx(0.5 * 1.0 * 0.5)  # two places apart: counted from window 2
    assert np.linalg.eigvalsh(wider).min() > -1e-6  # a sum of (e_a + e_b)(e_a + e_b)^T: positive semi-definite
    untouched = np.zeros((4, 4), np.float32, order="F")
    add_time_neighbours(untouched, x, np.zeros(5, np.int64), items, window=3, weight=0.5)  # no known time
    add_time_neighbours(untouched, x, stamps, items, window=0, weight=0.5)  # off
    assert not untouched.any()
    with pytest.raises(ValueError, match="4 timestamps for 5 ratings"):
        add_time_neighbours(gram, x, stamps[:4], items, window=1, weight=0.5)


def next_or_months_later(seed: int = 0, n_users: int = 400, n_fillers: int = 30) -> RatingMatrix:
    """Film 0 is followed at once by film 1 for half the users; the other half rate film 2 with it, months later.
    Every user also rates 8 random filler films (3..) in between, so films 1 and 2 are rated with film 0 equally
    often: only the time order tells them apart."""
    rng = np.random.default_rng(seed)
    users, films, stamps = [], [], []
    for user in range(n_users):
        fillers = rng.choice(np.arange(3, 3 + n_fillers), size=8, replace=False)
        if user % 2 == 0:
            order = [0, 1, *fillers]
        else:
            order = [0, *fillers, 2]
        day = 1_000_000 + user
        for place, film in enumerate(order):
            users.append(user + 1)
            films.append(film + 1)
            stamps.append(day + place * (86_400 * 30 if user % 2 and film == 2 else 60))
    values = np.full(len(users), 4.0, np.float32)
    return RatingMatrix.from_ids(np.array(users), np.array(films), values, np.array(stamps))


def test_the_time_term_prefers_the_film_rated_next_over_one_rated_as_often_months_later() -> None:
    ratings = next_or_months_later()
    fan = sp.csr_matrix((np.array([0.8], np.float32), np.array([0]), np.array([0, 1])), shape=(1, ratings.shape[1]))
    plain = fit_ease(ratings.csr, 50.0).score_rows(fan)[0]
    timed, search = train_ease(ratings, lam=50.0, time_window=1, time_weight=1.0)
    scores = timed.score_rows(fan)[0]
    assert abs(plain[1] - plain[2]) < 0.1 * abs(plain[1])  # without time the two are alike
    assert scores[1] > scores[2] + 0.5 * abs(plain[1])  # with it, the film rated next wins clearly
    assert search["time_window"] == 1 and search["time_weight"] == 1.0


def test_undated_ratings_or_a_zero_weight_fit_plain_ease() -> None:
    ratings = next_or_months_later(seed=1)
    undated = RatingMatrix(csr=ratings.csr, timestamps=np.zeros(ratings.nnz, np.int64), index=ratings.index)
    plain, _ = train_ease(ratings, lam=50.0)
    for matrix, window, weight in ((undated, 3, 0.25), (ratings, 3, 0.0), (ratings, 0, 0.25)):
        ranker, search = train_ease(matrix, lam=50.0, time_window=window, time_weight=weight)
        np.testing.assert_array_equal(ranker.weights, plain.weights)
        assert "time_window" not in search
