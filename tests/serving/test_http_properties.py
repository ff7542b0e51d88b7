"""Property tests of the JSON API's requests (hypothesis): valid bodies are accepted and round-trip, invalid ones
are refused with 422, and nothing a client sends gets a 500.

Two layers: the request model alone (thousands of bodies a second), then the app itself, in-process on a real
store and trained model, for bodies and query strings drawn at random.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.support.serving import GENRES, N_MOVIES, Home, InProcess, build_home

pytest.importorskip("fastapi", reason="recae serve needs the serve extra: pip install -e '.[serve]'")
from pydantic import ValidationError  # noqa: E402 - pydantic comes with the serve extra

from recae.serving.api_schemas import MAX_FRESH_RATINGS, MAX_ID, MAX_N, FoldInRequest, RecommendationList  # noqa: E402

FOLD_IN = "/v1/recommendations"
ids = st.integers(1, MAX_ID)
ratings_values = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6)


@st.composite
def valid_bodies(draw: st.DrawFn, movie_ids: st.SearchStrategy[int] = ids,
                 values: st.SearchStrategy[float] = ratings_values, genres: st.SearchStrategy[str] | None = None
                 ) -> dict[str, Any]:
    """A fold-in body the request model must accept: only fields it knows, each of its type and in range."""
    body: dict[str, Any] = {"ratings": {str(m): draw(values) for m in draw(st.sets(movie_ids, min_size=1,
                                                                                   max_size=12))}}
    optional = {
        "n": st.integers(1, MAX_N),
        "genre": genres if genres is not None else st.none() | st.text(max_size=64),
        "min_year": st.none() | st.integers(0, 9999),
        "exclude": st.lists(movie_ids, max_size=8),
        "explain": st.booleans(),
    }
    for name in draw(st.sets(st.sampled_from(sorted(optional)))):
        body[name] = draw(optional[name])
    return body


def bad_key() -> st.SearchStrategy[str]:
    """A JSON key that is not a movie id in its one written form."""
    return st.one_of(
        ids.map(lambda m: f" {m}"), ids.map(lambda m: f"{m} "), ids.map(lambda m: f"0{m}"), ids.map(lambda m: f"+{m}"),
        ids.filter(lambda m: m >= 10).map(lambda m: f"{str(m)[0]}_{str(m)[1:]}"),
        st.integers(MAX_ID + 1, 10**12).map(str), st.integers(-(10**6), 0).map(str),
        st.text(max_size=6).filter(lambda k: not (k.isascii() and k.isdigit() and not k.startswith("0"))),
    )


def bad_value() -> st.SearchStrategy[Any]:
    return st.one_of(st.booleans(), st.none(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                     st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@st.composite
def invalid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with one thing broken: a key, a rating, a field's type or range, an unknown field."""
    body = draw(valid_bodies())
    fault = draw(st.sampled_from(["key", "rating", "n", "min_year", "exclude", "explain", "genre", "unknown",
                                  "empty", "too many"]))
    if fault == "key":
        body["ratings"][draw(bad_key())] = 4
    elif fault == "rating":
        body["ratings"][next(iter(body["ratings"]))] = draw(bad_value())
    elif fault == "n":
        body["n"] = draw(st.integers(max_value=0) | st.integers(min_value=MAX_N + 1) | bad_value()
                         | st.floats(allow_nan=False, allow_infinity=False))
    elif fault == "min_year":
        body["min_year"] = draw(st.integers(max_value=-1) | st.integers(min_value=10_000) | st.text(max_size=4)
                                | st.booleans())
    elif fault == "exclude":
        body["exclude"] = [draw(st.integers(max_value=0) | st.integers(min_value=MAX_ID + 1) | bad_value())]
    elif fault == "explain":
        body["explain"] = draw(st.integers() | st.text(max_size=4) | st.none())
    elif fault == "genre":
        body["genre"] = draw(st.integers() | st.booleans() | st.text(min_size=65, max_size=80))
    elif fault == "unknown":
        body[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in FoldInRequest.model_fields))] = 1
    elif fault == "empty":
        body["ratings"] = {}
    else:
        body["ratings"] = {str(m): 3 for m in range(1, MAX_FRESH_RATINGS + 2)}
    return body


