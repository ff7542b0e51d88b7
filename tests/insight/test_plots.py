"""Figures: each plot writes a real PNG of sensible size; the data behind it is checked against brute force."""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from recae.artifacts.trained_model import TrainedModel
from recae.cli import cli
from recae.errors import EXIT_ERROR, RecaeError
from recae.insight.latent import Colouring, colouring, latent_map, separation
from recae.insight.plots import curve_members, errors_by_activity, plot_curves, plot_errors, plot_latent
from tests.insight.test_latent import MAP_MODEL, MAP_TRAINING, planted_clusters, publish_planted, train_small

pytest.importorskip("matplotlib")


def png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the PNG header; fails unless the file is a PNG."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def run(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    matrix, _ = planted_clusters(n_users=120, n_clusters=4, per_cluster=20)
    return train_small(matrix, train_cfg=replace(MAP_TRAINING, epochs=8))


def test_curves_draw_every_member_of_an_ensemble(trained: TrainedModel, tmp_path: Path) -> None:
    history = trained.history + trained.history[:5]  # a second member that stopped after 5 epochs
    assert [len(m) for m in curve_members(history)] == [8, 5]
    drawn = plot_curves(history, tmp_path / "curves.png")
    assert drawn.members == 2 and drawn.epochs == 13
    assert png_size(drawn.file.path) == (drawn.file.width, drawn.file.height) == (1100, 450)
    assert 10_000 < drawn.file.bytes < 2_000_000
    with pytest.raises(RecaeError, match="no training history"):
        plot_curves([], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


@pytest.mark.parametrize("colour", ["categories", "activity"])
def test_the_latent_plot_has_two_panels_and_reports_its_scores(trained: TrainedModel, tmp_path: Path,
                                                               colour: str) -> None:
    latent = latent_map(trained, "movies")
    if colour == "categories":
        colours = Colouring("genre", np.array([f"group {g}" for g in np.repeat(np.arange(4), 20)], dtype=object), True)
        scores = separation(latent, colours.values)
    else:
        colours, scores = colouring(None, latent, "activity"), None
    drawn = plot_latent(latent, colours, tmp_path / "latent.png", separation=scores)
    assert png_size(drawn.path) == (1200, 550) and 20_000 < drawn.bytes < 3_000_000


def test_errors_by_activity_partition_the_held_out_ratings(trained: TrainedModel, tmp_path: Path) -> None:
    matrix, _ = planted_clusters(n_users=120, n_clusters=4, per_cluster=20, seed=9)  # other ratings, same index
    test = matrix.subset(np.random.default_rng(0).random(matrix.nnz) < 0.2)
    buckets = errors_by_activity(trained, test, edges=(1, 10, 20))
    assert sum(b.n_ratings for b in buckets) == test.nnz
    assert sum(b.n_users for b in buckets) == int((np.diff(test.csr.indptr) > 0).sum())
    rows, cols, values = test.coo()
    error = trained.predict(rows, cols) - values
    overall = np.sqrt(sum(b.rmse**2 * b.n_ratings for b in buckets) / test.nnz)
    assert overall == pytest.approx(float(np.sqrt(np.mean(error.astype(np.float64) ** 2))), rel=1e-6)
    activity = np.diff(trained.inputs.csr.indptr)[rows]
    busy = activity >= 20
    assert buckets[-1].low == 20 and buckets[-1].high is None and buckets[-1].label == "20+"
    assert buckets[-1].rmse == pytest.approx(float(np.sqrt(np.mean(error[busy].astype(np.float64) ** 2))), rel=1e-6)
    drawn = plot_errors(buckets, tmp_path / "errors.png")
    assert png_size(drawn.path) == (900, 450) and drawn.bytes > 10_000


def test_missing_matplotlib_is_a_one_line_error_with_the_install_hint(trained: TrainedModel, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(RecaeError, match=r'pip install "recae\[plot\]"') as caught:
        plot_curves(trained.history, tmp_path / "curves.png")
    assert "\n" not in str(caught.value) and not (tmp_path / "curves.png").exists()


def test_only_png_files_in_existing_folders(trained: TrainedModel, tmp_path: Path) -> None:
    with pytest.raises(RecaeError, match="not a .png"):
        plot_curves(trained.history, tmp_path / "curves.jpg")
    with pytest.raises(RecaeError, match="does not exist"):
        plot_curves(trained.history, tmp_path / "missing" / "curves.png")


# --- the commands ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with planted movie clusters (genres named after them) and a champion with a 2-unit code."""
    matrix, groups = planted_clusters()
    names = ["Action", "Comedy", "Drama", "Horror", "Romance", "Western"]
    genres = {int(m): names[g] for m, g in zip(matrix.index.movie_ids, groups, strict=True)}
    return publish_planted(tmp_path_factory.mktemp("plots"), matrix, MAP_MODEL, MAP_TRAINING, genres)


@pytest.mark.parametrize("command", [["plot"], ["plot", "curves"], ["plot", "latent"], ["plot", "errors"]])
def test_plot_commands_have_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0 and "Example" in result.stdout and "recae plot" in result.stdout


def test_plot_commands_without_a_model_say_what_to_run(tmp_path: Path) -> None:
    code, out, err = run(tmp_path, "plot", "curves", "--out", str(tmp_path / "c.png"))
    assert code == EXIT_ERROR and out == "" and "recae train" in err and err.strip().count("\n") == 0


@pytest.mark.slow
def test_each_plot_command_writes_a_png(home: Path, tmp_path: Path) -> None:
    expected = {"curves": (1100, 450), "latent": (1200, 550), "errors": (900, 450)}
    for name, size in expected.items():
        out = tmp_path / f"{name}.png"
        code, stdout, err = run(home, "plot", name, "--out", str(out), "--format", "json")
        assert code == 0, err
        assert png_size(out) == size and 10_000 < out.stat().st_size < 3_000_000
        if name == "errors":
            buckets = json.loads(stdout)
            assert sum(b["n_ratings"] for b in buckets) > 0 and all(b["rmse"] > 0 for b in buckets)
        else:
            assert json.loads(stdout)["bytes"] == out.stat().st_size


@pytest.mark.slow
def test_plot_latent_separates_the_planted_genres_better_than_pca(home: Path, tmp_path: Path) -> None:
    code, out, err = run(home, "plot", "latent", "--movies", "--out", str(tmp_path / "m.png"), "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    print(f"plot latent on planted genres: 10-NN accuracy autoencoder {report['knn_accuracy_autoencoder']:.3f} "
          f"vs PCA {report['knn_accuracy_pca']:.3f}")
    assert report["colour"] == "genre" and report["code_dims"] == 2 and report["source"] == "code layer"
    assert report["knn_accuracy_autoencoder"] >= report["knn_accuracy_pca"] + 0.1
    code, out, err = run(home, "plot", "latent", "--users", "--colour", "genre", "--out", str(tmp_path / "u.png"))
    assert code == EXIT_ERROR and "genres belong to movies" in err
    code, out, err = run(home, "plot", "latent", "--genre", "Musical", "--out", str(tmp_path / "u.png"))
    assert code == EXIT_ERROR and "genre 'Musical' is not in the catalogue" in err
    code, out, err = run(home, "plot", "latent", "--users", "--out", str(tmp_path / "u.png"), "--format", "json")
    assert code == 0 and json.loads(out)["source"] == "output weights" and png_size(tmp_path / "u.png")
