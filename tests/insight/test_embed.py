"""Exported codes: one row per user or movie, the same numbers as the model's codes, CSV or Parquet."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from recae.artifacts.train_config import TrainConfig
from recae.artifacts.trained_model import TrainedModel
from recae.cli import cli
from recae.errors import RecaeError
from recae.insight.embed import export_codes
from recae.insight.latent import latent_codes
from recae.models.build import model_config
from tests.insight.test_latent import planted_clusters, publish_planted, train_small

SETTINGS = TrainConfig(ensemble=1, weight_decay_grid=(), epochs=3, lr=1e-2, seed=0, threads=1)


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    matrix, _ = planted_clusters(n_users=50, n_clusters=3, per_cluster=10)
    return train_small(matrix, model_config("stacked", orientation="item", hidden=(12, 4)), SETTINGS)


@pytest.mark.parametrize(("side", "width", "id_column"), [("movies", 4, "movie_id"), ("users", 12, "user_id")])
def test_csv_holds_every_id_with_its_code(trained: TrainedModel, tmp_path: Path, side: str, width: int,
                                          id_column: str) -> None:
    report = export_codes(trained, side, tmp_path / "codes.csv")
    frame = pd.read_csv(tmp_path / "codes.csv")
    codes = latent_codes(trained, side)
    assert list(frame.columns) == [id_column, "n_ratings", *(f"code_{j}" for j in range(width))]
    assert report.rows == len(frame) == codes.ids.size and report.dims == width
    assert np.array_equal(frame[id_column].to_numpy(), codes.ids)
    assert np.allclose(frame.iloc[:, 2:].to_numpy(), codes.codes, rtol=1e-6, atol=1e-7)
    assert frame["n_ratings"].sum() == trained.inputs.nnz
    assert report.source == ("code layer" if side == "movies" else "output weights")
    assert report.bytes == (tmp_path / "codes.csv").stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["codes.csv"]  # no temporary file left


def test_parquet_round_trips_exactly(trained: TrainedModel, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    report = export_codes(trained, "movies", tmp_path / "codes.parquet")
    frame = pd.read_parquet(tmp_path / "codes.parquet")
    assert report.file_format == "parquet" and len(frame) == 30
    assert np.array_equal(frame.iloc[:, 2:].to_numpy(), latent_codes(trained, "movies").codes)


def test_parquet_without_pyarrow_says_how_to_get_it(trained: TrainedModel, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(RecaeError, match=r'pip install "recae\[export\]"') as caught:
        export_codes(trained, "movies", tmp_path / "codes.parquet")
    assert "\n" not in str(caught.value) and not list(tmp_path.iterdir())
    export_codes(trained, "movies", tmp_path / "codes.csv")  # CSV still works


def test_unknown_suffix_and_missing_folder_are_one_line_errors(trained: TrainedModel, tmp_path: Path) -> None:
    with pytest.raises(RecaeError, match="FILE.csv or FILE.parquet"):
        export_codes(trained, "movies", tmp_path / "codes.xlsx")
    with pytest.raises(RecaeError, match="does not exist"):
        export_codes(trained, "movies", tmp_path / "nowhere" / "codes.csv")


@pytest.mark.slow
def test_the_command_exports_both_sides(tmp_path: Path) -> None:
    matrix, _ = planted_clusters(n_users=60, n_clusters=3, per_cluster=10)
    home = publish_planted(tmp_path / "home", matrix, model_config("stacked", hidden=(12, 4)), SETTINGS)
    runner = CliRunner()
    out = tmp_path / "users.csv"
    result = runner.invoke(cli, ["--home", str(home), "embed", "--users", "--out", str(out), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == 60 and report["side"] == "users" and report["dims"] == 12
    assert len(pd.read_csv(out)) == 60
    result = runner.invoke(cli, ["--home", str(home), "embed", "--out", str(tmp_path / "m.json")])
    assert result.exit_code == 1 and "FILE.csv or FILE.parquet" in result.stderr
    help_text = runner.invoke(cli, ["embed", "--help"]).stdout
    assert "Example" in help_text and "recae embed" in help_text
