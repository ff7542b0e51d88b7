"""Benchmark: what the time term of dense EASE's Gram (``recae.models.time_pairs``) costs at the largest catalogue
dense EASE serves, ML-10M's shape (10M ratings, 69,878 users, 10,677 films; synthetic, Zipf-popular films, each
user's ratings spread over a year).

    python tests/benchmarks/bench_time_pairs.py                      # ML-10M shape, window 3
    python tests/benchmarks/bench_time_pairs.py --ratings 1000209 --users 6040 --movies 3706   # ml-1m's shape

Prints the time and the process's peak resident memory after the Gram matrix, then after adding the time term.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train_memory import peak_gb, rss_gb

from recae.models.rankers import covered_items, gram_matrix, ranker_input
from recae.models.time_pairs import add_time_neighbours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=10_000_054)
    parser.add_argument("--users", type=int, default=69_878)
    parser.add_argument("--movies", type=int, default=10_677)
    parser.add_argument("--window", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, args.movies + 1) ** 0.8
    keys = np.unique(rng.integers(0, args.users, args.ratings) * args.movies
                     + rng.choice(args.movies, args.ratings, p=popularity / popularity.sum()))
    rows, cols = keys // args.movies, keys % args.movies
    values = rng.integers(1, 6, keys.size).astype(np.float32)
    csr = sp.csr_matrix((values, (rows, cols)), shape=(args.users, args.movies))
    csr.sort_indices()
    stamps = 1_000_000_000 + rng.integers(0, 365 * 86_400, csr.nnz)
    items = covered_items(csr, 20_000)
    x = ranker_input(csr, "value", 5.0)
    print(f"{csr.nnz:,} ratings, {items.size:,} films; RSS {rss_gb():.2f} GB, peak {peak_gb():.2f} GB", flush=True)
    started = time.perf_counter()
    gram = gram_matrix(x[:, items])
    print(f"Gram matrix: {time.perf_counter() - started:.1f} s; peak {peak_gb():.2f} GB", flush=True)
    started = time.perf_counter()
    add_time_neighbours(gram, x, stamps, items, args.window, 0.25)
    print(f"time term (window {args.window}): {time.perf_counter() - started:.1f} s; peak {peak_gb():.2f} GB",
          flush=True)


if __name__ == "__main__":
    main()
