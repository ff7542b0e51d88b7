"""Benchmark: the EASE ranker at scale: fit (Gram + in-place inverse) and top-N for every user, time and peak memory.

    python tests/benchmarks/bench_ranker.py                                   # ML-25M shape, top-100
    python tests/benchmarks/bench_ranker.py --users 6040 --movies 3706 --ratings 1000209

Synthetic ratings from ``recae.synth`` (ML-25M's shape: 162,541 users x 59,047 films, 25,000,095 ratings, a long
popularity tail). EASE covers the ``--max-items`` most-rated films (default: the shipped 20,000). Scoring is
batched like ``recae.serving.recommend.precompute_recommendations`` (the same top-N selection), without the store writes.
Targets: peak <= 6 GB; top-100 for every user <= 5 min (the whole precompute also scores the rating model).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import scipy.sparse as sp

from recae.evaluation.metrics import dense_flags
from recae.models.rankers import DEFAULT_MAX_ITEMS, fit_ease
from recae.evaluation.metrics import top_k_unseen
from recae.serving.recommend import precompute_batch_users
from recae.synth import SynthSpec, generate


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=162_541)
    parser.add_argument("--movies", type=int, default=59_047)
    parser.add_argument("--ratings", type=int, default=25_000_095)
    parser.add_argument("--max-items", type=int, default=DEFAULT_MAX_ITEMS)
    parser.add_argument("--lam", type=float, default=500.0)
    parser.add_argument("--top", type=int, default=100)
    parser.add_argument("--max-users", type=int, default=0, help="score only this many users (0: all)")
    args = parser.parse_args()

    started = time.perf_counter()
    data = generate(SynthSpec(n_users=args.users, n_movies=args.movies, n_ratings=args.ratings))
    rows = data.user_ids - data.user_ids.min()
    csr = sp.csr_matrix((data.ratings, (rows, data.movie_ids - 1)), shape=(args.users, args.movies), dtype=np.float32)
    del data, rows
    print(f"data: {csr.nnz:,} ratings, {args.users:,} x {args.movies:,} ({time.perf_counter() - started:.1f} s, "
          f"peak {peak_gib():.2f} GiB)", flush=True)

    started, cpu = time.perf_counter(), time.process_time()
    ranker = fit_ease(csr, args.lam, max_items=args.max_items)
    fit_s, fit_cpu = time.perf_counter() - started, time.process_time() - cpu
    covered = np.isin(csr.indices, ranker.items).mean()
    print(f"fit: {ranker.items.size:,} films covered ({covered:.1%} of the ratings), {fit_s:.1f} s "
          f"(CPU {fit_cpu:.1f} s), peak {peak_gib():.2f} GiB", flush=True)

    n_users = args.max_users or args.users
    batch = precompute_batch_users(args.movies)
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, n_users, batch):
        block = csr[start : min(start + batch, n_users)]
        scores = ranker.score_rows(block)  # (batch, n_movies)
        top_k_unseen(scores, dense_flags(block.indptr, block.indices, scores.shape), args.top)
    score_s, score_cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"top-{args.top} for {n_users:,} users: {score_s:.1f} s, CPU {score_cpu:.1f} s ({n_users / score_s:,.0f} "
          f"users/s; all {args.users:,}: {score_s * args.users / n_users:.0f} s), peak {peak_gib():.2f} GiB",
          flush=True)


if __name__ == "__main__":
    main()
