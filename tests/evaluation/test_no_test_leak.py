"""Training never reads the test ratings: change only their values and nothing learned or chosen moves.

The issue's Target: figures must come "from a code path that never reads test ratings before the final
scoring". Two stores hold the same (user, movie) pairs and the same training ratings; only the held-out ratings'
values differ. `recae train` (the default family: denoising item autoencoders, cross-carved ensemble, lambda chosen
from a grid, the user partner and its blend weight, the EASE ranker with its lambda search) must publish bit-equal
tensors and the same chosen settings from both, for a generated split and for ``--test-ratings FILE``.

Exact equality is legitimate here, unlike elsewhere in the suite: both trainings run in this one process, with
deterministic algorithms and one thread (``--deterministic``, ``threads = 1``), so the same inputs take the same
kernels in the same order. A control changes one training rating instead and must change the weights, so the
comparison can fail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from sqlalchemy import text

from recae.cli import cli
from tests.support.synthetic import planted_low_rank

TINY = """[model]
hidden = [16]
[train]
epochs = 3
ensemble = 2
partner_members = 1
threads = 1
deterministic = true
weight_decay_grid = [1.0, 30.0]
"""
#: What a second run may change without anything having leaked: identity, clocks, the test file's path and hash.
VOLATILE_META = {"version", "created_at", "files", "split"}


@dataclass(frozen=True)
class Ratings:
    """One store's ratings in file order: ids, half-star values and timestamps."""

    users: np.ndarray
    movies: np.ndarray
    values: np.ndarray
    stamps: np.ndarray

    def with_values(self, where: np.ndarray, values: np.ndarray) -> Ratings:
        changed = self.values.copy()
        changed[where] = values
        return Ratings(self.users, self.movies, changed, self.stamps)

    def write(self, path: Path, where: np.ndarray | None = None, header: bool = False) -> Path:
        pick = np.ones(self.users.size, dtype=bool) if where is None else where
        lines = [f"{u},{m},{r:g},{t}\n" for u, m, r, t in
                 zip(self.users[pick], self.movies[pick], self.values[pick], self.stamps[pick], strict=True)]
        path.write_text(("user_id,movie_id,rating,timestamp\n" if header else "") + "".join(lines))
        return path


@dataclass(frozen=True)
class Learned:
    """Everything a published model learned or chose, read back from its version folder."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, object]
    metrics: dict[str, float]


def run(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def other_values(values: np.ndarray) -> np.ndarray:
    """Every value moved by 2 stars, staying on 1..5, so each test rating differs."""
    return np.where(values <= 3.0, values + 2.0, values - 2.0)


def train_on(root: Path, name: str, ratings: Ratings, *split_args: str, config: str = "tiny.toml",
             genres: bool = False) -> Learned:
    """Ingest ``ratings`` into a fresh home, `recae train --config root/config` there, and read the champion's files.
    With ``genres`` the catalogue first learns a genre and a year for every film (the side part's input)."""
    home = root / name
    code, _, err = run(home, "ingest", "--ratings", str(ratings.write(root / f"{name}.csv")))
    assert code == 0, err
    if genres:
        describe_films(home / "recae.db", np.unique(ratings.movies))
    code, _, err = run(home, "train", "--config", str(root / config), *split_args)
    assert code == 0, err
    folder = next(p for p in (home / "models").iterdir() if p.is_dir() and not p.name.startswith("."))
    meta = json.loads((folder / "meta.json").read_text())
    for record in meta["history"]:
        record.pop("seconds")  # wall-clock time of each epoch
    metrics = meta.pop("metrics")
    kept = {k: v for k, v in metrics.items() if not k.startswith("test_") and "seconds" not in k}
    return Learned(tensors=load_file(str(folder / "weights.safetensors")),
                   meta={k: v for k, v in meta.items() if k not in VOLATILE_META}, metrics={**kept, "all": metrics})


def describe_films(store: Path, movie_ids: np.ndarray) -> None:
    """Give each film of the store a genre and a release year, as a MovieLens movies file would."""
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{store}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE movies SET genres = :genres, year = :year WHERE movie_id = :movie"),
                     [{"genres": ["Comedy", "Drama|Romance", "Horror"][m % 3], "year": int(1950 + 7 * (m % 9)),
                       "movie": int(m)} for m in movie_ids])
    engine.dispose()


def assert_same_learning(a: Learned, b: Learned) -> None:
    assert sorted(a.tensors) == sorted(b.tensors)
    assert {"model/w_in", "partner/w_in", "ranker/weights"} <= set(a.tensors)  # the whole family was trained
    for key in a.tensors:
        assert torch.equal(a.tensors[key], b.tensors[key]), f"{key} moved when only test ratings changed"
    chosen = ("weight_decay", "ranker_lambda", "blend_weight", "val_rmse")
    assert {k: a.metrics[k] for k in chosen} == {k: b.metrics[k] for k in chosen}
    assert a.meta["ranker"]["search"] == b.meta["ranker"]["search"]  # type: ignore[index]
    assert a.meta == b.meta
    assert {k: v for k, v in a.metrics.items() if k != "all"} == {k: v for k, v in b.metrics.items() if k != "all"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ratings]:
    root = tmp_path_factory.mktemp("leak")
    (root / "tiny.toml").write_text(TINY)
    planted = planted_low_rank(100, 50, seed=3).observed
    rows, cols, values = planted.coo()
    ratings = Ratings(planted.index.user_ids[rows], planted.index.movie_ids[cols],
                      np.clip(np.round(values.astype(np.float64) * 2) / 2, 1.0, 5.0), planted.timestamps)
    return root, ratings


