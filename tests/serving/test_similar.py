"""Nearest films in the latent space: a planted twin film is found first; unknown films are named."""

from __future__ import annotations

import numpy as np
import pytest

from recae.artifacts.train_config import TrainConfig
from recae.artifacts.trained_model import TrainedModel
from recae.errors import UnknownMovieError
from recae.models.build import model_config
from recae.serving.similar import similar_movies
from recae.store.matrix import IdIndex, RatingMatrix
from recae.training.train import fit
from tests.support.synthetic import planted_low_rank


@pytest.fixture(scope="module", params=["item", "user"])
def with_twin(request: pytest.FixtureRequest) -> TrainedModel:
    """Planted ratings plus movie 999, an exact copy of movie 1's column (same users, same ratings)."""
    data = planted_low_rank(n_users=150, n_movies=60, rank=3, density=0.4, seed=3).observed
    rows, cols, values = data.coo()
    twin = cols == 0
    index = IdIndex(data.index.user_ids, np.append(data.index.movie_ids, 999))
    matrix = RatingMatrix.from_positions(np.concatenate([rows, rows[twin]]),
                                         np.concatenate([cols, np.full(twin.sum(), 60)]),
                                         np.concatenate([values, values[twin]]), None, index)
    cfg = model_config(orientation=request.param, hidden=(32,))
    result = fit(matrix, None, cfg, TrainConfig(epochs=40, lr=2e-2, weight_decay=0.1, batch_ratings=1024, threads=1,
                                                 ensemble=1, weight_decay_grid=()))
    return TrainedModel.from_fit(result.module, matrix)


def test_a_planted_twin_is_the_nearest_film(with_twin: TrainedModel) -> None:
    neighbours = similar_movies(with_twin, 1, n=5)
    assert neighbours[0].movie_id == 999
    assert 1 not in {s.movie_id for s in neighbours}
    assert [s.rank for s in neighbours] == [1, 2, 3, 4, 5]
    assert all(a.similarity >= b.similarity for a, b in zip(neighbours, neighbours[1:]))
    assert similar_movies(with_twin, 999, n=1)[0].movie_id == 1


def test_unknown_movie_names_the_known_range(with_twin: TrainedModel) -> None:
    with pytest.raises(UnknownMovieError, match="movie 12345 is unknown"):
        similar_movies(with_twin, 12345)
