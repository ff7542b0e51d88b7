"""`recae serve` end to end: a real server process on loopback, a real HTTP client, a real store and model.

Expected answers come from the library on the same store (recommend_from_store, recommend_live, the stored
ratings), never from hard-coded lists; errors must be one-line JSON with the CLI's meanings and no traceback.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from recae.serving.recommend import Filters, RecommendedMovie, recommend_from_store, recommend_live
from recae.serving.registry import champion_of
from recae.store.db import Rating, Recommendation, open_store
from tests.support.serving import NAMED, Home, Server, build_home, publish_champion, running_server

pytest.importorskip("fastapi", reason="recae serve needs the serve extra: pip install -e '.[serve]'")
from recae.serving.api_schemas import RecommendationList  # noqa: E402 - pydantic comes with the serve extra

pytestmark = pytest.mark.slow  # a trained home and a server process: ~10 s for the module

TIMEOUT = 60.0  # the machine is shared; a busy second is not a failure
ROUTES = {"/v1/users/{user_id}/recommendations", "/v1/recommendations", "/v1/movies/{movie_id}/similar",
          "/v1/movies", "/v1/model", "/healthz", "/readyz"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return build_home(tmp_path_factory.mktemp("serve-home"))


@pytest.fixture(scope="module")
def server(home: Home) -> Iterator[Server]:
    with running_server(home.path) as running:
        yield running


@pytest.fixture(scope="module")
def cors_server(home: Home) -> Iterator[Server]:
    """A second server on the same home, allowing one origin (and touched by no model request before the torch test)."""
    with running_server(home.path, "--cors-origin", "http://elsewhere.test") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=TIMEOUT) as http:
        yield http


def rated_by(home: Home, user_id: int) -> set[int]:
    engine = open_store(home.url)
    with engine.connect() as conn:
        rated = {int(m) for m in conn.execute(select(Rating.movie_id).where(Rating.user_id == user_id)).scalars()}
    engine.dispose()
    return rated


def assert_same_list(films: list[dict], expected: list) -> None:
    """Same films in the same order with the same scores; films whose scores tie within float noise may swap."""
    got = [f["score"] for f in films]
    want = [r.score for r in expected]
    assert got == pytest.approx(want, abs=1e-4)
    assert [f["predicted_rating"] for f in films] == pytest.approx([r.predicted_rating for r in expected], abs=1e-4)
    for rank, (film, reference) in enumerate(zip(films, expected, strict=True)):
        neighbours = want[max(rank - 1, 0):rank] + want[rank + 1:rank + 2]
        if all(abs(reference.score - other) > 1e-4 for other in neighbours):
            assert film["movie_id"] == reference.movie_id, (rank, films, expected)


def assert_error(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == kind and body["message"] and "\n" not in body["message"]
    assert "Traceback" not in response.text
    return body


def test_binds_loopback_by_default(server: Server) -> None:
    assert f"Uvicorn running on {server.base}" in server.stderr()


def test_openapi_schema_documents_every_route(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert ROUTES <= set(schema["paths"])
    assert {"RecommendationList", "Recommendation", "FoldInRequest", "ErrorBody", "ModelInfo"} <= set(
        schema["components"]["schemas"])
    listed = schema["paths"]["/v1/users/{user_id}/recommendations"]["get"]["responses"]
    assert {"200", "404", "422", "503"} <= set(listed)


def test_known_user_gets_the_precomputed_list(client: httpx.Client, home: Home) -> None:
    engine = open_store(home.url)
    expected = recommend_from_store(engine, 7, 10)
    version = champion_of(engine)
    engine.dispose()
    body = client.get("/v1/users/7/recommendations", params={"n": 10}).json()
    RecommendationList.model_validate(body)  # the hot path serializes itself: hold it to the published schema
    assert body["version"] == version and body["source"] == "precomputed" and body["user_id"] == 7
    films = body["recommendations"]
    assert [f["movie_id"] for f in films] == [r.movie_id for r in expected]
    assert [f["rank"] for f in films] == list(range(1, 11))
    assert {"rank", "movie_id", "title", "year", "genres", "predicted_rating", "score"} <= set(films[0])
    assert "because" not in films[0]
    assert not {f["movie_id"] for f in films} & rated_by(home, 7)


def test_filters_apply_and_an_exhausted_list_is_scored_live(client: httpx.Client, home: Home) -> None:
    body = client.get("/v1/users/7/recommendations", params={"genre": "comedy", "min_year": 1970, "n": 5}).json()
    assert body["source"] == "precomputed" and len(body["recommendations"]) == 5
    assert all("Comedy" in f["genres"].split("|") and f["year"] >= 1970 for f in body["recommendations"])
    first = body["recommendations"][0]["movie_id"]
    body = client.get(f"/v1/users/7/recommendations?genre=comedy&min_year=1970&n=5&exclude={first},1").json()
    assert first not in {f["movie_id"] for f in body["recommendations"]}
    # 80 films, 20 of them Drama: asking for 100 exhausts the stored list, so the model ranks every Drama film
    body = client.get("/v1/users/7/recommendations", params={"genre": "Drama", "n": 100}).json()
    assert body["source"] == "live"
    films = body["recommendations"]
    assert films and all(f["genres"] == "Drama" for f in films)
    assert not {f["movie_id"] for f in films} & rated_by(home, 7)
    scores = [f["score"] for f in films]  # the ranker's order
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(("args", "params"), [
    ((), {}),
    (("--genre", "comedy", "--min-year", "1970", "-n", "5"), {"genre": "comedy", "min_year": 1970, "n": 5}),
    (("--exclude", "1,2", "--exclude", "3", "-n", "7"), {"exclude": ["1,2", "3"], "n": 7}),
    (("--genre", "Drama", "-n", "100"), {"genre": "Drama", "n": 100}),  # exhausts the list: the model answers
], ids=["plain", "genre-year", "exclude", "live"])
def test_the_api_answers_what_the_command_prints(client: httpx.Client, home: Home, args: tuple[str, ...],
                                                 params: dict) -> None:
    """The same user and filters give the same films from `recae recommend --format json` and from the API (the
    two read a SQLite store's list through the same sqlite3 path, and fall back to the model the same way)."""
    from click.testing import CliRunner

    from recae.cli import cli

    for user in (7, 42):
        result = CliRunner().invoke(cli, ["--home", str(home.path), "recommend", "--user", str(user), *args,
                                          "--format", "json"])
        assert result.exit_code == 0, result.output
        printed = json.loads(result.stdout)
        body = client.get(f"/v1/users/{user}/recommendations", params=params).json()
        if body["source"] == "precomputed":
            assert body["recommendations"] == printed
        else:
            assert "-n" in args and args[args.index("-n") + 1] == "100"
            assert_same_list(body["recommendations"], [RecommendedMovie(**film) for film in printed])
    for user, query in ((9999, {}), (7, {"genre": "Noir"})):  # the command's one-line error is the API's message
        result = CliRunner().invoke(cli, ["--home", str(home.path), "recommend", "--user", str(user),
                                          *(["--genre", query["genre"]] if query else [])])
        body = assert_error(client.get(f"/v1/users/{user}/recommendations", params=query), 404 if not query else 422,
                            "not_found" if not query else "bad_input")
        assert result.exit_code != 0 and result.stderr.strip() == f"Error: {body['message']}"


def test_a_sqlite_stored_list_never_goes_through_sqlalchemy(home: Home) -> None:
    """In-process: a SQLite store's stored lists, filtered or not, and its unknown-user 404 run no statement on the
    app's SQLAlchemy engine (sqlite3 alone answers them); a list the filters exhaust still goes to the full path."""
    import asyncio

    from sqlalchemy import event

    from recae.serving.http import create_app

    app = create_app(home.url)
    statements: list[str] = []
    event.listen(app.state.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    async def get(*paths: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http:
            return [await http.get(path) for path in paths]

    try:
        answers = asyncio.run(get("/v1/users/7/recommendations", "/v1/users/11/recommendations?n=3&genre=comedy",
                                  "/v1/users/42/recommendations?exclude=1,2&min_year=1970",
                                  "/v1/users/9999/recommendations"))
        assert [r.status_code for r in answers] == [200, 200, 200, 404]
        assert {r.json().get("source") for r in answers[:3]} == {"precomputed"}
        assert statements == []
        (live,) = asyncio.run(get("/v1/users/7/recommendations?genre=Drama&n=100"))
        assert live.status_code == 200 and live.json()["source"] == "live" and statements
    finally:
        app.state.engine.dispose()


def test_fold_in_matches_the_library_and_explains_itself(client: httpx.Client, home: Home) -> None:
    fresh = {1: 5.0, 2: 4.5, 3: 1.0}
    engine = open_store(home.url)
    expected = recommend_live(engine, None, fresh, 10)
    engine.dispose()
    response = client.post("/v1/recommendations", json={"ratings": {str(k): v for k, v in fresh.items()},
                                                         "n": 10, "explain": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "live" and body["user_id"] is None
    films = body["recommendations"]
    assert_same_list(films, expected)
    assert not {f["movie_id"] for f in films} & set(fresh)
    reasons = [reason for f in films for reason in f["because"]]
    assert reasons, "leave-one-out found no rated film that raised any recommended film"
    for film in films:
        contributions = [r["contribution"] for r in film["because"]]
        assert all(c > 0 for c in contributions) and contributions == sorted(contributions, reverse=True)
        assert {r["movie_id"] for r in film["because"]} <= set(fresh)
    assert {r["title"] for r in reasons} <= {NAMED[m] for m in fresh}


def test_similar_films_and_title_search(client: httpx.Client) -> None:
    body = client.get("/v1/movies/1/similar", params={"n": 5}).json()
    assert body["movie_id"] == 1 and body["title"] == NAMED[1]
    similar = body["similar"]
    assert [s["rank"] for s in similar] == [1, 2, 3, 4, 5] and 1 not in {s["movie_id"] for s in similar}
    values = [s["similarity"] for s in similar]
    assert values == sorted(values, reverse=True) and all(-1.0 - 1e-6 <= v <= 1.0 + 1e-6 for v in values)
    found = client.get("/v1/movies", params={"query": "  STAR  "}).json()["movies"]
    assert [m["movie_id"] for m in found][:2] in ([1, 2], [2, 1]) and {m["movie_id"] for m in found} == {1, 2, 3}
    assert found[-1]["movie_id"] == 3  # a title merely containing the words comes after those starting with them
    # LIKE's wildcards are matched literally: "100%" is not "100 followed by anything", "_" is not "any one letter"
    assert [m["movie_id"] for m in client.get("/v1/movies", params={"query": "100%"}).json()["movies"]] == [4]
    assert [m["movie_id"] for m in client.get("/v1/movies", params={"query": "love_s"}).json()["movies"]] == [4]
    assert client.get("/v1/movies", params={"query": "%"}).json()["movies"] == [{
        "movie_id": 4, "title": NAMED[4], "year": 1999, "genres": "Action|Sci-Fi"}]


def test_model_health_and_page(client: httpx.Client, home: Home) -> None:
    engine = open_store(home.url)
    version = champion_of(engine)
    engine.dispose()
    model = client.get("/v1/model").json()
    assert model["version"] == version and model["model"] == "denoising" and "val_rmse" in model["metrics"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "version": version}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    assert "http" not in page.text.split("<body>")[0].replace('name="viewport"', "")  # no CDN in the head


@pytest.mark.parametrize(("method", "path", "body", "status", "kind"), [
    ("GET", "/v1/users/99999/recommendations", None, 404, "not_found"),
    ("GET", "/v1/users/0/recommendations", None, 422, "bad_input"),
    ("GET", "/v1/users/abc/recommendations", None, 422, "bad_input"),
    ("GET", f"/v1/users/{2**40}/recommendations", None, 422, "bad_input"),
    ("GET", "/v1/users/7/recommendations?n=0", None, 422, "bad_input"),
    ("GET", "/v1/users/7/recommendations?n=101", None, 422, "bad_input"),
    ("GET", "/v1/users/7/recommendations?exclude=1,x", None, 422, "bad_input"),
    ("GET", "/v1/movies/99999/similar", None, 404, "not_found"),
    ("GET", "/v1/movies?query=", None, 422, "bad_input"),
    ("GET", "/v1/nothing-here", None, 404, "not_found"),
    ("POST", "/v1/recommendations", b"{not json", 422, "bad_input"),
    ("POST", "/v1/recommendations", b'{"ratings": {}}', 422, "bad_input"),
    ("POST", "/v1/recommendations", b'{"ratings": {"1": 9}}', 422, "bad_input"),
    ("POST", "/v1/recommendations", b'{"ratings": {"99999": 4}}', 422, "bad_input"),
    ("POST", "/v1/recommendations", b'{"ratings": {"1": 4}, "n": 1000}', 422, "bad_input"),
    ("POST", "/v1/recommendations", b'{"ratings": {"1": 4}, "drop": "table"}', 422, "bad_input"),
    ("POST", "/v1/recommendations", b'{"ratings": {"1": 4}, "pad": "' + b"x" * 70_000 + b'"}', 413, "too_large"),
])
def test_bad_requests_get_json_errors(client: httpx.Client, method: str, path: str, body: bytes | None, status: int,
                                      kind: str) -> None:
    headers = {"content-type": "application/json"} if body is not None else {}
    assert_error(client.request(method, path, content=body, headers=headers), status, kind)


def test_a_chunked_body_over_the_limit_is_refused(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"ratings": {"1": 4}, "pad": "'
        for _ in range(20):
            yield b"x" * 4096
        yield b'"}'

    response = client.post("/v1/recommendations", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "too_large")


def test_cors_is_off_unless_an_origin_is_given(client: httpx.Client, cors_server: Server) -> None:
    asked = {"Origin": "http://elsewhere.test", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": asked["Origin"]}).headers
    assert "access-control-allow-origin" not in client.options("/v1/recommendations", headers=asked).headers
    preflight = httpx.options(cors_server.base + "/v1/recommendations", headers=asked, timeout=TIMEOUT)
    assert preflight.headers.get("access-control-allow-origin") == "http://elsewhere.test"
    denied = httpx.get(cors_server.base + "/healthz", headers={"Origin": "http://third.test"}, timeout=TIMEOUT)
    assert "access-control-allow-origin" not in denied.headers


def test_without_a_model_the_service_is_alive_but_not_ready(tmp_path: Path) -> None:
    with running_server(tmp_path / "empty") as empty:
        assert httpx.get(empty.base + "/healthz", timeout=TIMEOUT).status_code == 200
        for path in ("/readyz", "/v1/users/1/recommendations", "/v1/model", "/v1/movies/1/similar"):
            body = assert_error(httpx.get(empty.base + path, timeout=TIMEOUT), 503, "unavailable")
            assert "recae train" in body["message"]
        response = httpx.post(empty.base + "/v1/recommendations", json={"ratings": {"1": 4}}, timeout=TIMEOUT)
        assert_error(response, 503, "unavailable")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_the_server_never_loads_torch(cors_server: Server) -> None:
    """Stored lists, similar films and fold-in all answer with torch never mapped into the worker (issue 25: a
    published model runs on numpy alone)."""
    maps = Path(f"/proc/{cors_server.process.pid}/maps")
    for user in (3, 7, 11):
        assert httpx.get(f"{cors_server.base}/v1/users/{user}/recommendations", timeout=TIMEOUT).status_code == 200
    assert httpx.get(cors_server.base + "/v1/movies/1/similar", timeout=TIMEOUT).status_code == 200
    assert httpx.post(cors_server.base + "/v1/recommendations", json={"ratings": {"1": 5, "4": 2}, "explain": True},
                      timeout=TIMEOUT).status_code == 200
    assert "libtorch" not in maps.read_text()


def test_a_new_champion_serves_without_restart_and_never_mixed(client: httpx.Client, home: Home) -> None:
    """Requests loop while a new champion is trained and published; each answer is wholly one version's."""
    users, fresh = (3, 7, 11, 19), {1: 5.0, 4: 2.0, 9: 4.0}
    answers: list[tuple[str, int | None, dict]] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=client.base_url, timeout=TIMEOUT) as http:
            while not stop.is_set():
                for user in users:
                    response = http.get(f"/v1/users/{user}/recommendations")
                    if response.status_code != 200:
                        failures.append(response.text)
                    else:
                        answers.append(("user", user, response.json()))
                response = http.post("/v1/recommendations", json={"ratings": fresh, "n": 10})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    answers.append(("fold-in", None, response.json()))

    engine = open_store(home.url)
    old = champion_of(engine)
    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(0.5)
        new = publish_champion(engine, home.path, seed=1)
        time.sleep(1.0)
    finally:
        stop.set()
        loader.join(timeout=60)
    after = client.get("/v1/users/3/recommendations").json()
    assert not failures, failures[:3]
    assert after["version"] == new != old
    versions = [body["version"] for _, _, body in answers]
    assert versions[0] == old and new in versions
    assert set(versions[versions.index(new):]) == {new}, "an answer from the old champion after the new one served"
    with engine.connect() as conn:
        stored = {(v, u): [m for m, in conn.execute(
            select(Recommendation.movie_id).where(Recommendation.version == v, Recommendation.user_id == u)
            .order_by(Recommendation.rank).limit(10))] for v in (old, new) for u in users}
    folded = {v: recommend_live(engine, None, fresh, 10, Filters(), v) for v in (old, new)}
    engine.dispose()
    assert stored[(old, 3)] != stored[(new, 3)], "the two champions agree: the test could not see a mix"
    for kind, user, body in answers:
        if kind == "user":
            assert [f["movie_id"] for f in body["recommendations"]] == stored[(body["version"], user)]
        else:
            assert_same_list(body["recommendations"], folded[body["version"]])


def test_serve_help_has_an_example() -> None:
    from click.testing import CliRunner

    from recae.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    assert "Example" in result.stdout and "recae serve" in result.stdout and "127.0.0.1" in result.stdout


def test_a_store_that_stops_answering_is_503_not_a_traceback(tmp_path: Path) -> None:
    """In-process (the failure is made by hand): the champion table vanishes under a running app."""
    import asyncio

    from recae.serving.http import create_app

    url = f"sqlite:///{tmp_path / 'recae.db'}"
    app = create_app(url)

    async def get(*paths: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http:
            return [await http.get(path) for path in paths]

    assert [r.status_code for r in asyncio.run(get("/healthz", "/readyz"))] == [200, 503]
    engine = open_store(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE champion RENAME TO champion_gone")
    engine.dispose()
    for response in asyncio.run(get("/readyz", "/v1/users/1/recommendations")):
        body = assert_error(response, 503, "unavailable")
        assert "store did not answer" in body["message"] and "champion" not in body["message"]
