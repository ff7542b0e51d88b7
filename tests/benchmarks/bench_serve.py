"""Benchmark: `recae serve` on ml-1m, over loopback, one worker; prints latencies, errors and the worker's memory.

    python tests/benchmarks/bench_serve.py --home /tmp/recae-ml1m            # a home with ml-1m and a champion
    python tests/benchmarks/bench_serve.py --home /tmp/recae-ml1m --rate 200 --seconds 60 --foldin 200

Without a champion in --home, ml-1m is ingested from ../shared/data and the default model trained first
(`recae train --split random --test-fraction 0.1 --seed 0`, about 3-6 min on 2 cores); --small trains a
one-member [train] epochs = 20 model instead (say so beside its figures).

Phases, each against one `recae serve` process (started here on a free loopback port):
1. precomputed lists: an open loop sends GET /v1/users/{id}/recommendations?n=10 at --rate requests/s for
   --seconds, for random known users, over 16 keep-alive connections; latency runs from the moment a request was
   due (so queueing behind a slow answer counts: no coordinated omission). Targets: p50 <= 5 ms, p99 <= 25 ms,
   zero errors.
2. fold-in: --foldin sequential POST /v1/recommendations with 5 rated films each (5 of a random ml-1m user's
   ratings), without and with explain (leave-one-out: 6 fold-ins). Target: p50 <= 100 ms without explain.
Each phase also reports the server's own CPU per request (from /proc), which the machine's other work does not
inflate the way it inflates latency: 200 requests/s fit one core while it stays under 5 ms.
3. memory: the worker's resident memory now and at its peak (VmRSS, VmHWM) after every path ran, similar films
   included. Target: <= 500 MB.
Loops are bounded; the machine is usually shared with other work: say so beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED_ML1M = ROOT.parent / "shared" / "data" / "ml-1m"
SMALL_CONFIG = "[train]\nepochs = 20\nensemble = 1\npartner_members = 0\n"


def recae(home: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "recae", "--home", str(home), *args], cwd=ROOT, check=True,
                   env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def ensure_home(home: Path, small: bool) -> None:
    """Ingest ml-1m and train a champion unless ``home`` already has one."""
    from recae.serving.registry import champion_of
    from recae.store.db import open_store

    if (home / "recae.db").exists() and champion_of(open_store(f"sqlite:///{home / 'recae.db'}")):
        return
    if not SHARED_ML1M.is_dir():
        sys.exit(f"ml-1m not found at {SHARED_ML1M}; give --home with a trained store")
    recae(home, "ingest", "ml-1m", "--path", str(SHARED_ML1M))
    args = ["train", "--split", "random", "--test-fraction", "0.1", "--seed", "0"]
    if small:
        config = home / "bench-small.toml"
        config.write_text(SMALL_CONFIG)
        args += ["--config", str(config)]
    recae(home, *args)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(home: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "recae", "--home", str(home), "serve", "--port", str(port),
                                "--log-level", "warning"], cwd=ROOT,
                               env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    sys.exit("recae serve did not become ready in 120 s")


class Connection:
    """One keep-alive HTTP/1.1 connection: a request written, the answer read by its Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload


async def connect(port: int) -> Connection:
    return Connection(*await asyncio.open_connection("127.0.0.1", port))


async def open_loop(port: int, paths: list[str], rate: float, seconds: float, connections: int = 16,
                    bodies: list[bytes] | None = None) -> tuple[np.ndarray, int, int]:
    """Send ``paths`` round-robin at ``rate``/s for ``seconds`` (GET, or POST ``bodies`` round-robin when given);
    (latencies in s, errors, requests sent)."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await connect(port))
    total = int(rate * seconds)
    latencies = np.full(total, np.nan)
    errors = 0

    async def one(i: int, due: float) -> None:
        nonlocal errors
        conn = await pool.get()
        try:
            if bodies is None:
                status, _ = await conn.request("GET", paths[i % len(paths)])
            else:
                status, _ = await conn.request("POST", paths[i % len(paths)], bodies[i % len(bodies)])
            if status != 200:
                errors += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            conn = await connect(port)
        latencies[i] = time.perf_counter() - due
        pool.put_nowait(conn)

    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return latencies, errors, total


async def sequential(port: int, bodies: list[bytes], paths: list[str] | None = None) -> tuple[np.ndarray, int]:
    """One request at a time: POST each body (or GET each path); (latencies in s, errors)."""
    conn = await connect(port)
    latencies, errors = [], 0
    for i in range(len(paths) if paths is not None else len(bodies)):
        began = time.perf_counter()
        if paths is not None:
            status, _ = await conn.request("GET", paths[i])
        else:
            status, _ = await conn.request("POST", "/v1/recommendations", bodies[i])
        latencies.append(time.perf_counter() - began)
        errors += status != 200
    return np.array(latencies), errors


def percentiles(latencies: np.ndarray) -> dict[str, float]:
    ms = latencies[~np.isnan(latencies)] * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (what a request costs the server, whatever else runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid: int, run) -> tuple[object, float]:  # type: ignore[no-untyped-def]
    """``run()``'s result and the server CPU milliseconds it cost."""
    before = cpu_seconds(pid)
    result = run()
    return result, (cpu_seconds(pid) - before) * 1000


