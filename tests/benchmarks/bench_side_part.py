"""Benchmark: what the stacked side part (the films' genres and eras, ``recae.models.side_part``) costs at scale,
beside the Soft-Impute SVD fitted in the same stage of ``recae train``.

    python tests/benchmarks/bench_side_part.py --npz x32.npz        # an ML-32M-shaped CSR (users x films)

The films get planted groups shaped like ML-32M's catalogue (20 genres, about 2 a film, and their release eras).
With the data held as training holds it (the split's training part, its fit part and blend carve), prints the
resident memory, then the time and the process's peak after the SVD part, after the side part (on the SVD's
biases, as training fits it), and the time to predict the test part and to score 20,480 users' rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sparse_ease import as_matrix
from bench_train_memory import peak_gb, rss_gb

from recae.artifacts.train_config import default_configs
from recae.evaluation.splits import random_split
from recae.models.side_part import film_groups, fit_side_part
from recae.models.svd_part import fit_svd_part
from recae.training.ensemble import blend_carve

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


def planted_catalogue(n_movies: int, seed: int = 0) -> tuple[list[str], list[int | None]]:
    """Genre strings of one to three genres a film and release years from 1920 to 2023 (5% unknown)."""
    rng = np.random.default_rng(seed)
    genres = ["|".join(rng.choice(GENRES, size=rng.integers(1, 4), replace=False)) for _ in range(n_movies)]
    years = [None if rng.random() < 0.05 else int(y) for y in rng.integers(1920, 2024, n_movies)]
    return genres, years


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, required=True, help="a scipy.sparse .npz of ratings (users x films)")
    args = parser.parse_args()
    split = random_split(as_matrix(sp.load_npz(args.npz).tocsr().astype(np.float32)), 0.1, 0)
    _, train_cfg = default_configs()
    fit_part, _blend_part = blend_carve(split.train, replace(train_cfg).sized(split.train.nnz))
    groups = film_groups(*planted_catalogue(split.train.shape[1]))
    print(f"{split.train.nnz:,} training ratings, {len(groups.names)} groups; data held: RSS {rss_gb():.2f} GB, "
          f"peak {peak_gb():.2f} GB", flush=True)
    started = time.perf_counter()
    svd = fit_svd_part(fit_part)
    print(f"SVD part: {time.perf_counter() - started:.1f} s; RSS {rss_gb():.2f} GB, peak {peak_gb():.2f} GB",
          flush=True)
    started = time.perf_counter()
    side = fit_side_part(fit_part, groups, svd.biases, svd.bias_ridge)
    print(f"side part: {time.perf_counter() - started:.1f} s; RSS {rss_gb():.2f} GB, peak {peak_gb():.2f} GB",
          flush=True)
    rows, cols, _ = split.test.coo()
    started = time.perf_counter()
    side.predict(rows, cols)
    print(f"side part, {rows.size:,} test predictions: {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    for first in range(0, 20_480, 1024):
        side.score_rows(np.arange(first, first + 1024))
    print(f"side part, 20,480 users' rows of {split.train.shape[1]:,} films: {time.perf_counter() - started:.1f} s; "
          f"peak {peak_gb():.2f} GB", flush=True)


if __name__ == "__main__":
    main()
