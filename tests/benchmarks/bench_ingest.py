"""Benchmark: ingest a synthetic ML-25M-shaped ratings CSV into a fresh SQLite store; print ratings/s and memory.

    python tests/benchmarks/bench_ingest.py                 # 25,000,095 rows (about 680 MB of CSV, cached)
    python tests/benchmarks/bench_ingest.py --rows 5000000 --cache /tmp/recae-bench

The CSV is shaped like ML-25M: 162,541 users (ratings per user heavy-tailed, at least 20), 62,423 movies with
power-law popularity, half-star ratings, unique (user, movie) pairs, sorted by user then time. It is generated
once per size (in a child process, so its memory does not count against the ingest) and cached.
Targets on the 2-core dev machine: >= 500,000 ratings/s, peak memory <= 3 GB.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ML25M_ROWS = 25_000_095
ML25M_USERS = 162_541
ML25M_MOVIES = 62_423
HALF_STAR_WEIGHTS = np.array([1.6, 3.2, 1.6, 7.0, 5.2, 19.6, 12.8, 21.6, 8.4, 14.5])  # 0.5 .. 5.0, ML-25M-like


def synthetic_ratings(n_rows: int, n_users: int = ML25M_USERS, n_movies: int = ML25M_MOVIES,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user_id, movie_id, rating, timestamp) arrays with unique pairs, sorted by user then timestamp."""
    rng = np.random.default_rng(seed)
    n_users = max(1, min(n_users, n_rows // 20))
    popularity = 1.0 / np.arange(1, n_movies + 1) ** 0.9  # Zipf-like movie popularity
    popularity /= popularity.sum()
    movie_ids = rng.permutation(np.arange(1, n_movies * 3 + 1))[:n_movies]  # sparse ids like the real file
    activity = rng.pareto(1.2, n_users) + 1.0  # heavy-tailed ratings per user
    per_user = np.maximum(20, activity / activity.sum() * n_rows).astype(np.int64)
    per_user = np.minimum(per_user, n_movies // 2)
    keys = np.empty(0, dtype=np.int64)
    while keys.size < n_rows:  # draw pairs until enough unique ones exist
        users = rng.choice(n_users, n_rows - keys.size + n_rows // 50, p=per_user / per_user.sum())
        movies = rng.choice(n_movies, users.size, p=popularity)
        keys = np.unique(np.concatenate([keys, users.astype(np.int64) * n_movies + movies]))
    keys = rng.choice(keys, n_rows, replace=False)
    users, movies = np.divmod(keys, n_movies)
    stamps = rng.integers(789_652_009, 1_574_327_703, n_rows)
    order = np.lexsort((stamps, users))
    ratings = rng.choice(np.arange(1, 11) / 2.0, n_rows, p=HALF_STAR_WEIGHTS / HALF_STAR_WEIGHTS.sum())
    return users[order] + 1, movie_ids[movies[order]], ratings, stamps[order]


def write_ratings_csv(path: Path, n_rows: int, seed: int = 0, header: bool = True) -> Path:
    """Write ``userId,movieId,rating,timestamp`` lines (ML-25M style) to ``path`` atomically."""
    import pandas as pd

    users, movies, ratings, stamps = synthetic_ratings(n_rows, seed=seed)
    temp = path.with_suffix(".part")
    frame = pd.DataFrame({"userId": users, "movieId": movies, "rating": ratings, "timestamp": stamps})
    frame.to_csv(temp, index=False, header=header, float_format="%.1f", chunksize=1_000_000)
    temp.replace(path)
    return path


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=ML25M_ROWS, help="ratings to generate and ingest")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "recae-bench",
                        help="folder for the generated CSV (kept) and the store (removed)")
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    csv_path = args.cache / f"ratings-{args.rows}.csv"
    if args.generate_only:
        write_ratings_csv(csv_path, args.rows)
        return
    if not csv_path.exists():
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--cache", str(args.cache),
                        "--generate-only"], check=True)
        print(f"generated {csv_path} ({csv_path.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)

    from recae.store.db import count_ratings, open_store
    from recae.store.ingest import ingest_ratings_file

    db_file = args.cache / "bench.db"
    for leftover in args.cache.glob("bench.db*"):
        leftover.unlink()
    engine = open_store(f"sqlite:///{db_file}")
    started = time.perf_counter()
    report = ingest_ratings_file(engine, csv_path, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - started
    assert count_ratings(engine) == report.rows_loaded == args.rows, report
    engine.dispose()
    print(f"ingested {report.rows_loaded:,} ratings in {seconds:.1f} s: {report.rows_loaded / seconds:,.0f} ratings/s"
          f" (target >= 500,000)")
    print(f"peak memory: ingest process {peak_rss_mib(resource.RUSAGE_SELF):,.0f} MiB, children "
          f"{peak_rss_mib(resource.RUSAGE_CHILDREN):,.0f} MiB (target <= 3 GB); store "
          f"{db_file.stat().st_size / 2**20:,.0f} MiB")
    for leftover in args.cache.glob("bench.db*"):
        leftover.unlink()


if __name__ == "__main__":
    main()
