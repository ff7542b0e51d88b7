"""The registry's publish path as the nightly job uses it: extra files in the folder, the champion crowned in a
second transaction, and a failure while crowning undone; the Mult-VAE's folders read with the shared helpers."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from recae.artifacts.model_files import version_name
from recae.artifacts.multvae_files import load_multvae, new_version_name, save_multvae
from recae.models.multvae import MultVAE, MultVAEConfig
from recae.serving.recommend import precompute_recommendations
from recae.serving.registry import champion_of, load_champion, publish
from recae.store.db import ModelVersion, Recommendation
from tests.artifacts.test_artifacts import trained_model


def _recommendations(engine, version: str) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Recommendation)
                            .where(Recommendation.version == version)).scalar_one()


def test_publish_crowned_apart_writes_extra_files_and_serves_with_its_recommendations(engine, tmp_path: Path) -> None:
    models = tmp_path / "models"
    first = publish(engine, models, trained_model("item", seed=1))
    trained = trained_model("item", seed=2)

    def precompute(conn: Connection, version: str) -> int:
        return precompute_recommendations(conn, version, trained, trained.inputs, n=5)

    second = publish(engine, models, trained, precompute=precompute, crown_apart=True,
                     extra_files=lambda folder: (folder / "holdout.txt").write_text("held out\n"))
    assert champion_of(engine) == second.version != first.version
    assert (models / second.version / "holdout.txt").read_text() == "held out\n"
    assert not list(models.glob(".tmp-*"))
    assert _recommendations(engine, second.version) == 5 * trained.index.n_users
    rows = np.arange(trained.index.n_users)
    np.testing.assert_allclose(load_champion(engine, models).score_rows(rows), trained.score_rows(rows), atol=1e-5)


@pytest.mark.faults
def test_a_failure_while_crowning_apart_removes_the_new_version_and_keeps_the_champion(engine, tmp_path: Path) -> None:
    models = tmp_path / "models"
    first = publish(engine, models, trained_model("item", seed=1))
    trained = trained_model("item", seed=2)

    def precompute(conn: Connection, version: str) -> int:
        precompute_recommendations(conn, version, trained, trained.inputs, n=5)
        raise RuntimeError("killed while precomputing")

    with pytest.raises(RuntimeError, match="killed while precomputing"):
        publish(engine, models, trained, precompute=precompute, crown_apart=True)
    assert champion_of(engine) == first.version
    assert [p.name for p in models.iterdir()] == [first.version]
    with engine.connect() as conn:
        assert conn.execute(select(ModelVersion.version)).scalars().all() == [first.version]
        assert conn.execute(select(func.count()).select_from(Recommendation)).scalar_one() == 0
    assert load_champion(engine, models).index.n_users == 40


def test_versions_of_every_model_family_are_named_alike() -> None:
    at = datetime(2026, 11, 28, 10, 5, 7, 123456, tzinfo=UTC)
    assert version_name(at, "stacked", "item") == "20261128T100507123456Z-stacked-item"
    assert new_version_name(at) == version_name(at, "multvae") == "20261128T100507123456Z-multvae"


def _old_multvae_folder(folder: Path, module: MultVAE, movie_ids: np.ndarray) -> None:
    """A Mult-VAE folder exactly as recae wrote it before its files went through ``recae.artifacts.model_files``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    weights = folder / "weights.safetensors"
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}, str(weights))
    meta = {"format": "recae-multvae", "format_version": 1, "model": "mult-vae",
            "config": {"hidden": module.config.hidden, "latent": module.config.latent,
                       "dropout": module.config.dropout},
            "train_config": None, "movie_ids": movie_ids.tolist(), "split": {"name": "users"},
            "metrics": {"test_recall@20": 0.5}, "history": [],
            "versions": {"recae": "0.1.0", "torch": "2.6.0", "python": "3.12.0"},
            "created_at": "2026-11-01T00:00:00+00:00",
            "files": {"weights.safetensors": {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                                              "bytes": weights.stat().st_size}}}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def test_a_multvae_folder_written_before_the_shared_helpers_still_loads_and_new_ones_keep_its_layout(
        tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = MultVAE(12, MultVAEConfig(hidden=8, latent=4)).eval()
    movie_ids = np.arange(100, 112, dtype=np.int64)
    _old_multvae_folder(tmp_path / "old", module, movie_ids)
    loaded = load_multvae(tmp_path / "old")
    for name, tensor in module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], tensor), name
    assert np.array_equal(loaded.movie_ids, movie_ids) and loaded.metrics == {"test_recall@20": 0.5}
    assert [r.movie_id for r in loaded.recommend([100, 101], n=3)][0] in set(movie_ids.tolist()) - {100, 101}

    save_multvae(loaded, tmp_path / "new")
    old_meta = json.loads((tmp_path / "old" / "meta.json").read_text())
    new_meta = json.loads((tmp_path / "new" / "meta.json").read_text())
    assert list(new_meta) == list(old_meta)  # the same keys in the same order
    assert new_meta["files"] == old_meta["files"]  # the same weights, byte for byte
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["meta.json", "weights.safetensors"]
