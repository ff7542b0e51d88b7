"""The films' genres and eras as a stacked side part (``recae.models.side_part``): groups from catalogue strings,
affinities recovered from planted tastes, scoring, fold-in and the files."""

from __future__ import annotations

import numpy as np
import pytest

from recae.artifacts.model_files import load_model, save_model
from recae.models.side_part import FilmGroups, era_name, film_groups, fit_side_part
from tests.support.model_file_fuzz import random_model
from tests.support.synthetic import planted_tastes


def test_groups_come_from_genre_strings_and_years_and_skip_the_unknown() -> None:
    groups = film_groups(["Comedy|Drama", "(no genres listed)", None, "Drama"], [1995, None, 1949, 2023])
    assert groups.names == ("Comedy", "Drama", "era:1995-1999", "era:2020-", "era:<1950")
    np.testing.assert_array_equal(groups.matrix, [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1],
                                                  [0, 1, 0, 1, 0]])
    assert groups.any and not film_groups(["", None], [None, 0]).any
    assert [era_name(y) for y in (1950, 1989, 1990, 1994, 1995, 2019)] == [
        "era:1950-1959", "era:1980-1989", "era:1990-1994", "era:1990-1994", "era:1995-1999", "era:2015-2019"]
    with pytest.raises(ValueError, match="2 genre strings but 1 years"):
        film_groups(["Comedy", "Drama"], [1990])


def test_affinities_recover_planted_genre_tastes() -> None:
    matrix, genres, taste = planted_tastes()
    groups = film_groups(genres, [None] * len(genres))
    side = fit_side_part(matrix, groups)
    assert side.names == ("Comedy", "Drama")
    scores = side.score_rows(np.arange(matrix.shape[0]))
    # the sign of every user's correction for every film is the planted taste's, and it is close to +-1 in size
    assert np.mean(np.sign(scores) == taste) > 0.99
    assert 0.6 < np.mean(np.abs(scores)) < 1.1
    rows, cols, _ = matrix.coo()
    np.testing.assert_allclose(side.predict(rows, cols), scores[rows, cols], rtol=1e-5, atol=1e-6)


def test_a_known_users_fold_in_reproduces_the_fitted_affinity() -> None:
    """fit_biases' last sweep is the user's bias given the films' biases, which is exactly the fold-in's."""
    matrix, genres, _ = planted_tastes(seed=1)
    groups = film_groups(genres, [None] * len(genres))
    side = fit_side_part(matrix, groups)
    for user in (0, 7, 123):
        row = matrix.csr[user]
        np.testing.assert_allclose(side.fold_in(row.indices, row.data), side.score_rows(np.array([user]))[0],
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(side.fold_in(np.array([], np.int64), np.array([])), 0.0)  # no ratings: no taste


def test_groups_must_describe_every_film() -> None:
    matrix, genres, _ = planted_tastes()
    groups = film_groups(genres, [None] * len(genres))
    with pytest.raises(ValueError, match="groups describe 79 films but the ratings have 80"):
        fit_side_part(matrix, FilmGroups(groups.matrix[:-1], groups.names))


def test_a_saved_side_part_loads_and_predicts_the_same(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = random_model(0, svd=True, partner=True, side=True)
    save_model(model, tmp_path / "v", version="v")
    loaded = load_model(tmp_path / "v")
    assert loaded.side is not None and loaded.side.names == model.side.names
    rows, cols, _ = model.inputs.coo()
    np.testing.assert_allclose(loaded.predict(rows, cols), model.predict(rows, cols), rtol=1e-5, atol=1e-5)
    without = random_model(0, svd=True, partner=True)
    assert not np.allclose(without.predict(rows, cols), model.predict(rows, cols))  # the side column counts