def memory_mb(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: round(int(fields[name].split()[0]) / 1024, 1) for name in ("VmRSS", "VmHWM")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="recae home (created and trained when empty)")
    parser.add_argument("--small", action="store_true", help="train a one-member 20-epoch model if none serves")
    parser.add_argument("--rate", type=float, default=200.0, help="precomputed requests per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the precomputed phase")
    parser.add_argument("--foldin", type=int, default=100, help="fold-in requests of each kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ensure_home(args.home, args.small)
    from sqlalchemy import select

    from recae.serving.registry import get_version
    from recae.store.db import Rating, open_store

    engine = open_store(f"sqlite:///{args.home / 'recae.db'}")
    info = get_version(engine)
    with engine.connect() as conn:
        pairs = np.array(conn.execute(select(Rating.user_id, Rating.movie_id, Rating.rating)).all())
    rng = random.Random(args.seed)
    users = np.unique(pairs[:, 0]).astype(int).tolist()
    paths = [f"/v1/users/{rng.choice(users)}/recommendations?n=10" for _ in range(5000)]
    order = np.argsort(pairs[:, 0], kind="stable")
    splits = np.split(order, np.unique(pairs[order, 0], return_index=True)[1][1:])  # row numbers per user

    def fold_body(explain: bool) -> bytes:
        rows = splits[rng.randrange(len(splits))]
        picked = rng.sample(list(rows), 5)
        ratings = {str(int(pairs[r, 1])): float(pairs[r, 2]) for r in picked}
        return json.dumps({"ratings": ratings, "n": 10, "explain": explain}).encode()

    port = free_port()
    server = start_server(args.home, port)
    try:
        warm = [fold_body(False) for _ in range(5)]
        asyncio.run(sequential(port, warm))  # loads and warms the model
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/movies/1/similar?n=10", timeout=60).read()
        asyncio.run(open_loop(port, paths, min(args.rate, 50.0), 2.0))  # warm connections and caches
        (one_by_one, seq_errors), cpu_ms = measured(server.pid, lambda: asyncio.run(sequential(port, [], paths[:1000])))
        sequential_gets = {"requests": 1000, "errors": seq_errors, "server_cpu_ms_per_request": round(cpu_ms / 1000, 2),
                           **percentiles(one_by_one)}
        began = time.perf_counter()
        (latencies, errors, sent), cpu_ms = measured(
            server.pid, lambda: asyncio.run(open_loop(port, paths, args.rate, args.seconds)))
        elapsed = time.perf_counter() - began
        precomputed = {"requests": sent, "errors": errors, "achieved_rps": round(sent / elapsed, 1),
                       "server_cpu_ms_per_request": round(cpu_ms / sent, 2), **percentiles(latencies)}
        (plain, plain_errors), plain_cpu = measured(
            server.pid, lambda: asyncio.run(sequential(port, [fold_body(False) for _ in range(args.foldin)])))
        (explained, explained_errors), explained_cpu = measured(
            server.pid, lambda: asyncio.run(sequential(port, [fold_body(True) for _ in range(args.foldin)])))
        report = {
            "model": info.version, "users": len(users), "ratings": int(pairs.shape[0]), "cpu_count": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0],
            "precomputed_one_at_a_time": sequential_gets,
            "precomputed_open_loop": precomputed,
            "fold_in_5_rated": {"requests": args.foldin, "errors": plain_errors,
                                "server_cpu_ms_per_request": round(plain_cpu / args.foldin, 1), **percentiles(plain)},
            "fold_in_5_rated_explained": {"requests": args.foldin, "errors": explained_errors,
                                          "server_cpu_ms_per_request": round(explained_cpu / args.foldin, 1),
                                          **percentiles(explained)},
            "worker_memory_mb": memory_mb(server.pid),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