# --- the request model -----------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(valid_bodies())
def test_valid_bodies_are_accepted_and_round_trip(body: dict[str, Any]) -> None:
    request = FoldInRequest.model_validate_json(json.dumps(body))
    again = request.model_dump(mode="json", exclude_unset=True)
    assert again.keys() == body.keys()
    assert again["ratings"] == {k: float(v) for k, v in body["ratings"].items()}
    assert {k: v for k, v in again.items() if k != "ratings"} == {k: v for k, v in body.items() if k != "ratings"}
    assert FoldInRequest.model_validate_json(request.model_dump_json()) == request


@settings(max_examples=400, deadline=None)
@given(invalid_bodies())
def test_invalid_bodies_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FoldInRequest.model_validate_json(json.dumps(body))


# --- the app -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return build_home(tmp_path_factory.mktemp("property-home"))


@pytest.fixture(scope="module")
def client(home: Home) -> InProcess:
    return InProcess(home.url)


def assert_refused(response: Any, status: int = 422) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == "bad_input" and body["message"].isprintable(), body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
slow = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@pytest.mark.slow
@slow
@given(body=invalid_bodies())
def test_the_app_answers_invalid_bodies_with_422(client: InProcess, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    assert_refused(client.post(FOLD_IN, content=raw, headers={"content-type": "application/json"}))


@pytest.mark.slow
@slow
@given(raw=json_values.map(lambda value: json.dumps(value).encode()) | st.binary(max_size=64))
def test_any_json_or_bytes_is_never_a_server_error(client: InProcess, raw: bytes) -> None:
    response = client.post(FOLD_IN, content=raw, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert_refused(response)


@pytest.mark.slow
@slow
@given(body=valid_bodies(movie_ids=st.integers(1, N_MOVIES), values=st.sampled_from([1, 1.5, 2, 3, 3.5, 4, 4.5, 5]),
                         genres=st.none() | st.sampled_from(sorted({g for gs in GENRES for g in gs.split("|")}))))
def test_a_valid_fold_in_of_known_films_gets_a_list(client: InProcess, body: dict[str, Any]) -> None:
    assume(not body.get("explain") or len(body["ratings"]) <= 5)  # leave-one-out costs a fold-in per rated film
    response = client.post(FOLD_IN, json=body)
    assert response.status_code == 200, response.text
    answer = RecommendationList.model_validate(response.json())
    films = answer.recommendations
    assert len(films) <= body.get("n", 10) and [f.rank for f in films] == list(range(1, len(films) + 1))
    assert not {f.movie_id for f in films} & ({int(m) for m in body["ratings"]} | set(body.get("exclude", [])))
    if body.get("genre"):
        assert all(body["genre"].lower() in f.genres.lower().split("|") for f in films)
    if body.get("min_year") is not None:
        assert all(f.year is not None and f.year >= body["min_year"] for f in films)
    assert all(math.isfinite(f.score) for f in films)


@pytest.mark.slow
@slow
@given(n=st.text(max_size=6), genre=st.text(max_size=70), min_year=st.text(max_size=6), exclude=st.text(max_size=12),
       user=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12))
def test_any_query_string_of_a_users_list_is_never_a_server_error(client: InProcess, n: str, genre: str,
                                                                   min_year: str, exclude: str, user: str) -> None:
    response = client.get(f"/v1/users/{quote(user, safe='')}/recommendations",
                          params={"n": n, "genre": genre, "min_year": min_year, "exclude": exclude})
    assert response.status_code in (200, 404, 422), response.text


@pytest.mark.slow
@slow
@given(query=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40), limit=st.integers(-5, 60))
def test_any_title_search_is_never_a_server_error(client: InProcess, query: str, limit: int) -> None:
    response = client.get("/v1/movies", params={"query": query, "limit": limit})
    if not query or not 1 <= limit <= 50:
        assert_refused(response)
        return
    assert response.status_code == 200, response.text
    words = " ".join("".join(c if c.isprintable() else " " for c in query).split()).lower()
    for movie in response.json()["movies"]:
        assert words in (movie["title"] or "").lower()
