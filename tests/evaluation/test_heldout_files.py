"""Held-out files end to end on a real store: `train --test-ratings FILE` and `evaluate --ratings FILE`.

One small home is built once for the module (planted half-star ratings, a tiny model trained with a test file of
every tenth rating); a test that changes the test file puts it back.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from recae.cli import cli
from recae.errors import EXIT_DATA, EXIT_USAGE
from tests.support.synthetic import planted_low_rank

TINY = ("[model]\nhidden = [16]\n[train]\nepochs = 2\nensemble = 1\npartner_members = 1\nthreads = 1\n"
        "weight_decay = 20.0\n")


def run(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def lines(users: np.ndarray, movies: np.ndarray, values: np.ndarray) -> str:
    return "".join(f"{u},{m},{r:g}\n" for u, m, r in zip(users, movies, values, strict=True))


class Built:
    """The module's home: its ratings (file order), the test file's rows, and the trained champion's version."""

    def __init__(self, root: Path) -> None:
        planted = planted_low_rank(80, 40, seed=7).observed
        rows, cols, values = planted.coo()
        self.users = planted.index.user_ids[rows]
        self.movies = planted.index.movie_ids[cols]
        self.values = np.clip(np.round(values.astype(np.float64) * 2) / 2, 1.0, 5.0)
        self.held = np.arange(self.users.size) % 10 == 3
        self.root = root
        self.home = root / "home"
        self.test_file = root / "test.csv"
        self.config = root / "tiny.toml"
        self.config.write_text(TINY)
        (root / "ratings.csv").write_text(lines(self.users, self.movies, self.values))
        self.test_file.write_text("user_id,movie_id,rating\n" + self.rows(self.held))
        assert run(self.home, "ingest", "--ratings", str(root / "ratings.csv"))[0] == 0
        code, out, err = run(self.home, "train", "--config", str(self.config), "--test-ratings",
                             str(self.test_file), "--format", "json")
        assert code == 0, err
        self.summary = json.loads(out)
        self.announcement = err

    def rows(self, where: np.ndarray, values: np.ndarray | None = None) -> str:
        return lines(self.users[where], self.movies[where], self.values[where] if values is None else values)

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("heldout"))


def champion_json(home: Path) -> dict:  # type: ignore[type-arg]
    code, out, err = run(home, "models", "show", "--format", "json")
    assert code == 0, err
    return json.loads(out)


def test_a_held_out_file_is_read_like_ingest_reads_it_and_keeps_each_ratings_line(tmp_path: Path) -> None:
    from recae.errors import DataError
    from recae.store.ingest import read_ratings_file

    path = tmp_path / "held.csv"
    path.write_bytes(b"\xef\xbb\xbfuser_id,movie_id,rating,timestamp\r\n3,7,4.5,0\r\n\r\n2,9,1,1000\r\n")  # BOM, CRLF, blank
    held = read_ratings_file(path)
    assert held.user_ids.tolist() == [3, 2] and held.movie_ids.tolist() == [7, 9]
    assert held.ratings.tolist() == [4.5, 1.0] and held.lines.tolist() == [2, 4]
    assert held.where(1) == "held.csv line 4: user 2 movie 9"
    path.write_text("user_id,movie_id,rating\n")
    with pytest.raises(DataError, match="no ratings"):
        read_ratings_file(path)


# --- train --test-ratings -----------------------------------------------------------------------------------


def test_the_files_ratings_are_the_test_set_and_the_spec_names_the_file(built: Built) -> None:
    from recae.evaluation.splits import SplitSpec
    from recae.paths import resolve_paths
    from recae.serving.registry import load_champion
    from recae.store.db import open_store
    from recae.store.ingest import read_ratings_file

    assert built.summary["split"] == "file"
    assert "testing on %d (the ratings of test.csv)" % built.held.sum() in built.announcement
    shown = champion_json(built.home)
    assert shown["split"] == "file" and shown["metrics"]["n_test"] == built.held.sum()
    spec = shown["config"]["split"]
    assert spec["path"] == str(built.test_file.resolve())
    assert spec["sha256"] == hashlib.sha256(built.test_file.read_bytes()).hexdigest()
    assert SplitSpec.from_json(spec) == SplitSpec.of_file(read_ratings_file(built.test_file))
    assert SplitSpec.from_json(SplitSpec.from_json(spec).to_json()) == SplitSpec.from_json(spec)

    paths = resolve_paths(built.home)
    trained = load_champion(open_store(paths.database_url), paths.models_dir)
    rows, cols, _ = trained.inputs.coo()
    read = set(zip(trained.index.user_ids[rows].tolist(), trained.index.movie_ids[cols].tolist()))
    listed = set(zip(built.users[built.held].tolist(), built.movies[built.held].tolist()))
    assert not read & listed  # the model never read a listed rating ...
    assert len(read) == built.users.size - len(listed)  # ... and read every other one