def test_a_generated_split_learns_nothing_from_its_test_values(base: tuple[Path, Ratings]) -> None:
    from recae.evaluation.splits import SplitSpec, split_from_store
    from recae.store.db import open_store
    from recae.store.matrix import RatingMatrix

    root, ratings = base
    first = train_on(root, "gen-a", ratings, "--split", "random", "--seed", "0")
    engine = open_store(f"sqlite:///{root / 'gen-a' / 'recae.db'}")
    with engine.connect() as conn:  # the stored order is the file's: map the split's test pairs back onto it
        assert conn.execute(text("SELECT count(*) FROM ratings")).scalar() == ratings.users.size
    split = split_from_store(engine, RatingMatrix.from_db(engine), SplitSpec("random", 0.1, 0))
    engine.dispose()
    rows, cols, _ = split.test.coo()
    test_keys = set(zip(split.test.index.user_ids[rows].tolist(), split.test.index.movie_ids[cols].tolist()))
    held = np.array([(u, m) in test_keys for u, m in zip(ratings.users.tolist(), ratings.movies.tolist())])
    assert held.sum() == split.test.nnz > 0

    second = train_on(root, "gen-b", ratings.with_values(held, other_values(ratings.values[held])),
                      "--split", "random", "--seed", "0")
    assert first.metrics["all"]["test_rmse"] != second.metrics["all"]["test_rmse"]  # the test sets did differ
    assert first.metrics["weight_decay"] in (1.0, 30.0)  # chosen from the grid, on validation
    assert len(first.meta["ranker"]["search"]["trials"]) >= 2  # type: ignore[index]
    assert_same_learning(first, second)

    # Control: one training rating changed instead, and the weights must move (the comparison can fail).
    trained_on = np.flatnonzero(~held)[0]
    control = train_on(root, "gen-c", ratings.with_values(np.array([trained_on]),
                                                          other_values(ratings.values[[trained_on]])),
                       "--split", "random", "--seed", "0")
    assert not all(torch.equal(first.tensors[k], control.tensors[k]) for k in first.tensors)


def test_a_test_ratings_file_learns_nothing_from_its_values(base: tuple[Path, Ratings]) -> None:
    root, ratings = base
    held = np.arange(ratings.users.size) % 9 == 4  # another test set than the generated split's
    changed = ratings.with_values(held, other_values(ratings.values[held]))
    first = train_on(root, "file-a", ratings, "--test-ratings", str(ratings.write(root / "test-a.csv", held, True)))
    second = train_on(root, "file-b", changed, "--test-ratings",
                      str(changed.write(root / "test-b.csv", held, True)))
    assert first.metrics["all"]["n_test"] == held.sum()
    assert first.metrics["all"]["test_rmse"] != second.metrics["all"]["test_rmse"]
    assert_same_learning(first, second)


def test_the_svd_in_the_blend_learns_nothing_from_test_values(base: tuple[Path, Ratings]) -> None:
    """``blend_svd = true``: the SVD's factors and biases and the stacked weights are bit-equal too."""
    root, ratings = base
    (root / "tiny-svd.toml").write_text(TINY + "blend_svd = true\n")
    held = np.arange(ratings.users.size) % 9 == 4
    changed = ratings.with_values(held, other_values(ratings.values[held]))
    first = train_on(root, "svd-a", ratings, "--test-ratings", str(ratings.write(root / "svd-a-test.csv", held, True)),
                     config="tiny-svd.toml")
    second = train_on(root, "svd-b", changed, "--test-ratings",
                      str(changed.write(root / "svd-b-test.csv", held, True)), config="tiny-svd.toml")
    assert {"svd/user_factors", "svd/item_factors", "svd/user_bias", "svd/item_bias"} <= set(first.tensors)
    assert first.metrics["all"]["test_rmse"] != second.metrics["all"]["test_rmse"]
    assert_same_learning(first, second)  # meta.json's svd weights and intercept included


def test_the_films_genres_in_the_blend_learn_nothing_from_test_values(base: tuple[Path, Ratings]) -> None:
    """``blend_side``: with a catalogue that has genres and years, the side part's affinities and the stacked
    weights are bit-equal too."""
    root, ratings = base
    (root / "tiny-side.toml").write_text(TINY + "blend_svd = true\nblend_side = true\n")
    held = np.arange(ratings.users.size) % 9 == 4
    changed = ratings.with_values(held, other_values(ratings.values[held]))
    first = train_on(root, "side-a", ratings, "--test-ratings",
                     str(ratings.write(root / "side-a-test.csv", held, True)), config="tiny-side.toml", genres=True)
    second = train_on(root, "side-b", changed, "--test-ratings",
                      str(changed.write(root / "side-b-test.csv", held, True)), config="tiny-side.toml", genres=True)
    assert {"side/user_affinity", "side/item_bias", "side/groups"} <= set(first.tensors)
    assert "Comedy" in first.meta["side"]["groups"]  # type: ignore[index]
    assert first.metrics["all"]["test_rmse"] != second.metrics["all"]["test_rmse"]
    assert_same_learning(first, second)  # meta.json's side weights and groups included
