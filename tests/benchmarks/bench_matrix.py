"""Benchmark: ``RatingMatrix.from_db`` on a SQLite store shaped like MovieLens 25M.

Fills a fresh store (real Alembic schema) with N synthetic ratings written straight into the ``ratings``
table by ``sqlite3.executemany`` (ingest is benchmarked elsewhere), then times the load into CSR and reports
ratings/s and the process's peak resident memory.

    python tests/benchmarks/bench_matrix.py                 # 25M ratings, 162,541 users, 62,423 movies
    python tests/benchmarks/bench_matrix.py --rows 2000000  # a quicker run
    python tests/benchmarks/bench_matrix.py --db /tmp/bench.db --splits  # keep/reuse the store; time splits

Targets: >= 3,000,000 ratings/s and peak memory <= 3 GB for 25M ratings. The peak is measured in a
child process that only opens the store and loads the matrix, so the filling does not count.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ML25M_USERS = 162_541
ML25M_MOVIES = 62_423
ML25M_MAX_MOVIE_ID = 209_171
ML25M_FIRST_TS = 789_652_009
ML25M_LAST_TS = 1_574_327_703
TARGET_RATE = 3_000_000
TARGET_PEAK_BYTES = 3 * 1024**3


def synthetic_ratings(n_rows: int, n_users: int, n_movies: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """Yield sorted (user_id, movie_id, rating, timestamp) chunks, about ``n_rows`` ratings in all.

    Users have a heavy-tailed number of ratings (at least one), movies a Zipf-like popularity; movie ids are
    spread over 1..209171 like ML-25M's; ratings are half stars 0.5..5; 1% of timestamps are unknown (NULL).
    """
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.2, n_users)
    share = activity / activity.sum() * n_rows
    counts = np.floor(share).astype(np.int64)
    short = max(0, n_rows - int(counts.sum()))
    counts[np.argsort(counts - share)[:short]] += 1  # largest remainders first, so the total is n_rows
    counts = np.maximum(counts, 1)
    counts = np.minimum(counts, n_movies)
    movie_ids = np.sort(rng.choice(np.arange(1, ML25M_MAX_MOVIE_ID + 1), n_movies, replace=False))
    popularity = 1.0 / np.arange(1, n_movies + 1) ** 0.8
    popularity = rng.permutation(popularity / popularity.sum())
    cum_pop = np.cumsum(popularity)
    first = 0
    while first < n_users:
        last = min(n_users, int(np.searchsorted(np.cumsum(counts[first:]), 1_000_000)) + first + 1)
        want = counts[first:last]
        users = np.repeat(np.arange(first, last), (want * 1.3 + 8).astype(np.int64))
        cols = np.minimum(np.searchsorted(cum_pop, rng.random(users.size)), n_movies - 1)
        keys = np.unique(users * n_movies + cols)  # sorted by (user, movie), distinct
        users, cols = keys // n_movies, keys % n_movies
        starts = np.searchsorted(users, np.arange(first, last))
        rank = np.arange(users.size) - np.repeat(starts, np.diff(np.append(starts, users.size)))
        keep = rank < want[users - first]
        users, cols = users[keep], cols[keep]
        values = rng.integers(1, 11, users.size) * 0.5
        stamps = rng.integers(ML25M_FIRST_TS, ML25M_LAST_TS, users.size)
        unknown = rng.random(users.size) < 0.01
        stamp_list: list[int | None] = stamps.tolist()
        for i in np.flatnonzero(unknown).tolist():
            stamp_list[i] = None
        yield zip((users + 1).tolist(), movie_ids[cols].tolist(), values.tolist(), stamp_list, strict=True)
        first = last


def fill_store(path: Path, n_rows: int) -> int:
    """Create the schema with Alembic, then bulk-insert the synthetic ratings; returns the number written."""
    from recae.store.db import open_store

    open_store(f"sqlite:///{path}").dispose()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    written = 0
    for chunk in synthetic_ratings(n_rows, ML25M_USERS, ML25M_MOVIES):
        with conn:
            cur = conn.executemany(
                "INSERT INTO ratings (user_id, movie_id, rating, timestamp) VALUES (?, ?, ?, ?)", chunk
            )
            written += cur.rowcount
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return written


def _load(path: str, queue: mp.Queue, with_splits: bool) -> None:  # type: ignore[type-arg]
    from recae.store.db import open_store
    from recae.store.matrix import RatingMatrix

    engine = open_store(f"sqlite:///{path}")
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    matrix = RatingMatrix.from_db(engine)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result = {"nnz": matrix.nnz, "users": matrix.shape[0], "movies": matrix.shape[1], "seconds": seconds,
              "cpu_seconds": cpu, "peak_bytes": after.ru_maxrss * 1024}  # Linux reports KiB
    if with_splits:
        from recae.evaluation.splits import GENERATED_SPLITS, SplitSpec, holdout_validation, make_split

        for name in GENERATED_SPLITS:
            start = time.perf_counter()
            split = make_split(matrix, SplitSpec(name, 0.1, 0))
            result[f"split_{name}_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        holdout_validation(split.train, 0.05, 0)
        result["holdout_validation_s"] = round(time.perf_counter() - start, 3)
        result["holdout_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    queue.put(result)


def measure(path: Path, with_splits: bool = False) -> dict[str, float]:
    """Load the matrix in a fresh process (cold Python, warm OS page cache) and return its figures."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load, args=(str(path), queue, with_splits))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=25_000_000, help="synthetic ratings to write (default 25M)")
    parser.add_argument("--repeat", type=int, default=3, help="timed loads; the best is reported")
    parser.add_argument("--db", type=Path, help="store path; reused when it already holds ratings")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store file afterwards")
    parser.add_argument("--splits", action="store_true", help="also time every generated split (last run)")
    args = parser.parse_args()

    tmp = None
    if args.db is None:
        folder = tempfile.mkdtemp(prefix="recae-bench-")
        args.db = Path(folder) / "bench.db"
        tmp = None if args.keep else folder
    if not args.db.exists():
        start = time.perf_counter()
        written = fill_store(args.db, args.rows)
        print(f"filled {written:,} ratings in {time.perf_counter() - start:.1f}s ({args.db})", file=sys.stderr)
    runs = [measure(args.db, with_splits=args.splits and i == args.repeat - 1) for i in range(args.repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    rate = best["nnz"] / best["seconds"]
    peak = max(r["peak_bytes"] for r in runs)
    report = {
        "ratings": best["nnz"], "users": best["users"], "movies": best["movies"],
        "seconds_best": round(best["seconds"], 3), "seconds_all": [round(r["seconds"], 3) for r in runs],
        "ratings_per_s": round(rate),
        "ratings_per_cpu_s": round(best["nnz"] / best["cpu_seconds"]),  # robust to a busy shared machine
        "peak_rss_mib": round(peak / 2**20),
        "load_average_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "rate_target_met": rate >= TARGET_RATE, "peak_target_met": peak <= TARGET_PEAK_BYTES,
    }
    report.update({k: v for k, v in runs[-1].items() if k.startswith(("split_", "holdout"))})  # with --splits
    print(json.dumps(report, indent=2))
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {args.db}", file=sys.stderr)


if __name__ == "__main__":
    main()
