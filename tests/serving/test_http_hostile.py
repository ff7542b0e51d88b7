"""`recae serve` against a hostile client and a damaged home: every answer is the documented status in one line.

In-process (the app on a real store and a real trained model, called through ASGI) where the server process adds
nothing; a real `recae serve` process where it does (the port it cannot bind, the allocator of its worker).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
import pytest

from recae.serving.registry import champion_of
from recae.store.db import open_store
from tests.support.serving import NAMED, ROOT, Home, InProcess, build_home

pytest.importorskip("fastapi", reason="recae serve needs the serve extra: pip install -e '.[serve]'")

pytestmark = pytest.mark.slow  # a trained home: ~10 s for the module

FOLD_IN = "/v1/recommendations"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return build_home(tmp_path_factory.mktemp("hostile-home"))


@pytest.fixture(scope="module")
def client(home: Home) -> InProcess:
    return InProcess(home.url)


def assert_error(response, status: int, kind: str) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == kind and body["message"].isprintable() and "Traceback" not in response.text
    return str(body["message"])


def damaged_copy(home: Home, tmp_path: Path, damage: str) -> str:
    """A copy of ``home`` whose champion's files are damaged as ``damage`` says; its database URL."""
    copy = tmp_path / "damaged"
    shutil.copytree(home.path, copy)
    engine = open_store(home.url)
    folder = copy / "models" / champion_of(engine)
    engine.dispose()
    meta, weights = folder / "meta.json", folder / "weights.safetensors"
    if damage == "unknown activation":
        record = json.loads(meta.read_text())
        record["model_config"]["activation"] = "bogus"
        meta.write_text(json.dumps(record))
    elif damage == "meta.json not an object":
        meta.write_text("[1, 2]")
    elif damage == "meta.json cut short":
        meta.write_text(meta.read_text()[:100])
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "no weights":
        weights.unlink()
    return f"sqlite:///{copy / 'recae.db'}"


# --- row 3: an unknown genre is bad input; any model that cannot be loaded is 503 --------------------------------


def test_an_unknown_genre_is_bad_input_with_the_genres_named(client: InProcess) -> None:
    for response in (client.get("/v1/users/7/recommendations", params={"genre": "Nope"}),
                     client.post(FOLD_IN, json={"ratings": {"1": 4}, "genre": "Nope"})):
        message = assert_error(response, 422, "bad_input")
        assert message.startswith("genre 'Nope' is unknown") and "Comedy" in message


@pytest.mark.parametrize("damage", ["unknown activation", "meta.json not an object", "meta.json cut short",
                                    "truncated weights", "no weights"])
def test_a_champion_that_cannot_be_loaded_is_503_and_not_ready(home: Home, tmp_path: Path, damage: str) -> None:
    """Row 7 too: /readyz loads the champion, so it says 503 (with the reason) while fold-in and similar would."""
    http = InProcess(damaged_copy(home, tmp_path, damage))
    for response in (http.get("/readyz"), http.get("/v1/movies/1/similar"),
                     http.post(FOLD_IN, json={"ratings": {"1": 4}}),
                     http.get("/v1/users/7/recommendations", params={"n": 100, "genre": "Drama"}),
                     http.get("/readyz")):  # the second time from the remembered failure
        assert "cannot be loaded" in assert_error(response, 503, "unavailable")
    assert http.get("/v1/users/7/recommendations").status_code == 200  # precomputed: no model needed
    assert http.get("/healthz").status_code == 200


def test_a_champion_put_right_is_loaded_again(home: Home, tmp_path: Path) -> None:
    from recae.errors import CorruptArtifactError
    from recae.serving.live_model import ModelCache
    url = damaged_copy(home, tmp_path, "truncated weights")
    engine = open_store(url)
    version = champion_of(engine)
    models = ModelCache(engine, retry_after_s=0.0)
    with pytest.raises(CorruptArtifactError, match="cannot be loaded"):
        models.get(version)
    shutil.copy(home.path / "models" / version / "weights.safetensors",
                tmp_path / "damaged" / "models" / version / "weights.safetensors")
    assert models.get(version).index.n_movies > 0
    engine.dispose()


