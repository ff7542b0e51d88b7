"""Benchmark: how long the everyday commands take as a user runs them, each in a fresh process.

    python tests/benchmarks/bench_latency.py                  # quickstart ml-100k into a temporary RECAE_HOME first
    python tests/benchmarks/bench_latency.py --home /tmp/qs   # a home that already has a published model
    python tests/benchmarks/bench_latency.py --only help,recommend --repeat 5
    python tests/benchmarks/bench_latency.py --home /tmp/ml1m --only foldin,serve    # an ml-1m home (README)

Each command runs once untimed (the page cache warm, as for a user who has run recae before), then ``--repeat``
times, each a new ``recae`` process (the installed console script, else ``python -m recae``); the median and the
worst wall time are printed. Targets (issue 25, 2 cores): ``recae --help`` <= 0.15 s and ``recae recommend
--user 42`` (a SQLite store's precomputed list) <= 0.15 s, median of 5; the fold-in of a new user from the
command line (``recae recommend --rate 1=5 --rate 50=4 --rate 100=3``) <= 1 s.

``serve`` starts one ``recae serve`` worker (tests/benchmarks/bench_serve.py's server and open-loop client) and
prints, under load: stored lists at ``--serve-rate`` requests/s for ``--serve-seconds`` (target p99 <= 10 ms at
500/s) and fold-in requests (three rated films of a random user each) at ``--foldin-rate``/s (target p99 <= 25 ms),
latency counted from when each request was due; then the worker's resident memory (target <= 300 MB with an
ml-1m model) and its peak.

Adding a figure (fold-in, the serve worker's RSS and percentiles, ...): write a function ``(home, repeat) ->
list[Figure]`` and register it with ``@bench("name")``; ``--only name`` then runs it alone. ``command_wall``
times a command line; a figure that is not a wall time fills ``Figure`` its own way (``unit``, ``values``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


@dataclass(frozen=True)
class Figure:
    """One measured thing: its name (the command as typed), its values, their unit."""

    name: str
    values: list[float]
    unit: str = "s"
    summary: str = "runs"  # runs: median and worst; latency: p50, p99 and worst; value: the one value

    def line(self) -> str:
        if self.summary == "value":
            return f"{self.name}: {self.values[0]:.1f} {self.unit}"
        if self.summary == "latency":
            p50, p99 = (float(np.percentile(self.values, q)) for q in (50, 99))
            return (f"{self.name}: p50 {p50:.2f} {self.unit}, p99 {p99:.2f} {self.unit}, worst {max(self.values):.2f} "
                    f"{self.unit} over {len(self.values)} requests")
        median, worst = statistics.median(self.values), max(self.values)
        return f"{self.name}: median {median:.3f} {self.unit}, worst {worst:.3f} {self.unit} over {len(self.values)} runs"


Bench = Callable[[Path, int], list[Figure]]
#: The benchmarks, in the order they run; ``@bench`` adds one.
BENCHES: dict[str, Bench] = {}


def bench(name: str) -> Callable[[Bench], Bench]:
    """Register a benchmark function under ``name`` (what ``--only`` selects)."""

    def register(function: Bench) -> Bench:
        BENCHES[name] = function
        return function

    return register


def recae_command() -> list[str]:
    """The ``recae`` a user runs: the console script beside this interpreter, else ``python -m recae``."""
    script = Path(sys.executable).with_name("recae")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "recae"]


def command_wall(home: Path, args: list[str], repeat: int) -> Figure:
    """Wall seconds of ``recae ARGS`` (RECAE_HOME=home), a fresh process per run, after one untimed run."""
    env = {**os.environ, "RECAE_HOME": str(home)}
    argv = [*recae_command(), *args]
    subprocess.run(argv, env=env, check=True, capture_output=True)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return Figure(" ".join(["recae", *args]), times)


@bench("help")
def bench_help(home: Path, repeat: int) -> list[Figure]:
    """``recae --help``: the group lists its commands without importing one."""
    return [command_wall(home, ["--help"], repeat)]


@bench("recommend")
def bench_recommend(home: Path, repeat: int) -> list[Figure]:
    """``recae recommend --user 42``: the champion's precomputed list, read with sqlite3 alone."""
    return [command_wall(home, ["recommend", "--user", "42"], repeat)]


@bench("foldin")
def bench_foldin(home: Path, repeat: int) -> list[Figure]:
    """``recae recommend --rate 1=5 --rate 50=4 --rate 100=3``: a new user's list, the model loaded and run with
    numpy (no torch) in a fresh process."""
    return [command_wall(home, ["recommend", "--rate", "1=5", "--rate", "50=4", "--rate", "100=3"], repeat)]


