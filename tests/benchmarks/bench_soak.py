"""Soak benchmark: `recae serve` under a fixed number of concurrent mixed requests, loopback only; does the
worker's memory level off?

    nice -n 10 python tests/benchmarks/bench_soak.py --home /tmp/recae-soak                    # 4,000 requests
    nice -n 10 python tests/benchmarks/bench_soak.py --home /tmp/recae-soak --requests 24000 --concurrency 8

Without a champion in --home, ml-100k is ingested from ../shared/data and `recae train --split u1` run first
(about 30 s on 2 cores); --small trains a one-member 20-epoch model instead (say so beside its figures).

One `recae serve` process (one worker, started here on a free 127.0.0.1 port) gets --requests requests from
--concurrency keep-alive connections, each sending as soon as its last answer came (a closed loop): the mix is
precomputed lists (45%), fold-ins of 5 of a real user's ratings (20%, a quarter of them with explain), similar
films (15%), title searches (5%) and bad requests (15%: malformed JSON, a bool rating, a repeated or non-canonical
key, an unknown genre, film or user, n out of range), each of which has one right 4xx. Printed: p50/p99 latency
by kind, answers by status, any answer with the wrong status, and the worker's resident memory (VmRSS) every
--every requests. Memory "levels off" when the last quarter of the run grew it by under 2%; the first --warmup
requests (model load, connection set-up, caches) are not part of the run. Exit 1 when it does not level off or a
request got a 5xx or a wrong status. The machine is usually shared: say so beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks.bench_serve import (  # noqa: E402
    ROOT, connect, free_port, memory_mb, percentiles, recae, start_server)

SHARED_ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
SMALL_CONFIG = "[train]\nepochs = 20\nensemble = 1\npartner_members = 0\n"
#: Largest growth of resident memory over the last quarter of the run that still counts as level.
LEVEL_GROWTH = 0.02
Request = tuple[str, str, str, bytes, int]  # kind, method, path, body, expected status


def ensure_home(home: Path, small: bool) -> None:
    """Ingest ml-100k and train a champion on u1 unless ``home`` already has one."""
    from recae.serving.registry import champion_of
    from recae.store.db import open_store

    if (home / "recae.db").exists() and champion_of(open_store(f"sqlite:///{home / 'recae.db'}")):
        return
    if not SHARED_ML100K.is_dir():
        sys.exit(f"ml-100k not found at {SHARED_ML100K}; give --home with a trained store")
    recae(home, "ingest", "ml-100k", "--path", str(SHARED_ML100K))
    args = ["train", "--split", "u1"]
    if small:
        config = home / "bench-small.toml"
        config.write_text(SMALL_CONFIG)
        args += ["--config", str(config)]
    recae(home, *args)


def request_mix(home: Path, count: int, seed: int) -> list[Request]:
    """``count`` requests in a seeded random order, from the store's users, films and ratings."""
    from sqlalchemy import select

    from recae.store.db import Rating, open_store

    engine = open_store(f"sqlite:///{home / 'recae.db'}")
    with engine.connect() as conn:
        pairs = np.array(conn.execute(select(Rating.user_id, Rating.movie_id, Rating.rating)).all())
    engine.dispose()
    rng = random.Random(seed)
    users = np.unique(pairs[:, 0]).astype(int).tolist()
    movies = np.unique(pairs[:, 1]).astype(int).tolist()
    by_user: dict[int, list[int]] = {}
    for row, user in enumerate(pairs[:, 0].astype(int)):
        by_user.setdefault(user, []).append(row)

    def fold_in(explain: bool) -> bytes:
        rows = rng.sample(by_user[rng.choice(users)], 5)
        ratings = {str(int(pairs[r, 1])): float(pairs[r, 2]) for r in rows}
        return json.dumps({"ratings": ratings, "n": 10, "explain": explain}).encode()

    unknown = max(movies) + 1000
    post = "/v1/recommendations"
    bad: list[tuple[str, str, bytes, int]] = [
        ("POST", post, b'{"ratings": {"50": 4', 422),
        ("POST", post, b'{"ratings": {"50": true}}', 422),
        ("POST", post, b'{"ratings": {" 50": 4, "50": 5}}', 422),
        ("POST", post, b'{"ratings": {"50": 4, "50": 5}}', 422),
        ("POST", post, b'{"ratings": {"50": 4}, "genre": "Nope"}', 422),
        ("POST", post, json.dumps({"ratings": {str(unknown): 4}}).encode(), 422),
        ("POST", post, b'{"ratings": {"50": 4}, "n": 1000}', 422),
        ("GET", "/v1/users/99999999/recommendations", b"", 404),
        ("GET", "/v1/users/1/recommendations?genre=Nope", b"", 422),
        ("GET", f"/v1/movies/{unknown}/similar", b"", 404),
    ]

    def one() -> Request:
        draw = rng.random()
        if draw < 0.45:
            return "list", "GET", f"/v1/users/{rng.choice(users)}/recommendations?n=10", b"", 200
        if draw < 0.65:
            return "fold-in", "POST", "/v1/recommendations", fold_in(rng.random() < 0.25), 200
        if draw < 0.80:
            return "similar", "GET", f"/v1/movies/{rng.choice(movies)}/similar?n=10", b"", 200
        if draw < 0.85:
            return "search", "GET", f"/v1/movies?query={rng.choice(['star', 'the', 'love', '%00', 'x'])}", b"", 200
        return ("bad", *rng.choice(bad))

    return [one() for _ in range(count)]