def test_ready_names_the_champion_once_it_loads(client: InProcess) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["version"]


# --- row 11: control characters in a title search ---------------------------------------------------------------


@pytest.mark.parametrize("query", ["%00", "%00%00", "%01%1F", "%7F", "%E2%80%8B", "%00%20%09"])
def test_a_search_of_only_control_characters_finds_nothing(client: InProcess, query: str) -> None:
    response = client.get(f"/v1/movies?query={query}")
    assert response.status_code == 200 and response.json()["movies"] == []


def test_control_characters_inside_a_search_count_as_spaces(client: InProcess) -> None:
    found = client.get("/v1/movies?query=star%00wars").json()["movies"]
    assert [m["title"] for m in found] == [NAMED[1]]


# --- row 13: strict fold-in bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b'{"ratings": {"50": true}}',
    b'{"ratings": {" 50": 4, "50": 5}}',
    b'{"ratings": {"50": 4, "50": 5}}',
    b'{"ratings": {"1": 4}, "n": 3, "n": 5}',
    b'{"ratings": {"050": 4}}',
    b'{"ratings": {"+50": 4}}',
    b'{"ratings": {"5_0": 4}}',
    b'{"ratings": {"50 ": 4}}',
    b'{"ratings": {"\\n50": 4}}',
    b'{"ratings": {"50": "4"}}',
    b'{"ratings": {"50": null}}',
    b'{"ratings": {"50": NaN}}',
    b'{"ratings": {"50": 1e400}}',
    b'{"ratings": {"50": 4}, "n": "10"}',
    b'{"ratings": {"50": 4}, "n": true}',
    b'{"ratings": {"50": 4}, "n": 10.5}',
    b'{"ratings": {"50": 4}, "explain": "yes"}',
    b'{"ratings": {"50": 4}, "exclude": ["3"]}',
    b'{"ratings": {"50": 4}, "exclude": [true]}',
    b'{"ratings": {"50": 4}, "min_year": "1990"}',
    b'{"ratings": {"50": 4}, "genre": 5}',
    b'[' * 20_000,
])
def test_a_fold_in_body_is_strictly_typed(client: InProcess, body: bytes) -> None:
    response = client.post(FOLD_IN, content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "bad_input")


def test_a_strict_body_still_takes_integers_as_ratings(client: InProcess) -> None:
    response = client.post(FOLD_IN, content=b'{"ratings": {"1": 5, "2": 4.5}, "n": 3, "exclude": [3]}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert len(response.json()["recommendations"]) == 3


# --- row 12: a port in use ---------------------------------------------------------------------------------------


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "recae", "--home", str(tmp_path), "serve", "--port", str(port)],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "already in use" in lines[0], result.stderr
    assert result.stdout == ""


# --- memory: the worker's allocator keeps large temporaries out of the thread arenas -----------------------------

_CREEP = """
import sys, threading
from pathlib import Path
import numpy as np
from recae.serving.live_model import steady_allocator
if sys.argv[1] == "steady":
    steady_allocator()
def rss_mb():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS"))
    return int(line.split()[1]) / 1024
kept, start = [], threading.Barrier(8)
def request():  # a request's 4 MB temporary, and a small object that outlives it (a cache entry, a log record)
    start.wait()
    for _ in range(30):
        temporary = np.ones((4 << 20) // 8)
        kept.append(bytearray(200))
        del temporary
warm = np.ones((4 << 20) // 8)
del warm  # glibc raises its mmap threshold here, unless it was fixed
before = rss_mb()
threads = [threading.Thread(target=request) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(rss_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator, /proc")
def test_the_worker_allocator_returns_request_temporaries() -> None:
    def growth(mode: str) -> float:
        done = subprocess.run([sys.executable, "-c", _CREEP, mode], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, check=True)
        return float(done.stdout)

    plain = growth("plain")
    if plain < 16:
        pytest.skip(f"this allocator kept only {plain:.1f} MB without the fix: nothing to see here")
    assert growth("steady") < 4, "8 threads' 4 MB temporaries stayed in the process"