#: The serve benchmark's load (``--serve-rate``, ``--serve-seconds``, ``--foldin-rate``, ``--foldin-seconds``).
SERVE = {"rate": 500.0, "seconds": 20.0, "foldin_rate": 40.0, "foldin_seconds": 10.0}


@bench("serve")
def bench_serve_worker(home: Path, repeat: int) -> list[Figure]:
    """One ``recae serve`` worker under an open loop of stored lists, then of fold-ins; its memory after both."""
    import asyncio
    import json
    import random

    sys.path.insert(0, str(ROOT))
    from tests.benchmarks.bench_serve import (
        free_port,
        memory_mb,
        open_loop,
        sequential,
        start_server,
    )

    users, ratings = _users_and_ratings(home)
    rng = random.Random(0)
    paths = [f"/v1/users/{rng.choice(users)}/recommendations?n=10" for _ in range(5000)]

    def body() -> bytes:
        picked = rng.sample(ratings[rng.choice(users)], 3)
        return json.dumps({"ratings": {str(m): r for m, r in picked}, "n": 10}).encode()

    port = free_port()
    server = start_server(home, port)
    try:
        asyncio.run(sequential(port, [body() for _ in range(5)]))  # loads the model: the first visitor's wait
        asyncio.run(sequential(port, [], [f"/v1/movies/{movie}/similar?n=10" for movie, _ in ratings[users[0]][:5]]))
        asyncio.run(open_loop(port, paths, 50.0, 2.0))  # warm connections
        lists, list_errors, _ = asyncio.run(open_loop(port, paths, SERVE["rate"], SERVE["seconds"]))
        bodies = [body() for _ in range(int(SERVE["foldin_rate"] * SERVE["foldin_seconds"]))]
        folds, fold_errors, _ = asyncio.run(open_loop(port, ["/v1/recommendations"], SERVE["foldin_rate"],
                                                      SERVE["foldin_seconds"], bodies=bodies))
        memory = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"recae serve: errors: {list_errors} of {lists.size} stored lists, {fold_errors} of {folds.size} fold-ins; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    return [Figure(f"recae serve: stored lists at {SERVE['rate']:g}/s", list(lists * 1000), "ms", "latency"),
            Figure(f"recae serve: fold-in (3 rated films) at {SERVE['foldin_rate']:g}/s", list(folds * 1000), "ms",
                   "latency"),
            Figure("recae serve: worker resident memory after both", [memory["VmRSS"]], "MB", "value"),
            Figure("recae serve: worker peak resident memory", [memory["VmHWM"]], "MB", "value")]


def _users_and_ratings(home: Path) -> tuple[list[int], dict[int, list[tuple[int, float]]]]:
    """The home's users with at least three ratings, and each one's (movie_id, rating) pairs (sqlite3 alone)."""
    import sqlite3

    ratings: dict[int, list[tuple[int, float]]] = {}
    with sqlite3.connect(home / "recae.db") as conn:
        for user, movie, rating in conn.execute("SELECT user_id, movie_id, rating FROM ratings"):
            ratings.setdefault(int(user), []).append((int(movie), float(rating)))
    return sorted(u for u, rated in ratings.items() if len(rated) >= 3), ratings


def quickstart_home(data: Path) -> Path:
    """A temporary RECAE_HOME with ml-100k ingested and the default model published (``recae quickstart``)."""
    home = Path(tempfile.mkdtemp(prefix="recae-bench-latency-"))
    print(f"recae quickstart --path {data} into {home} ...", file=sys.stderr)
    subprocess.run([*recae_command(), "quickstart", "--path", str(data)], env={**os.environ, "RECAE_HOME": str(home)},
                   check=True, capture_output=True)
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="a home with a published model (default: quickstart a new one)")
    parser.add_argument("--data", type=Path, default=ML100K, help="ml-100k folder or zip for the quickstart")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per command")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated, of: {', '.join(BENCHES)}")
    parser.add_argument("--serve-rate", dest="rate", type=float, default=SERVE["rate"], help="stored lists per s")
    parser.add_argument("--serve-seconds", dest="seconds", type=float, default=SERVE["seconds"])
    parser.add_argument("--foldin-rate", type=float, default=SERVE["foldin_rate"], help="fold-in requests per s")
    parser.add_argument("--foldin-seconds", type=float, default=SERVE["foldin_seconds"])
    args = parser.parse_args()
    SERVE.update({key: getattr(args, key) for key in SERVE})
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHES)}")
    home = args.home or quickstart_home(args.data)
    try:
        for name in chosen:
            for figure in BENCHES[name](home, args.repeat):
                print(figure.line(), flush=True)
    finally:
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
