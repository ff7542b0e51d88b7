"""Training cost follows the number of ratings, not users x movies; peak memory on an ML-25M-shaped set.

Prints, for synthetic data with the same number of ratings spread over 1x, 4x and 16x as many movies, the seconds
per epoch of both orientations; then the peak resident memory of training a fixed number of batches on 25M
synthetic ratings shaped like ML-25M (162,541 users x 59,047 movies). Each case runs in a fresh process so that
its peak memory is its own.

    python tests/benchmarks/bench_train.py                 # scaling (1M ratings) + 25M memory
    python tests/benchmarks/bench_train.py --ratings 200000 --skip-25m --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def synthetic(n_users: int, n_movies: int, n_ratings: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """Distinct (user, movie) pairs with long-tailed popularity (Zipf-like), ratings 1..5 from a rank-8 model."""
    import numpy as np

    from recae.store.matrix import IdIndex, RatingMatrix

    rng = np.random.default_rng(seed)
    user_weight = 1.0 / np.arange(1, n_users + 1) ** 0.6
    movie_weight = 1.0 / np.arange(1, n_movies + 1) ** 0.9
    keys = np.zeros(0, np.int64)
    while keys.size < n_ratings:
        need = int((n_ratings - keys.size) * 1.1) + 1000
        users = rng.choice(n_users, need, p=user_weight / user_weight.sum())
        movies = rng.choice(n_movies, need, p=movie_weight / movie_weight.sum())
        keys = np.unique(np.concatenate([keys, users.astype(np.int64) * n_movies + movies]))
    keys = rng.permutation(keys)[:n_ratings]
    rows, cols = keys // n_movies, keys % n_movies
    u, v = rng.normal(0, 1, (n_users, 8)).astype(np.float32), rng.normal(0, 1, (n_movies, 8)).astype(np.float32)
    score = 3.5 + 0.4 * np.einsum("ij,ij->i", u[rows], v[cols]) + rng.normal(0, 0.5, rows.size)
    values = np.clip(np.round(score), 1, 5).astype(np.float32)
    index = IdIndex(np.arange(1, n_users + 1, dtype=np.int64), np.arange(1, n_movies + 1, dtype=np.int64))
    return RatingMatrix.from_positions(rows, cols, values, None, index)


def child(args: argparse.Namespace) -> None:
    """One measured case, in this process: print a JSON line."""
    import torch

    from recae.artifacts.train_config import TrainConfig
    from recae.models.batches import iterate_batches, oriented_csr
    from recae.models.build import build_model, model_config
    from recae.training.train import batch_objective, make_optimizer
    from recae.training.validation import unit_means

    torch.set_num_threads(args.threads)
    matrix = synthetic(args.users, args.movies, args.ratings)
    config = model_config(args.model, orientation=args.orientation)
    settings = TrainConfig(batch_ratings=args.batch_ratings, threads=args.threads)
    data = oriented_csr(matrix, args.orientation)
    module = build_model(config, data.shape[1], data.shape[1])
    with torch.no_grad():
        module.b_out.copy_(torch.from_numpy(unit_means(data, data.shape[1])))
    optimizer = make_optimizer(module, settings)
    times = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        for i, batch in enumerate(iterate_batches(data, data, settings.batch_ratings, seed=0, epoch=epoch)):
            if args.max_batches and i >= args.max_batches:
                break
            optimizer.zero_grad(set_to_none=True)
            _, loss = batch_objective(module, batch.inputs, batch.targets, settings, data.nnz)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB; GB = 10^9 bytes
    print(json.dumps({"orientation": args.orientation, "users": args.users, "movies": args.movies,
                      "ratings": matrix.nnz, "epoch_seconds": min(times), "peak_rss_gb": peak_gb}))


def run_case(**case: object) -> dict:  # type: ignore[type-arg]
    cmd = [sys.executable, __file__, "--child"] + [f"--{k.replace('_', '-')}={v}" for k, v in case.items()]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=6040)
    parser.add_argument("--movies", type=int, default=3706)
    parser.add_argument("--ratings", type=int, default=1_000_000)
    parser.add_argument("--orientation", default="item")
    parser.add_argument("--model", default="denoising")
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs; the fastest is reported")
    parser.add_argument("--max-batches", type=int, default=0)
    parser.add_argument("--batch-ratings", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-25m", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(f"seconds per epoch, {args.ratings:,} ratings, {args.users} users, {args.threads} threads, "
          f"batch {args.batch_ratings} ratings, model {args.model}")
    print(f"{'orientation':<12}{'movies':>8}{'x':>4}{'s/epoch':>10}{'peak GB':>9}")
    for orientation in ("item", "user"):
        for factor in (1, 4, 16):
            result = run_case(users=args.users, movies=args.movies * factor, ratings=args.ratings,
                              orientation=orientation, model=args.model, epochs=args.epochs,
                              batch_ratings=args.batch_ratings, threads=args.threads)
            print(f"{orientation:<12}{result['movies']:>8}{factor:>4}{result['epoch_seconds']:>10.2f}"
                  f"{result['peak_rss_gb']:>9.2f}", flush=True)
    if not args.skip_25m:
        batches = 20
        result = run_case(users=162_541, movies=59_047, ratings=25_000_000, orientation="item", model=args.model,
                          epochs=1, max_batches=batches, batch_ratings=262_144, threads=args.threads)
        print(f"ML-25M shape (162,541 x 59,047, 25M ratings), item orientation, {batches} batches of 262,144 "
              f"ratings: peak RSS {result['peak_rss_gb']:.2f} GB, {result['epoch_seconds']:.1f} s")


if __name__ == "__main__":
    main()
