"""`recae train --model rbm` and `--pretrain rbm` end to end on a tiny real store: train, recommend (known user and
fold-in), evaluate, a TOML-configured conditional U-RBM, and the nightly retrain of an RBM champion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from recae.cli import cli
from tests.models.test_rbm_cf import planted_taste

SMALL = """
[model]
hidden = [16]
[train]
epochs = 8
ensemble = 1
batch_ratings = 300
"""


def run(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def _write(path: Path, users: np.ndarray, movies: np.ndarray, values: np.ndarray) -> Path:
    lines = ["user_id,movie_id,rating"] + [f"{u},{m},{v:g}" for u, m, v in zip(users, movies, values, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_rbm_and_rbm_pretraining_train_recommend_evaluate_and_retrain(tmp_path: Path) -> None:
    matrix = planted_taste(n_users=80, n_movies=50, seed=2)
    rows, cols, values = matrix.coo()
    users, movies = matrix.index.user_ids[rows], matrix.index.movie_ids[cols]
    fresh = np.random.default_rng(0).random(rows.size) < 0.1
    initial = _write(tmp_path / "ratings.csv", users[~fresh], movies[~fresh], values[~fresh])
    config, rbm_config = tmp_path / "small.toml", tmp_path / "rbm.toml"
    config.write_text(SMALL)
    rbm_config.write_text(SMALL.replace("[model]", "[model]\ncd_lr = 0.2"))  # tiny data: few steps per epoch
    home = tmp_path / "home"
    assert run(home, "ingest", "--ratings", str(initial))[0] == 0

    code, out, err = run(home, "train", "--model", "rbm", "--config", str(rbm_config), "--format", "json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["model"] == "rbm" and summary["orientation"] == "item" and summary["test_rmse"] < 1.3

    code, out, err = run(home, "recommend", "--user", "1", "--format", "json")
    assert code == 0, err
    films = json.loads(out)
    rated = set(movies[(users == 1) & ~fresh])
    assert len(films) == 10 and not rated & {f["movie_id"] for f in films}
    code, out, err = run(home, "recommend", "--rate", "1=5", "--rate", "2=1", "--format", "json")
    assert code == 0, err
    assert len(json.loads(out)) == 10
    code, out, err = run(home, "evaluate", "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["rmse"] < report["baselines"]["global_mean"]["rmse"]
    code, out, err = run(home, "similar", "--movie", "1", "-n", "3", "--format", "json")
    assert code == 0 and len(json.loads(out)) == 3, err

    toml_rbm = tmp_path / "urbm.toml"
    toml_rbm.write_text(rbm_config.read_text().replace("[model]", '[model]\nname = "rbm"\norientation = "user"\n'
                                                                  "cd_steps = 2\nconditional = true"))
    code, out, err = run(home, "train", "--config", str(toml_rbm), "--format", "json")
    assert code == 0, err
    assert json.loads(out)["model"] == "rbm" and json.loads(out)["orientation"] == "user"
    code, out, err = run(home, "recommend", "--rate", "1=5", "--rate", "2=1", "--format", "json")  # conditional fold-in
    assert code == 0 and len(json.loads(out)) == 10, err

    code, out, err = run(home, "train", "--model", "stacked", "--pretrain", "rbm", "--config", str(config),
                         "--format", "json")
    assert code == 0, err
    version = json.loads(out)["version"]
    code, out, err = run(home, "models", "show", version, "--format", "json")
    assert code == 0, err
    assert '"pretrain": "rbm"' in out.replace(" ", "").replace('":"', '": "')
    code, out, err = run(home, "recommend", "--user", "1", "--format", "json")
    assert code == 0 and len(json.loads(out)) == 10

    # the nightly job: an RBM champion is retrained from scratch on the fresh ratings
    code, out, err = run(home, "train", "--model", "rbm", "--config", str(rbm_config), "--format", "json")
    assert code == 0, err
    inbox = home / "inbox"
    inbox.mkdir()
    _write(inbox / "fresh.csv", users[fresh], movies[fresh], values[fresh])
    code, out, err = run(home, "retrain", "--warm-epochs", "2", "--margin", "0")
    assert code == 0, err
    assert "Traceback" not in err


def test_a_bad_pretrain_choice_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run(tmp_path, "train", "--pretrain", "boltzmann")
    assert code == 2 and "boltzmann" in err
