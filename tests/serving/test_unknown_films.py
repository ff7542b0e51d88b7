"""Rated films the model does not know (ingested after it was trained): ignored and named, and when none of a
user's films is known, the most popular films labelled as such, the same from the library, the CLI and HTTP.

Before: the ranker saw an all-zero rating vector, every film scored 0.0 and the list was films 1, 2, 3 in id
order, presented as recommendations (issue 30, row 4).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from recae.cli import cli
from recae.serving.recommend import answer_films, recommend_films
from recae.store.db import open_store
from recae.store.ingest import ingest_ratings_file

NEW_FILMS = (2000, 2001)  # in the catalogue, rated after training
NEW_USER = 5000  # joined after training, rated only the new films


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Engine]]:
    from tests.support.serving import build_home

    built = build_home(tmp_path_factory.mktemp("unknown"))
    engine = open_store(built.url)
    csv = built.path / "new.csv"
    csv.write_text(f"1,{NEW_FILMS[0]},4\n{NEW_USER},{NEW_FILMS[0]},4\n{NEW_USER},{NEW_FILMS[1]},3\n")
    ingest_ratings_file(engine, csv)
    yield built.path, engine
    engine.dispose()


def _popular_order(home: Path) -> list[int]:
    """Film ids by number of training ratings, most first (ties: lower id), from the champion itself."""
    from recae.serving.registry import load_champion

    engine = open_store(f"sqlite:///{home / 'recae.db'}")
    trained = load_champion(engine, home / "models")
    engine.dispose()
    counts = np.bincount(trained.inputs.csr.indices, minlength=trained.index.n_movies)
    return [int(trained.index.movie_ids[c]) for c in np.argsort(-counts, kind="stable")]


def test_only_unknown_films_give_the_popular_list_labelled_with_a_note(home: tuple[Path, Engine]) -> None:
    path, engine = home
    answer = answer_films(engine, None, {NEW_FILMS[0]: 5.0}, 3, models_dir=path / "models")
    assert answer.source == "popular" and answer.unknown_movie_ids == (NEW_FILMS[0],)
    assert [f.movie_id for f in answer.films] == _popular_order(path)[:3]  # not films 1, 2, 3
    assert [f.movie_id for f in answer.films] != [1, 2, 3]
    assert all(f.basis == "popular" for f in answer.films)
    assert answer.films[0].score >= answer.films[1].score >= answer.films[2].score > 0  # training ratings
    assert answer.note is not None and "2000" in answer.note and "retrain" in answer.note
    assert "popular" in answer.note


def test_a_user_who_joined_after_training_with_only_new_films_gets_the_popular_list(
        home: tuple[Path, Engine]) -> None:
    path, engine = home
    answer = answer_films(engine, NEW_USER, {}, 3, models_dir=path / "models")
    assert answer.source == "popular" and answer.unknown_movie_ids == NEW_FILMS
    assert [f.movie_id for f in answer.films] == _popular_order(path)[:3]


def test_unknown_films_among_known_ones_are_ignored_and_named(home: tuple[Path, Engine]) -> None:
    path, engine = home
    known = {5: 5.0, 17: 1.0, 33: 4.0}
    mixed = answer_films(engine, None, {**known, NEW_FILMS[1]: 5.0}, 5, models_dir=path / "models")
    assert mixed.source == "live" and mixed.unknown_movie_ids == (NEW_FILMS[1],)
    assert all(f.basis == "model" for f in mixed.films)
    assert mixed.note is not None and "2001" in mixed.note and "ignored" in mixed.note
    assert mixed.films == recommend_films(engine, None, known, 5, models_dir=path / "models")
    plain = answer_films(engine, None, known, 5, models_dir=path / "models")
    assert plain.note is None and plain.unknown_movie_ids == ()


def test_cli_prints_the_note_on_stderr_and_labels_the_json(home: tuple[Path, Engine]) -> None:
    path, _ = home
    result = CliRunner().invoke(cli, ["--home", str(path), "recommend", "--rate", f"{NEW_FILMS[0]}=5", "-n", "3",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    films = json.loads(result.stdout)
    assert [f["movie_id"] for f in films] == _popular_order(path)[:3]
    assert {f["basis"] for f in films} == {"popular"}
    assert "Note:" in result.stderr and "2000" in result.stderr and "retrain" in result.stderr
    table = CliRunner().invoke(cli, ["--home", str(path), "recommend", "--user", str(NEW_USER), "-n", "3"])
    assert table.exit_code == 0 and "most popular" in table.stdout and "popular" in table.stderr


def test_http_answers_say_popular_with_the_same_note(home: tuple[Path, Engine]) -> None:
    from fastapi.testclient import TestClient

    from recae.serving.http import create_app

    path, _ = home
    app = create_app(f"sqlite:///{path / 'recae.db'}", models_dir=str(path / "models"))
    with TestClient(app) as client:
        folded = client.post("/v1/recommendations", json={"ratings": {str(NEW_FILMS[0]): 5}, "n": 3,
                                                           "explain": True})
        assert folded.status_code == 200, folded.text
        body = folded.json()
        assert body["source"] == "popular" and "2000" in body["note"] and "retrain" in body["note"]
        assert [f["movie_id"] for f in body["recommendations"]] == _popular_order(path)[:3]
        assert {f["basis"] for f in body["recommendations"]} == {"popular"}
        user = client.get(f"/v1/users/{NEW_USER}/recommendations", params={"n": 3}).json()
        assert user["source"] == "popular" and "2001" in user["note"]
        known = client.post("/v1/recommendations", json={"ratings": {"5": 5, "17": 1}, "n": 3}).json()
        assert known["source"] == "live" and "note" not in known