async def soak(port: int, pid: int, requests: list[Request], concurrency: int, every: int, warmup: int
               ) -> tuple[dict[str, list[float]], Counter, list[str], list[tuple[int, float]]]:
    """Send ``requests`` over ``concurrency`` connections; (latencies by kind, statuses, wrong answers, memory)."""
    latencies: dict[str, list[float]] = {}
    statuses: Counter = Counter()
    wrong: list[str] = []
    memory: list[tuple[int, float]] = []
    position = done = 0

    async def client() -> None:
        nonlocal position, done
        conn = await connect(port)
        while position < len(requests):
            kind, method, path, body, want = requests[position]
            position += 1
            began = time.perf_counter()
            status, payload = await conn.request(method, path, body)
            elapsed = time.perf_counter() - began
            done += 1
            if done > warmup:
                latencies.setdefault(kind, []).append(elapsed)
                statuses[status] += 1
                if status != want and len(wrong) < 20:
                    wrong.append(f"{method} {path} {body[:60]!r}: {status} (expected {want}) {payload[:120]!r}")
                if (done - warmup) % every == 0:
                    memory.append((done - warmup, memory_mb(pid)["VmRSS"]))
        conn.writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, statuses, wrong, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="recae home (created and trained when empty)")
    parser.add_argument("--small", action="store_true", help="train a one-member 20-epoch model if none serves")
    parser.add_argument("--requests", type=int, default=4000, help="requests measured (after --warmup)")
    parser.add_argument("--warmup", type=int, default=500, help="requests sent first and not measured")
    parser.add_argument("--concurrency", type=int, default=8, help="connections sending at once")
    parser.add_argument("--every", type=int, default=0,
                        help="sample memory every N requests (default: a 20th of the run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ensure_home(args.home, args.small)
    every = args.every or max(1, args.requests // 20)
    requests = request_mix(args.home, args.warmup + args.requests, args.seed)
    port = free_port()
    server = start_server(args.home, port)
    try:
        before = memory_mb(server.pid)
        began = time.perf_counter()
        latencies, statuses, wrong, memory = asyncio.run(
            soak(port, server.pid, requests, args.concurrency, every, args.warmup))
        elapsed = time.perf_counter() - began
        after = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    quarter = [mb for sent, mb in memory if sent >= 0.75 * args.requests]
    growth = (quarter[-1] - quarter[0]) / quarter[0] if len(quarter) >= 2 else float("nan")
    server_errors = sum(count for status, count in statuses.items() if status >= 500)
    level = bool(growth < LEVEL_GROWTH)
    report = {
        "requests": args.requests, "warmup": args.warmup, "concurrency": args.concurrency, "seconds": round(elapsed, 1),
        "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
        "latency_ms": {kind: {k: v for k, v in percentiles(np.array(values)).items() if k in ("p50_ms", "p99_ms")}
                       for kind, values in sorted(latencies.items())},
        "statuses": {str(k): v for k, v in sorted(statuses.items())}, "server_errors": server_errors,
        "wrong_status": wrong,
        "rss_mb": {"ready": before["VmRSS"], "end": after["VmRSS"], "peak": after["VmHWM"],
                   "every": {str(sent): mb for sent, mb in memory}},
        "last_quarter_growth_pct": round(100 * growth, 2),
        "memory_levels_off": level,
    }
    print(json.dumps(report, indent=2))
    print(f"memory {'levels off' if level else 'does NOT level off'}: the last quarter grew it "
          f"{100 * growth:.2f}% (limit {100 * LEVEL_GROWTH:.0f}%)", file=sys.stderr)
    sys.exit(0 if level and not server_errors and not wrong else 1)


if __name__ == "__main__":
    main()
