"""Helpers for the `recae serve` tests: a tiny real home (planted ratings, titled catalogue, a small trained
champion published the way `recae train` publishes) and a real server process on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import update
from sqlalchemy.engine import Engine

from recae.store.db import Movie, open_store
from tests.support.pg_server import free_port
from tests.support.synthetic import planted_low_rank

ROOT = Path(__file__).resolve().parents[2]
N_USERS, N_MOVIES = 120, 80
GENRES = ("Action|Sci-Fi", "Comedy", "Drama", "Comedy|Romance")
#: Titles a search must find (and one with LIKE's wildcards in it, which must match only literally).
NAMED = {1: "Star Wars (1977)", 2: "Star Trek: First Contact (1996)", 3: "Return of the Star (1983)",
         4: "100% Love_Story (1999)", 5: "1000 Love Stories (1998)"}


@dataclass(frozen=True)
class Home:
    path: Path
    url: str


def movie_title(movie_id: int) -> str:
    return NAMED.get(movie_id, f"Film {movie_id:03d} ({1960 + movie_id % 40})")


def build_home(path: Path, url: str | None = None) -> Home:
    """Ingest planted ratings through the real ingest, title the catalogue, and publish a small champion (into the
    store at ``url``, default a SQLite file in ``path``; the models go to ``path / "models"``)."""
    from recae.store.ingest import ingest_ratings_file

    path.mkdir(parents=True, exist_ok=True)
    data = planted_low_rank(N_USERS, N_MOVIES, rank=3, density=0.3, seed=1)
    rows, cols, values = data.observed.coo()
    users, movies = data.observed.index.user_ids[rows], data.observed.index.movie_ids[cols]
    halves = np.clip(np.round(values * 2) / 2, 1.0, 5.0)
    csv = path / "ratings.csv"
    csv.write_text("".join(f"{u},{m},{r:g}\n" for u, m, r in zip(users, movies, halves, strict=True)))
    url = url or f"sqlite:///{path / 'recae.db'}"
    engine = open_store(url)
    try:
        ingest_ratings_file(engine, csv)
        with engine.begin() as conn:
            for movie_id in range(1, N_MOVIES + 1):
                title = movie_title(movie_id)
                conn.execute(update(Movie).where(Movie.movie_id == movie_id).values(
                    title=title, year=int(title[-5:-1]), genres=GENRES[movie_id % len(GENRES)]))
        publish_champion(engine, path, seed=0)
    finally:
        engine.dispose()
    return Home(path=path, url=url)


def publish_champion(engine: Engine, home: Path, seed: int) -> str:
    """Train a small model (3 epochs, one member) and make it the champion, as `recae train` does."""
    from recae.artifacts.train_config import TrainConfig
    from recae.evaluation.splits import SplitSpec
    from recae.models.build import model_config
    from recae.serving.publish import train_and_publish

    run = train_and_publish(
        engine, home / "models", SplitSpec("random", test_fraction=0.1, seed=seed),
        model_config("denoising", hidden=[16]),
        TrainConfig.from_json({"epochs": 3, "ensemble": 1, "partner_members": 0, "threads": 1, "seed": seed}),
    )
    assert run is not None
    return run.published.version


class InProcess:
    """The app of the store at ``url`` called in-process through ASGI, one request at a time: no server process,
    and an unexpected error is the 500 a client would get, not a raised exception."""

    def __init__(self, url: str) -> None:
        from recae.serving.http import create_app

        self.app = create_app(url)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                return await http.request(method, path, **kwargs)

        return asyncio.run(send())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


@dataclass
class Server:
    base: str
    process: subprocess.Popen
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_server(home: Path, *args: str, timeout: float = 60.0) -> Iterator[Server]:
    """`python -m recae --home HOME serve --port P ARGS` until /healthz answers; stopped (SIGTERM) afterwards."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"serve-{port}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "recae", "--home", str(home), "serve", "--port", str(port),
                                    *args], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"recae serve exited with {process.returncode}:\n{server.stderr()}")
            try:
                if httpx.get(server.base + "/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"recae serve did not answer within {timeout} s:\n{server.stderr()}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