def test_evaluate_rebuilds_the_file_split_and_refuses_a_changed_or_missing_file(built: Built) -> None:
    code, out, err = run(built.home, "evaluate", "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["split"] == "file" and report["test_file"] is None and report["n_skipped"] == 0
    assert report["n_test"] == built.held.sum()
    assert report["rmse"] == pytest.approx(champion_json(built.home)["metrics"]["test_rmse"], rel=1e-6)

    original = built.test_file.read_bytes()
    try:
        built.test_file.write_bytes(original + b"\n")
        code, out, err = run(built.home, "evaluate")
        assert code == EXIT_DATA and out == ""
        assert "changed since the split was made" in err and "evaluate --ratings" in err
        built.test_file.unlink()
        code, _, err = run(built.home, "evaluate")
        assert code == EXIT_DATA and "is gone" in err and str(built.test_file.resolve()) in err
    finally:
        built.test_file.write_bytes(original)
    assert run(built.home, "evaluate")[0] == 0


def test_a_file_that_is_not_the_stores_ratings_is_refused_naming_file_line_and_pair(built: Built) -> None:
    first = np.flatnonzero(built.held)[:2]
    u, m, r = int(built.users[first[1]]), int(built.movies[first[1]]), float(built.values[first[1]])
    other = r + 2 if r <= 3 else r - 2
    stored = set(zip(built.users.tolist(), built.movies.tolist()))
    missing_movie = next(mm for mm in range(1, 10_000) if (u, mm) not in stored)
    cases = {
        "missing": (f"{built.rows(first[:1])}{u},{missing_movie},3\n",
                    f"missing.csv line 2: user {u} movie {missing_movie} is not a stored rating"),
        "other-value": (f"user_id,movie_id,rating\n{built.rows(first[:1])}{u},{m},{other:g}\n",
                        f"other-value.csv line 3: user {u} movie {m} is rated {other:g} in the file but {r:g}"),
        "twice": (built.rows(first) + built.rows(first[1:]),
                  f"twice.csv line 3: user {u} movie {m} is listed twice (first on line 2)"),
        "malformed": (built.rows(first[:1]) + "1,x,3\n", "malformed.csv line 2: movie id 'x'"),
    }
    before = champion_json(built.home)["version"]
    for name, (text, message) in cases.items():
        code, out, err = run(built.home, "train", "--config", str(built.config), "--test-ratings",
                             str(built.write(f"{name}.csv", text)))
        assert code == EXIT_DATA and out == "", name
        assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert champion_json(built.home)["version"] == before  # nothing trained or published


def test_test_ratings_goes_with_no_split_flag(built: Built) -> None:
    for flags in (["--split", "random"], ["--split", "u1"], ["--test-fraction", "0.2"]):
        code, _, err = run(built.home, "train", "--test-ratings", str(built.test_file), *flags)
        assert code == EXIT_USAGE and f"--test-ratings does not go with {flags[0]}" in err
    for flags in (["--split", "random"], ["--seed", "3"]):
        code, _, err = run(built.home, "evaluate", "--ratings", str(built.test_file), *flags)
        assert code == EXIT_USAGE and f"--ratings does not go with {flags[0]}" in err


def test_help_shows_both_flags_with_an_example() -> None:
    train = CliRunner().invoke(cli, ["train", "--help"]).stdout
    evaluate = CliRunner().invoke(cli, ["evaluate", "--help"]).stdout
    assert "--test-ratings" in train and "recae train --test-ratings" in train
    assert "--ratings" in evaluate and "recae evaluate --ratings" in evaluate


# --- evaluate --ratings -------------------------------------------------------------------------------------


def test_evaluate_ratings_scores_any_held_out_file_beside_the_same_baselines(built: Built) -> None:
    own = json.loads(run(built.home, "evaluate", "--format", "json")[1])
    same = built.write("same.csv", built.rows(built.held))
    code, out, err = run(built.home, "evaluate", "--ratings", str(same), "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["test_file"] == str(same.resolve()) and report["n_skipped"] == 0
    # The same pairs and values as the model's file split: the same figures, baselines fitted on the same part.
    assert report["rmse"] == pytest.approx(own["rmse"], rel=1e-9)
    for name in ("global_mean", "biases", "svd"):
        assert report["baselines"][name]["rmse"] == pytest.approx(own["baselines"][name]["rmse"], rel=1e-9)

    # Ratings kept aside need not be stored: other values, and pairs the model cannot place (skipped, counted).
    shifted = np.where(built.values[built.held] <= 3, built.values[built.held] + 2, built.values[built.held] - 2)
    aside = built.write("aside.csv", "user_id,movie_id,rating\n" + built.rows(built.held, shifted)
                        + f"99999,{int(built.movies[0])},4\n{int(built.users[0])},99999,2.5\n")
    code, out, err = run(built.home, "evaluate", "--ratings", str(aside), "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["n_test"] == built.held.sum() and report["n_skipped"] == 2
    assert "skipped 2 of aside.csv" in err and "does not know" in err
    assert report["rmse"] != pytest.approx(own["rmse"], rel=1e-3)  # scored on the file's values, not the store's
    assert {"global_mean", "biases", "svd", "most_popular", "ease"} <= set(report["baselines"])
    assert 0 <= report["ranking"]["ndcg@10"] <= 1
    code, out, _ = run(built.home, "evaluate", "--ratings", str(aside))
    assert code == 0 and "Held-out ratings of aside.csv" in out
    assert "ndcg@10 vs ease" in out and "+0.0%" in out  # every list against the EASE reference, at a glance


def test_evaluate_ratings_refuses_a_rating_the_model_read(built: Built) -> None:
    trained_on = np.flatnonzero(~built.held)[:1]
    u, m = int(built.users[trained_on[0]]), int(built.movies[trained_on[0]])
    text = "user_id,movie_id,rating\n" + built.rows(np.flatnonzero(built.held)[:1]) + built.rows(trained_on)
    code, out, err = run(built.home, "evaluate", "--ratings", str(built.write("read.csv", text)))
    assert code == EXIT_DATA and out == ""
    assert f"read.csv line 3: user {u} movie {m} is a rating the model read in training" in err


def test_evaluate_ratings_with_only_unknown_pairs_is_bad_data(built: Built) -> None:
    code, _, err = run(built.home, "evaluate", "--ratings", str(built.write("unknown.csv", "99999,99999,3\n")))
    assert code == EXIT_DATA and "none of its 1 pairs" in err
