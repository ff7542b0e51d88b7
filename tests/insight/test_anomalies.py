"""Anomalies: planted random-rating profiles come out on top; the per-user error is what its formula says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from recae.artifacts.train_config import TrainConfig
from recae.artifacts.trained_model import TrainedModel
from recae.cli import cli
from recae.errors import RecaeError
from recae.insight.anomalies import find_anomalies, reconstruction_errors
from recae.models.build import model_config
from recae.store.matrix import IdIndex, RatingMatrix
from tests.support.synthetic import planted_low_rank
from tests.insight.test_latent import publish_planted, train_small

N_USERS, N_MOVIES, N_BOTS = 300, 200, 5
SETTINGS = TrainConfig(ensemble=1, weight_decay_grid=(), weight_decay=1.0, epochs=20, lr=1e-2, seed=0, threads=1)


def with_bots(seed: int = 0) -> tuple[RatingMatrix, np.ndarray]:
    """ml-100k-like planted low-rank ratings (integers 1..5, ~40 per user) plus ``N_BOTS`` profiles rating 50-100
    random films with uniform random ratings. Returns the ratings and the bots' user ids."""
    planted = planted_low_rank(n_users=N_USERS, n_movies=N_MOVIES, rank=3, density=0.2, noise=0.3, seed=seed)
    rows, cols, values = planted.observed.coo()
    rng = np.random.default_rng(seed + 100)
    bot_rows, bot_cols, bot_values = [rows], [cols], [np.round(values)]
    for bot in range(N_BOTS):
        k = int(rng.integers(50, 101))
        bot_rows.append(np.full(k, N_USERS + bot))
        bot_cols.append(np.sort(rng.choice(N_MOVIES, k, replace=False)))
        bot_values.append(rng.integers(1, 6, k).astype(np.float32))
    index = IdIndex(np.arange(N_USERS + N_BOTS, dtype=np.int64) + 1, np.arange(N_MOVIES, dtype=np.int64) + 1)
    all_rows = np.concatenate(bot_rows)
    timestamps = 1_000_000_000 + np.arange(all_rows.size)
    matrix = RatingMatrix.from_positions(all_rows, np.concatenate(bot_cols), np.concatenate(bot_values), timestamps,
                                         index)
    return matrix, index.user_ids[N_USERS:]


@pytest.fixture(scope="module")
def data() -> tuple[RatingMatrix, np.ndarray]:
    return with_bots()


@pytest.fixture(scope="module", params=["item", "user"])
def trained(request: pytest.FixtureRequest, data: tuple[RatingMatrix, np.ndarray]) -> TrainedModel:
    return train_small(data[0], model_config("stacked", orientation=request.param, hidden=(32,)), SETTINGS)


@pytest.mark.slow
def test_planted_random_profiles_top_the_list(trained: TrainedModel, data: tuple[RatingMatrix, np.ndarray]) -> None:
    found = find_anomalies(trained, n=10)
    top = [a.user_id for a in found]
    print(f"{trained.orientation}: top 10 {top}, z-scores {[round(a.z_score, 1) for a in found]}")
    assert set(data[1]) <= set(top)
    assert [a.rank for a in found] == list(range(1, 11))
    assert all(a.rmse >= b.rmse for a, b in zip(found, found[1:]))
    bots = [a for a in found if a.user_id in set(data[1])]
    assert min(a.z_score for a in bots) > 2.0


def test_the_error_is_the_rmse_of_each_users_own_ratings_whatever_the_chunks(trained: TrainedModel) -> None:
    errors = reconstruction_errors(trained, min_ratings=30)
    chunked = reconstruction_errors(trained, min_ratings=30, chunk_ratings=97)  # many small chunks
    assert np.allclose(errors.rmse, chunked.rmse, equal_nan=True)
    csr = trained.inputs.csr
    for row in (0, 7, N_USERS + 2):
        cols = csr.indices[csr.indptr[row]:csr.indptr[row + 1]]
        values = csr.data[csr.indptr[row]:csr.indptr[row + 1]]
        predicted = trained.predict(np.full(cols.size, row), cols)
        expected = np.sqrt(np.mean((predicted.astype(np.float64) - values) ** 2)) if cols.size >= 30 else np.nan
        assert errors.rmse[row] == pytest.approx(expected, nan_ok=True)
    counts = np.diff(csr.indptr)
    assert np.array_equal(errors.scored, counts >= 30)
    z = errors.z_scores()[errors.scored]
    assert abs(z.mean()) < 1e-9 and z.std() == pytest.approx(1.0)


def test_too_few_ratings_everywhere_is_a_one_line_error(trained: TrainedModel) -> None:
    most = int(np.diff(trained.inputs.csr.indptr).max())
    with pytest.raises(RecaeError, match=f"no user has {most + 1} training ratings") as caught:
        find_anomalies(trained, min_ratings=most + 1)
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_the_command_lists_the_bots(tmp_path: Path, data: tuple[RatingMatrix, np.ndarray]) -> None:
    home = publish_planted(tmp_path / "home", data[0], model_config("stacked", hidden=(32,)), SETTINGS)
    runner = CliRunner()
    result = runner.invoke(cli, ["--home", str(home), "anomalies", "-n", "10", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    listed = json.loads(result.stdout)
    assert len(listed) == 10 and set(data[1]) <= {a["user_id"] for a in listed}
    assert {"rank", "user_id", "n_ratings", "rmse", "z_score", "mean_rating"} == set(listed[0])
    result = runner.invoke(cli, ["--home", str(home), "anomalies", "--min-ratings", "100000"])
    assert result.exit_code == 1 and "lower --min-ratings" in result.stderr
    help_text = runner.invoke(cli, ["anomalies", "--help"]).stdout
    assert "Example" in help_text and "recae anomalies" in help_text
