"""One catalogue per store (issue 30 row 1): a second MovieLens release never rewrites the first's films, and a
model serves only while the store holds the catalogue it was trained on.

Real stores, real migrations, real ingest, a small real trained champion (tests/support/serving.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from recae.cli import cli
from recae.store.db import make_engine, open_store, upgrade
from recae.store.identity import CatalogueConflictError, current_catalogue
from recae.store.ingest import ingest_dataset, ingest_ratings_file
from tests.support.serving import build_home, publish_champion
from tests.store.test_ingest import snapshot, write_csv, write_dataset


def _run(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def test_real_second_release_is_refused_in_one_line_and_changes_nothing(tmp_path: Path) -> None:
    from tests.conftest import shared_dataset

    ml100k, small = shared_dataset("ml-100k"), shared_dataset("ml-latest-small")
    home = tmp_path / "home"
    assert _run(home, "ingest", "ml-100k", "--path", str(ml100k))[0] == 0
    engine = open_store(f"sqlite:///{home / 'recae.db'}")
    before = snapshot(engine)
    code, out, err = _run(home, "ingest", "ml-latest-small", "--path", str(small))
    assert code == 65 and out == ""
    assert err.count("\n") == 1 and "holds ml-100k" in err and "--replace" in err and "RECAE_HOME" in err, err
    assert snapshot(engine) == before  # "Operation Dumbo Drop" stays movie 110; no rating changed
    # the nightly inbox and `ingest --ratings` keep adding ratings to the same catalogue
    code, out, err = _run(home, "ingest", "--ratings", str(write_csv(tmp_path / "new.csv", ["944,110,4", "1,2,5"])),
                          "--format", "json")
    assert code == 0 and json.loads(out)["rows_loaded"] == 2, err
    assert _run(home, "ingest", "ml-100k", "--path", str(ml100k))[0] == 0  # the same release again: nothing new
    with engine.connect() as conn:
        assert conn.execute(text("SELECT title FROM movies WHERE movie_id = 110")).scalar() == \
            "Operation Dumbo Drop (1995)"
        assert current_catalogue(conn).name == "ml-100k"
    engine.dispose()


@pytest.mark.backends("sqlite", "postgresql")
def test_replace_swaps_the_whole_store_in_one_transaction(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = write_dataset("ml-100k", tmp_path / "a")
    ingest_dataset(engine, "ml-100k", first, downloads_dir=tmp_path)
    ingest_ratings_file(engine, write_csv(tmp_path / "extra.csv", ["9,1,4"]))
    other = write_dataset("ml-latest-small", tmp_path / "b", [(1, 2, 4.5, 10), (7, 3, 1.0, 20)])
    with pytest.raises(CatalogueConflictError, match="holds ml-100k"):
        ingest_dataset(engine, "ml-latest-small", other, downloads_dir=tmp_path)
    with engine.connect() as conn:
        identity = current_catalogue(conn).identity
    report = ingest_dataset(engine, "ml-latest-small", other, downloads_dir=tmp_path, replace=True)
    assert report.replaced and report.rows_loaded == 2
    after = snapshot(engine)
    assert after["ratings"] == [(1, 2, 4.5, 10), (7, 3, 1.0, 20)]  # ml-100k's and the extra file's are gone
    assert after["folds"] == [] and [m[0] for m in after["movies"]] == [1, 2, 3, 4, 5]
    assert after["succeeded"] == [("ml-latest-small", report.sha256)]
    with engine.connect() as conn:
        held = current_catalogue(conn)
    assert held.name == "ml-latest-small" and held.identity != identity
    # replacing back with a file ingested before loads it again (its earlier run no longer counts)
    back = ingest_dataset(engine, "ml-100k", first, downloads_dir=tmp_path, replace=True)
    assert not back.already_ingested and back.rows_loaded == 5
    with engine.connect() as conn:
        identity = current_catalogue(conn).identity
    ingest_dataset(engine, "ml-100k", first, downloads_dir=tmp_path, replace=True)  # the same release: same films
    with engine.connect() as conn:
        assert current_catalogue(conn).identity == identity


def test_a_store_of_plain_files_takes_the_first_release_as_its_name(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ingest_ratings_file(engine, write_csv(tmp_path / "r.csv", ["1,1,4.0,5"]))
    with engine.connect() as conn:
        plain = current_catalogue(conn)
    assert plain.name is None
    ingest_dataset(engine, "ml-1m", write_dataset("ml-1m", tmp_path / "d"), downloads_dir=tmp_path)
    with engine.connect() as conn:
        named = current_catalogue(conn)
    assert (named.name, named.identity) == ("ml-1m", plain.identity)  # same ids: a model trained before serves on


def test_a_model_of_a_replaced_catalogue_refuses_to_serve_until_retrained(tmp_path: Path) -> None:
    from recae.serving.http import create_app

    home = build_home(tmp_path / "home").path
    assert _run(home, "recommend", "--user", "1", "-n", "3")[0] == 0
    replacement = write_csv(tmp_path / "other.csv", [f"{u},{m},{(u * m) % 9 / 2 + 1}" for u in range(1, 30)
                                                     for m in range(1, 20)])
    code, _, err = _run(home, "ingest", "--ratings", str(replacement), "--replace")
    assert code == 0 and "no longer serve" in err
    for args in (["recommend", "--user", "1"], ["recommend", "--rate", "1=5"], ["similar", "--movie", "1"]):
        code, out, err = _run(home, *args)
        assert code == 1 and out == "" and err.count("\n") == 1, (args, err)
        assert "trained on catalogue ratings" in err and "recae train" in err, err
    version = json.loads(_run(home, "models", "list", "--format", "json")[1])[0]["version"]
    for args in (["--user", "1"], ["--rate", "1=5"]):  # an earlier version named explicitly: refused as well
        code, _, err = _run(home, "recommend", "--model", version, *args)
        assert code == 1 and "trained on catalogue" in err, err
    code, _, err = _run(home, "models", "use", version)
    assert code == 1 and "trained on catalogue" in err

    app = create_app(f"sqlite:///{home / 'recae.db'}", models_dir=str(home / "models"))

    async def get(*paths: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http:
            return [await http.get(path) for path in paths]

    for response in asyncio.run(get("/readyz", "/v1/users/1/recommendations", "/v1/movies/1/similar")):
        assert response.status_code == 503 and "trained on catalogue" in response.json()["message"]

    engine = open_store(f"sqlite:///{home / 'recae.db'}")
    publish_champion(engine, home, seed=1)  # what `recae train` does: a model of the catalogue now held
    engine.dispose()
    assert _run(home, "recommend", "--user", "1", "-n", "3")[0] == 0
    assert [r.status_code for r in asyncio.run(get("/readyz"))] == [200]


def test_migration_names_the_catalogue_of_an_existing_store(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'recae.db'}")
    upgrade(engine, "0003")
    with engine.begin() as conn:  # a store as the previous schema left it: ml-100k loaded, one model published
        conn.execute(text("INSERT INTO movies (movie_id, title, genres) VALUES (1, 'Toy Story (1995)', '')"))
        conn.execute(text("INSERT INTO ingest_runs (dataset, source, sha256, status, rows_read, rows_loaded,"
                          " rows_rejected, started_at) VALUES ('ml-100k', 'u.data', 'x', 'succeeded', 1, 1, 0,"
                          " '2026-01-01')"))
        conn.execute(text("INSERT INTO model_versions (version, model, orientation, split, seed, path,"
                          " data_fingerprint, metrics, config, created_at) VALUES ('v1', 'm', 'item', 'u1', 0, 'v1',"
                          " 'f', '{}', '{}', '2026-01-01')"))
    upgrade(engine)
    with engine.connect() as conn:
        held = current_catalogue(conn)
        recorded = conn.execute(text("SELECT catalogue FROM model_versions")).scalar()
    assert held is not None and held.name == "ml-100k" and recorded == held.identity
    with pytest.raises(CatalogueConflictError):
        ingest_dataset(engine, "ml-1m", write_dataset("ml-1m", tmp_path / "m"), downloads_dir=tmp_path)
    engine.dispose()


def test_the_nightly_job_after_a_replace_trains_a_first_champion_of_the_new_catalogue(tmp_path: Path) -> None:
    from tests.retrain.test_nightly import SMALL_CONFIG, recae, summary

    home = build_home(tmp_path / "home").path
    replacement = write_csv(tmp_path / "other.csv", [f"{u},{m},{(u * m) % 9 / 2 + 1}" for u in range(1, 40)
                                                     for m in range(1, 25)])
    assert recae(home, "ingest", "--ratings", str(replacement), "--replace").returncode == 0
    config = tmp_path / "small.toml"
    config.write_text(SMALL_CONFIG)
    result = recae(home, "retrain", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert summary(result)["decision"] == "first" and summary(result)["champion_before"] is None
    assert recae(home, "recommend", "--user", "1", "-n", "3").returncode == 0


def test_a_model_trained_while_the_store_was_replaced_records_the_catalogue_it_read(tmp_path: Path) -> None:
    """The race: `recae train` reads the ratings, `ingest --replace` commits, then train publishes. The version
    records the catalogue it was trained on, not the one the store holds when it publishes, so it does not serve."""
    from recae.artifacts.train_config import TrainConfig
    from recae.evaluation.splits import SplitSpec
    from recae.models.build import model_config
    from recae.serving.publish import train_and_publish

    home = build_home(tmp_path / "home").path
    url = f"sqlite:///{home / 'recae.db'}"
    replacement = write_csv(tmp_path / "other.csv", [f"{u},{m},{(u * m) % 9 / 2 + 1}" for u in range(1, 30)
                                                     for m in range(1, 20)])

    def replace_meanwhile(_split: object) -> None:
        other = open_store(url)
        ingest_ratings_file(other, replacement, replace=True)
        other.dispose()

    engine = open_store(url)
    run = train_and_publish(
        engine, home / "models", SplitSpec("random", test_fraction=0.1, seed=0), model_config("denoising", hidden=[8]),
        TrainConfig.from_json({"epochs": 2, "ensemble": 1, "partner_members": 0, "threads": 1, "seed": 0}),
        on_split=replace_meanwhile)
    assert run is not None
    with engine.connect() as conn:
        recorded = conn.execute(text("SELECT catalogue FROM model_versions WHERE version = :v"),
                                {"v": run.published.version}).scalar_one()
        assert recorded != current_catalogue(conn).identity
    engine.dispose()
    code, _, err = _run(home, "recommend", "--user", "1")
    assert code == 1 and "trained on catalogue ratings" in err, err
