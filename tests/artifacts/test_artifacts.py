"""Artifacts: save/load round-trips, damage is detected, publishing is atomic and moves the champion."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from recae.artifacts.model_files import META_FILE, WEIGHTS_FILE, load_model, save_model
from recae.artifacts.train_config import TrainConfig
from recae.artifacts.trained_model import TrainedModel
from recae.errors import CorruptArtifactError, ModelNotFoundError
from recae.models.build import model_config
from recae.serving.registry import load_champion, publish
from recae.store.db import Champion, ModelVersion, make_engine
from recae.store.matrix import RatingMatrix
from recae.training.train import fit
from tests.support.synthetic import planted_low_rank


def trained_model(orientation: str, seed: int = 0, name: str = "stacked") -> TrainedModel:
    observed = planted_low_rank(n_users=40, n_movies=30, seed=seed, user_id_offset=100).observed
    keep = np.random.default_rng(seed).random(observed.nnz) >= 0.1
    settings = TrainConfig(ensemble=1, weight_decay_grid=(), epochs=5, lr=1e-2, batch_ratings=400, seed=seed, threads=1)
    result = fit(observed.subset(keep), observed.subset(~keep), model_config(name, orientation=orientation,
                                                                             hidden=(12, 6)), settings)
    return TrainedModel.from_fit(result.module, observed, train_config=settings,
                                 split_spec={"name": "random", "test_fraction": 0.1, "seed": seed},
                                 metrics={"val_rmse": result.best_val_rmse},
                                 history=[asdict(h) for h in result.history])


def add_cold_movie(matrix: RatingMatrix) -> RatingMatrix:
    """A copy with one more movie that nobody rated (the model must fall back, not crash)."""
    from recae.store.matrix import IdIndex

    index = IdIndex(matrix.index.user_ids, np.append(matrix.index.movie_ids, matrix.index.movie_ids[-1] + 1))
    rows, cols, values = matrix.coo()
    return RatingMatrix.from_positions(rows, cols, values, matrix.timestamps, index)


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_predict_and_score_rows_agree_and_stay_on_the_scale(orientation: str) -> None:
    trained = trained_model(orientation)
    rows = np.array([0, 3, 3, 39])
    scores = trained.score_rows(rows)
    assert scores.shape == (4, 30)
    all_rows = np.repeat(rows, 30)
    all_cols = np.tile(np.arange(30), 4)
    assert np.allclose(trained.predict(all_rows, all_cols), scores.reshape(-1), atol=1e-5)
    assert scores.min() >= 1.0 and scores.max() <= 5.0


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_save_load_round_trip_gives_identical_predictions(tmp_path: Path, orientation: str) -> None:
    trained = trained_model(orientation)
    save_model(trained, tmp_path / "v1", version="v1")
    loaded = load_model(tmp_path / "v1")
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 40, 500), rng.integers(0, 30, 500)
    for name, tensor in trained.module.state_dict().items():  # a byte copy: exact on any CPU
        assert np.array_equal(loaded.network.arrays()[name], tensor.numpy()), name
        assert torch.equal(loaded.torch_module().state_dict()[name], tensor), name  # rebuilt for training on
    # The same weights, run by numpy once loaded (recae.artifacts.inference): equal up to float32 rounding,
    # far below any real difference in a rating.
    np.testing.assert_allclose(loaded.predict(rows, cols), trained.predict(rows, cols), rtol=0, atol=1e-5)
    np.testing.assert_allclose(loaded.score_rows(np.arange(40)), trained.score_rows(np.arange(40)), rtol=0, atol=1e-5)
    assert loaded.model_config == trained.model_config and loaded.train_config == trained.train_config
    assert np.array_equal(loaded.index.user_ids, trained.index.user_ids)
    assert loaded.metrics == trained.metrics and loaded.split_spec == trained.split_spec
    assert len(loaded.history) == 5 and loaded.history == trained.history  # learning curves for `recae plot curves`


def test_meta_records_what_the_brief_asks_for(tmp_path: Path) -> None:
    trained = trained_model("item")
    meta = save_model(trained, tmp_path / "v", version="v", data_fingerprint="abc")
    on_disk = json.loads((tmp_path / "v" / META_FILE).read_text())
    assert on_disk == json.loads(json.dumps(meta))
    assert {"model", "model_config", "train_config", "index", "split", "metrics", "data_fingerprint",
            "rating_scale", "versions", "created_at"} <= set(on_disk)
    assert set(on_disk["versions"]) == {"recae", "torch", "python"}
    assert on_disk["data_fingerprint"] == "abc"


def test_a_movie_without_training_ratings_gets_the_users_mean_in_item_orientation() -> None:
    trained = trained_model("item")
    cold = add_cold_movie(trained.inputs)
    model = TrainedModel.from_fit(trained.module, cold)
    row = 5
    user_ratings = trained.inputs.csr[row].data
    assert model.predict(np.array([row]), np.array([30]))[0] == pytest.approx(float(user_ratings.mean()), abs=0.3)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes()[:-50]), "truncated"),
        (lambda d: (d / WEIGHTS_FILE).unlink(), "missing weights.safetensors"),
        (lambda d: (d / META_FILE).write_text("{not json"), "unreadable"),
        (lambda d: (d / META_FILE).unlink(), "missing meta.json"),
    ],
)
def test_damaged_artifacts_raise_one_line_corrupt_artifact_error(tmp_path: Path, damage, message: str) -> None:
    save_model(trained_model("item"), tmp_path / "v", version="v")
    damage(tmp_path / "v")
    with pytest.raises(CorruptArtifactError, match=message) as caught:
        load_model(tmp_path / "v")
    assert "\n" not in str(caught.value)


def test_meta_inconsistent_with_the_weights_is_detected(tmp_path: Path) -> None:
    save_model(trained_model("item"), tmp_path / "v", version="v")
    meta_path = tmp_path / "v" / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["model_config"]["hidden"] = [13, 6]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CorruptArtifactError, match="do not match"):
        load_model(tmp_path / "v")


@pytest.mark.parametrize(("edit", "message"), [
    ({"model_config": {"hidden": [64]}}, r"weights do not match meta.json \(model/: tensors unexpected \[.decoder"),
    ({"rating_scale": [5, 1]}, r"rating_scale \[5, 1\] is not \[LOW, HIGH\]"),
    ({"rating_scale": [3, 3]}, r"rating_scale \[3, 3\] is not \[LOW, HIGH\]"),
])
def test_an_edited_meta_json_is_one_line_naming_the_problem(tmp_path: Path, edit: dict, message: str) -> None:
    save_model(trained_model("item"), tmp_path / "v", version="v")
    meta_path = tmp_path / "v" / META_FILE
    meta = json.loads(meta_path.read_text())
    for key, value in edit.items():
        meta[key] = {**meta[key], **value} if isinstance(value, dict) else value
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CorruptArtifactError, match=message) as caught:
        load_model(tmp_path / "v")
    assert "\n" not in str(caught.value)


def test_publish_records_the_version_and_makes_it_champion(engine, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no trained model yet; run `recae train`"):
        load_champion(engine)
    first = publish(engine, tmp_path / "models", trained_model("item", seed=1), data_fingerprint="f1")
    second_model = trained_model("user", seed=2)
    second = publish(engine, tmp_path / "models", second_model, data_fingerprint="f2")
    with engine.connect() as conn:
        rows = {r.version: r for r in conn.execute(
            select(ModelVersion.version, ModelVersion.orientation, ModelVersion.split, ModelVersion.metrics))}
        champion = conn.execute(select(Champion.version).where(Champion.id == 1)).scalar()
    assert set(rows) == {first.version, second.version} and champion == second.version
    assert rows[second.version].orientation == "user" and rows[second.version].split == "random"
    assert json.loads(rows[second.version].metrics) == second_model.metrics
    assert second.path == second.version  # relative to the models folder: the home may move
    assert (tmp_path / "models" / second.path).is_dir() and not list((tmp_path / "models").glob(".tmp-*"))
    rows_, cols_ = np.arange(40), np.arange(40) % 30
    np.testing.assert_allclose(load_champion(engine, tmp_path / "models").predict(rows_, cols_),
                               second_model.predict(rows_, cols_), rtol=0, atol=1e-5)


@pytest.mark.faults
def test_a_failed_publish_leaves_store_folder_and_champion_as_they_were(engine, tmp_path: Path) -> None:
    models = tmp_path / "models"
    first = publish(engine, models, trained_model("item"))
    blank = make_engine(f"sqlite:///{tmp_path / 'unmigrated.db'}")  # no tables: the INSERT fails
    with pytest.raises(Exception):  # noqa: B017 - whatever SQLAlchemy raises, nothing may be left behind
        publish(blank, models, trained_model("item", seed=4))
    assert [p.name for p in models.iterdir()] == [first.version]
    with engine.connect() as conn:
        assert conn.execute(select(Champion.version)).scalar() == first.version


def test_scoring_chunks_bound_both_vectors_and_their_ratings() -> None:
    from recae.artifacts.trained_model import _chunks

    lengths = np.array([5, 5, 20, 1, 1, 1])
    chunks = _chunks(lengths, max_items=2, max_total=10)
    assert chunks == [slice(0, 2), slice(2, 3), slice(3, 5), slice(5, 6)]  # the long one alone, none split
    assert _chunks(np.zeros(0, np.int64), 2, 10) == []
