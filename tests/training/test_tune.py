"""`recae train --tune`: the search reads only the training part, keeps its budget, adapts to the data, and is
stored with the model (meta.json, the store row, `models show`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from recae.artifacts.train_config import TrainConfig
from recae.cli import cli
from recae.errors import EXIT_USAGE
from recae.models.build import model_config
from recae.store.matrix import RatingMatrix
from recae.training import tune as tune_module
from recae.training.tune import start_setting, tune
from tests.support.synthetic import planted_low_rank

SMALL = """
[model]
hidden = [24]
[train]
epochs = 15
batch_ratings = 300
threads = 1
"""
#: a tiny search: the start, lambda's two neighbours and a few steps more (each trial is a fraction of a second)
FEW_TRIALS = 6


def small_config(**overrides: object) -> TrainConfig:
    return TrainConfig.from_json({"epochs": 15, "batch_ratings": 300, "threads": 1, "deterministic": True,
                                  **overrides})


def half_stars(matrix: RatingMatrix) -> RatingMatrix:
    """The same ratings mapped from 1..5 onto 0.5..5 in half stars (ml-latest-small's scale)."""
    rows, cols, values = matrix.coo()
    stars = np.clip(np.round((0.5 + (values - 1.0) * 4.5 / 4.0) * 2) / 2, 0.5, 5.0).astype(np.float32)
    return RatingMatrix.from_positions(rows, cols, stars, matrix.timestamps, matrix.index)


def write_csv(matrix: RatingMatrix, path: Path) -> Path:
    rows, cols, values = matrix.coo()
    lines = ["user_id,movie_id,rating,timestamp"] + [
        f"{u},{m},{v:g},{t}" for u, m, v, t in zip(matrix.index.user_ids[rows], matrix.index.movie_ids[cols], values,
                                                   matrix.timestamps, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_search_never_reads_test_ratings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two stores that differ only in the test ratings of a random split: the same trials and the same choice,
    while the final test scores differ (the changed ratings are really the test set)."""
    from recae.evaluation.splits import SplitSpec, random_split
    from recae.paths import resolve_paths
    from recae.serving.publish import train_and_publish
    from recae.store.db import open_store
    from recae.store.ingest import ingest_ratings_file

    monkeypatch.setattr(tune_module, "MAX_TRIALS", FEW_TRIALS)
    matrix = half_stars(planted_low_rank(n_users=70, n_movies=50, density=0.3, seed=3).observed)
    spec = SplitSpec("random", 0.1, 0)
    rows, cols, values = matrix.coo()
    split = random_split(matrix, 0.1, 0)
    test_keys = set(zip(*split.test.coo()[:2], strict=True))
    in_test = np.array([(r, c) in test_keys for r, c in zip(rows, cols, strict=True)])
    flipped = RatingMatrix.from_positions(rows, cols, np.where(in_test, 5.5 - values, values).astype(np.float32),
                                          matrix.timestamps, matrix.index)
    records, test_rmse = [], []
    for name, data in (("original", matrix), ("flipped", flipped)):
        home = tmp_path / name
        paths = resolve_paths(home)
        engine = open_store(paths.database_url)
        try:
            ingest_ratings_file(engine, write_csv(data, tmp_path / f"{name}.csv"), scale=(0.5, 5.0), step=0.5)
            result = train_and_publish(engine, paths.models_dir, spec, model_config("denoising", hidden=[24]),
                                       small_config(ensemble=2, partner_members=1), tune_budget_s=600.0).result
        finally:
            engine.dispose()
        records.append(result.trained.tune_search)
        test_rmse.append(result.metrics["test_rmse"])
    original, other = records
    assert [t["weight_decay"] for t in original["trials"]] == [t["weight_decay"] for t in other["trials"]]
    assert original["chosen"] == other["chosen"]
    assert [t["val_rmse"] for t in original["trials"]] == pytest.approx([t["val_rmse"] for t in other["trials"]],
                                                                        rel=1e-6)
    assert test_rmse[0] != pytest.approx(test_rmse[1], abs=1e-3)  # the flipped ratings really are the test set


def test_lambda_follows_the_data_weak_for_clean_structure_strong_for_noise() -> None:
    """Planted low-noise low-rank ratings want a small lambda; ratings that are a user's bias plus heavy noise want
    one large enough to fall back on the bias (the output units' means). Same start, same few trials: the clean
    data's lambda moves below the start, the noisy data's stays at or above it (so in 5 of 5 seeds tried)."""
    clean = planted_low_rank(n_users=80, n_movies=60, density=0.35, noise=0.05, seed=0).observed
    rows, cols, _ = clean.coo()
    rng = np.random.default_rng(0)
    bias = rng.uniform(2.0, 4.0, clean.shape[0])
    values = np.clip(bias[rows] + rng.normal(0.0, 1.2, rows.size), 1.0, 5.0).astype(np.float32)
    noisy = RatingMatrix.from_positions(rows, cols, values, clean.timestamps, clean.index)
    model_cfg = model_config("denoising", hidden=[24])
    cfg = small_config(ranker="none", lr=0.01)  # tiny data: a larger step converges within the 15 epochs
    start = start_setting(clean, model_cfg, cfg).weight_decay
    assert start == start_setting(noisy, model_cfg, cfg).weight_decay  # the same ratings per unit
    chosen = {}
    for name, data in (("clean", clean), ("noise", noisy)):
        result = tune(data, model_cfg, cfg, budget_s=600.0, max_trials=FEW_TRIALS)
        chosen[name] = result.train_config.weight_decay
        assert result.record["stopped"] in ("max_trials", "converged")
    assert chosen["clean"] < start <= chosen["noise"], chosen


def test_the_space_follows_the_data() -> None:
    """Widths never exceed the units a vector has; lambda's start grows with the ratings per unit."""
    sparse = planted_low_rank(n_users=30, n_movies=200, density=0.05, seed=0).observed
    dense = planted_low_rank(n_users=30, n_movies=200, density=0.6, seed=0).observed
    model_cfg = model_config("denoising")  # 300 hidden units
    assert start_setting(sparse, model_cfg, TrainConfig()).hidden == (30,)  # item vectors over 30 users
    assert start_setting(sparse, replace(model_cfg, orientation="user"), TrainConfig()).hidden == (200,)
    assert start_setting(dense, model_cfg, TrainConfig()).weight_decay > \
        2 * start_setting(sparse, model_cfg, TrainConfig()).weight_decay


def test_tune_refuses_the_rbm_with_one_line() -> None:
    matrix = planted_low_rank(n_users=20, n_movies=15, seed=0).observed
    with pytest.raises(Exception, match="--tune searches the autoencoders"):
        tune(matrix, model_config("rbm"), small_config(), budget_s=60.0)


def test_cli_tune_on_half_stars_keeps_a_tiny_budget_and_shows_the_search(tmp_path: Path) -> None:
    """`train --tune --budget` end to end on a half-star store: a budget below the final training's estimate stops
    after the first trial, trains fewer members, and the trials reach meta.json, the store and `models show`."""
    from recae.paths import resolve_paths
    from recae.serving.registry import load_champion
    from recae.store.db import open_store

    matrix = half_stars(planted_low_rank(n_users=70, n_movies=50, density=0.3, seed=5).observed)
    home = tmp_path / "home"
    config = tmp_path / "small.toml"
    config.write_text(SMALL)
    assert run(home, "ingest", "--ratings", str(write_csv(matrix, tmp_path / "ratings.csv")))[0] == 0

    code, _, err = run(home, "train", "--budget", "1")
    assert code == EXIT_USAGE and "--tune" in err

    code, out, err = run(home, "train", "--tune", "--budget", "0.02", "--config", str(config), "--format", "json")
    assert code == 0, err
    summary = json.loads(out)
    assert "trials in" in summary["tuned"] and 0.5 <= summary["test_rmse"] < 1.5

    code, out, err = run(home, "models", "show", "--format", "json")
    assert code == 0, err
    record = json.loads(out)["config"]["tune"]
    assert record["budget_s"] == 1.2 and record["stopped"] == "budget"
    assert 1 <= len(record["trials"]) <= 2 and record["trials"][0]["val_rmse"] > 0
    assert record["chosen"]["ensemble"] == 1 and "budget cannot hold" in record["members"]
    assert record["ranker_trials"] and record["ranker_trials"][0]["trials"]  # EASE's lambdas, with their NDCG

    engine = open_store(resolve_paths(home).database_url)
    try:
        trained = load_champion(engine, resolve_paths(home).models_dir)
    finally:
        engine.dispose()
    assert trained.tune_search == record
    assert trained.train_config.ensemble == 1 and trained.train_config.weight_decay == record["chosen"]["weight_decay"]
    assert trained.ranker_search["lambda"] == record["chosen"]["ranker_lambda"]

    code, out, err = run(home, "models", "show")
    assert code == 0, err
    assert "Tuning trials" in out and "start" in out and "val_rmse" in out and "Ranker trials" in out
