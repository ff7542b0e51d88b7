"""The Python API answers what the command line answers, refuses what it refuses in one line, and trains with no
home on a DataFrame or a sparse matrix (real stores, real training on planted ratings, real ``recae`` commands)."""

from __future__ import annotations

import gc
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import recae
from recae.cli import cli
from recae.errors import EXIT_DATA, EXIT_ERROR, EXIT_USAGE
from tests.api.conftest import SMALL, ApiHome, planted_ratings

ROOT = Path(__file__).resolve().parents[2]


def run_cli(home: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_evaluate_gives_the_figures_of_recae_evaluate(api_home: ApiHome) -> None:
    model = api_home.model
    table = model.evaluate()
    shown = pd.read_csv(io.StringIO(run_cli(api_home.home, "evaluate", "--model", model.version, "--format", "csv")))
    assert list(table.columns) == list(shown.columns) and table["model"].tolist() == shown["model"].tolist()
    numbers = [c for c in table.columns if c not in ("model", "ndcg@10 vs ease")]
    # the CSV rounds to 4 decimals; the JSON keeps every digit
    np.testing.assert_allclose(table[numbers].to_numpy(float), shown[numbers].to_numpy(float), atol=6e-5)
    full = json.loads(run_cli(api_home.home, "evaluate", "--model", model.version, "--format", "json"))
    assert table["rmse"].iloc[0] == pytest.approx(full["rmse"], rel=1e-6)
    assert table["mae"].iloc[0] == pytest.approx(full["mae"], rel=1e-6)
    assert table.attrs["n_test"] == full["n_test"] == 600 and table.attrs["split"] == full["split"] == "random"
    rebuilt = model.evaluate(split="random", seed=0)  # its own split named again: the same figures
    np.testing.assert_allclose(rebuilt[numbers].to_numpy(float), table[numbers].to_numpy(float), rtol=1e-6)


def test_recommend_and_similar_give_the_lists_of_the_commands(api_home: ApiHome) -> None:
    model, home = api_home.model, api_home.home
    for kwargs, flags in (({"user": 7}, ["--user", "7"]), ({"ratings": {1: 5, 2: 4, 3: 1}},
                                                            ["--rate", "1=5", "--rate", "2=4", "--rate", "3=1"])):
        ours = model.recommend(n=5, **kwargs)
        theirs = json.loads(run_cli(home, "recommend", *flags, "-n", "5", "--model", model.version, "--format",
                                    "json"))
        assert ours["movie_id"].tolist() == [r["movie_id"] for r in theirs]
        np.testing.assert_allclose(ours["score"], [r["score"] for r in theirs], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours["predicted_rating"], [r["predicted_rating"] for r in theirs], rtol=1e-5)
    assert model.recommend(user=7).attrs["source"] == "precomputed"
    near = model.similar(movie=1, n=4)
    theirs = json.loads(run_cli(home, "similar", "--movie", "1", "-n", "4", "--model", model.version, "--format",
                                "json"))
    assert near["movie_id"].tolist() == [r["movie_id"] for r in theirs]
    np.testing.assert_allclose(near["similarity"], [r["similarity"] for r in theirs], rtol=1e-5)


def test_predict_keeps_the_callers_columns_and_orders(api_home: ApiHome) -> None:
    pairs = api_home.ratings.iloc[[5, 0, 3]].rename(columns={"user_id": "user", "movie_id": "movie"})
    out = api_home.model.predict(pairs)
    assert out["user_id"].tolist() == pairs["user"].tolist() and "rating" in out.columns
    assert out["predicted_rating"].between(0.5, 5.0).all()


BadCall = Callable[[ApiHome], Any]
BAD_CALLS: list[tuple[str, BadCall, type[recae.RecaeError], str, int]] = [
    ("unknown user", lambda h: h.model.recommend(user=999999), recae.UnknownUserError,
     "user 999999 is unknown; known users are 1..150", EXIT_ERROR),
    ("unknown user in pairs", lambda h: h.model.predict(pd.DataFrame({"user": [1, 999999], "movie": [1, 1]})),
     recae.UnknownUserError, "user 999999 is unknown", EXIT_ERROR),
    ("unknown film", lambda h: h.model.similar(movie=999999), recae.UnknownMovieError, "movie 999999 is unknown",
     EXIT_ERROR),
    ("wrong column names", lambda h: h.store.ingest(h.ratings.rename(columns={"movie_id": "film"})),
     recae.DataError, "ratings has no 'movie_id' column (columns: user_id, film, rating, timestamp)", EXIT_DATA),
    ("rating off the scale", lambda h: h.store.ingest(h.ratings.assign(rating=h.ratings.rating.where(
        h.ratings.index != 17, 7.0))), recae.DataError, "ratings row 17 (index 17): rating 7 is not on the scale",
     EXIT_DATA),
    ("not a half star", lambda h: h.store.ingest(h.ratings.assign(rating=3.2)), recae.DataError,
     "rating 3.2 is not on the scale (every 0.5 on 0.5..5)", EXIT_DATA),
    ("id not an integer", lambda h: h.store.ingest(h.ratings.assign(user_id="x")), recae.DataError,
     "user_id 'x' is not an integer", EXIT_DATA),
    ("fresh rating off the scale", lambda h: h.model.recommend(ratings={1: 9}), recae.DataError,
     "rating 9 for movie 1 is outside the model's scale 0.5..5", EXIT_DATA),
    ("unknown setting", lambda h: h.store.train(epoch=3), recae.TrainingError, "unknown setting 'epoch'",
     EXIT_ERROR),
    ("unknown split", lambda h: h.store.train(split="u9"), recae.ArgumentError, "unknown split 'u9'", EXIT_USAGE),
    ("unknown source", lambda h: h.store.ingest("ml-7m"), recae.ArgumentError, "ml-7m is not a MovieLens name",
     EXIT_USAGE),
    ("nobody to recommend for", lambda h: h.model.recommend(), recae.ArgumentError, "give user=", EXIT_USAGE),
    ("user id not a number", lambda h: h.model.recommend(user="42"), recae.ArgumentError,
     "user must be a whole-number id, got '42'", EXIT_USAGE),
    ("n out of range", lambda h: h.model.similar(movie=1, n=0), recae.ArgumentError,
     "n must be a whole number in 1..1000, got 0", EXIT_USAGE),
    ("not a DataFrame", lambda h: h.store.ingest([(1, 2, 3.0)]), recae.ArgumentError,
     "must be a pandas DataFrame or a scipy sparse matrix, not list", EXIT_USAGE),
    ("unknown version", lambda h: h.store.model("20200101-000000-denoising"), recae.ModelNotFoundError,
     "model version '20200101-000000-denoising' is unknown", EXIT_ERROR),
]


@pytest.mark.parametrize(("call", "error", "message", "exit_code"), [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_a_bad_call_raises_its_documented_error_in_one_line(api_home: ApiHome, call: BadCall,
                                                            error: type[recae.RecaeError], message: str,
                                                            exit_code: int) -> None:
    before = api_home.store.models()["version"].tolist()
    with pytest.raises(error) as raised:
        call(api_home)
    text = str(raised.value)
    assert message in text and "\n" not in text, text
    assert raised.value.exit_code == exit_code  # what the command line would exit with
    assert api_home.store.models()["version"].tolist() == before  # nothing trained or published
    assert api_home.store.ingest(api_home.ratings).already_ingested  # and the store holds what it held


def test_a_home_without_a_model_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(recae.ModelNotFoundError, match="run `recae train`"):
        recae.open_store(tmp_path / "empty").model()


def test_store_free_training_on_a_dataframe_with_its_own_test_part_is_scored_on_that_part() -> None:
    ratings = planted_ratings(seed=5)
    test = ratings.sample(frac=0.1, random_state=0)
    model = recae.train(ratings.drop(test.index), test=test, **SMALL)
    table = model.evaluate()
    assert table.attrs["split"] == "file" and table.attrs["n_test"] == len(test)
    mine = model.predict(test)  # what a user sets beside their own model's predictions
    rmse = float(np.sqrt(((mine["rating"] - mine["predicted_rating"]) ** 2).mean()))
    assert rmse == pytest.approx(table["rmse"].iloc[0], rel=1e-5)
    assert rmse < table.set_index("model").loc["global_mean", "rmse"]  # it learned the planted structure
    again = model.evaluate(test=test)  # held-out ratings handed in, as `recae evaluate --ratings FILE`
    assert again.attrs["n_test"] == len(test) and again["rmse"].iloc[0] == pytest.approx(rmse, rel=1e-5)
    folder = model.store.home
    assert folder.is_dir()
    del model, table
    gc.collect()
    assert not folder.exists()  # the temporary store goes with its last model


def test_store_free_training_on_a_sparse_matrix_maps_rows_and_columns_to_ids_from_one() -> None:
    ratings = planted_ratings(n_users=100, n_movies=80, n_ratings=3000, seed=7)
    matrix = sp.csr_matrix((ratings["rating"], (ratings["user_id"] - 1, ratings["movie_id"] - 1)))
    model = recae.train(matrix, split="per-user", **SMALL)
    index = model.trained.index
    assert index.user_ids.min() == 1 and index.movie_ids.max() <= matrix.shape[1]
    assert model.evaluate().attrs["n_test"] > 0
    listed = model.recommend(user=1, n=5)["movie_id"]
    assert not listed.isin(ratings.loc[ratings["user_id"] == 1, "movie_id"]).any()  # never a rated film


def test_a_published_model_loads_read_only_without_torch(api_home: ApiHome) -> None:
    folder = api_home.home / "models" / api_home.model.version
    code = ("import sys, pandas as pd, recae; m = recae.load_model(sys.argv[1]); "
            "assert m.version == sys.argv[1].rsplit('/', 1)[1]; "
            "assert len(m.similar(1, n=3)) == 3 and len(m.recommend(user=7, n=3)) == 3; "
            "m.predict(pd.DataFrame({'user_id': [1], 'movie_id': [2]})); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, str(folder)], cwd=ROOT, check=True)


def test_the_package_names_its_api_and_imports_nothing_heavy() -> None:
    code = ("import sys, recae; assert not {'numpy', 'pandas', 'sqlalchemy', 'torch'} & set(sys.modules); "
            "assert all(getattr(recae, name) is not None for name in recae.__all__)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_movielens_folder_is_ingested_by_its_name(ml100k: Path, tmp_path: Path) -> None:
    report = recae.open_store(tmp_path / "home").ingest(ml100k)  # the folder is named ml-100k: its format
    assert report.dataset == "ml-100k" and report.rows_loaded == 100_000 and report.fold_tests_loaded > 0


def test_a_dataframe_is_stored_as_a_ratings_file_would_be(tmp_path: Path) -> None:
    ratings = planted_ratings(n_users=40, n_movies=30, n_ratings=600, seed=2)
    store = recae.open_store(tmp_path / "home")
    short = ratings.rename(columns={"user_id": "user", "movie_id": "movie"}).drop(columns="timestamp")
    report = store.ingest(short)
    assert report.source == "a DataFrame of 600 ratings" and report.rows_loaded == 600
    again = store.ingest(ratings[["user_id", "movie_id", "rating"]])  # the same ratings: nothing changes
    assert again.already_ingested and again.rows_loaded == 0
    newer = ratings.assign(rating=5.0, timestamp=ratings["timestamp"] + 1)
    assert store.ingest(newer).rows_loaded == 600  # as `recae ingest --ratings`: the newer rating wins
