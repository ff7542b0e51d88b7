"""Speed-up of data-parallel training from 1 to 2 processes (torchrun, gloo on CPU), seconds per epoch.

Each case runs the default model (item orientation, one member, no lambda grid) for a few epochs on the same
ML-25M-shaped synthetic ratings (``recae.synth``), one thread per process, first in one process, then under
``torchrun --standalone --nproc_per_node=2``. Prints a JSON line per case and the speed-up.

    python tests/benchmarks/bench_distributed.py                       # 25M ratings, 2 epochs
    python tests/benchmarks/bench_distributed.py --ratings 2000000 --users 20000 --movies 8000 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def worker(args: argparse.Namespace) -> None:
    """One training run in this process (or in each torchrun rank): print rank 0's figures as JSON."""
    import numpy as np

    from recae.artifacts.train_config import TrainConfig, default_configs
    from recae.store.matrix import IdIndex, RatingMatrix
    from recae.synth import SynthSpec, generate
    from recae.training import distributed
    from recae.training.train import fit

    made = generate(SynthSpec(n_users=args.users, n_movies=args.movies, n_ratings=args.ratings, seed=0))
    users, rows = np.unique(made.user_ids, return_inverse=True)
    movies, cols = np.unique(made.movie_ids, return_inverse=True)
    matrix = RatingMatrix.from_positions(rows, cols, made.ratings, made.timestamps, IdIndex(users, movies))
    model_cfg, defaults = default_configs()
    settings = TrainConfig(epochs=args.epochs, patience=args.epochs, ensemble=1, weight_decay_grid=(),
                           weight_decay=defaults.weight_decay, lr=defaults.lr, threads=1, device="cpu")
    started = time.perf_counter()
    result = fit(matrix, None, model_cfg, settings)
    seconds = time.perf_counter() - started
    world = distributed.current()
    if world is None or world.primary:
        print(json.dumps({"processes": world.size if world else 1, "ratings": matrix.nnz, "epochs": result.epochs_run,
                          "seconds_per_epoch": round(seconds / result.epochs_run, 2),
                          "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}),
              flush=True)
    distributed.leave()


def measure(args: argparse.Namespace, processes: int) -> dict:
    own = [str(Path(__file__).resolve()), "--worker", "--ratings", str(args.ratings), "--users", str(args.users),
           "--movies", str(args.movies), "--epochs", str(args.epochs)]
    if processes == 1:
        command = [sys.executable, *own]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *own]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=25_000_095)
    parser.add_argument("--users", type=int, default=162_541)
    parser.add_argument("--movies", type=int, default=59_047)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    one = measure(args, 1)
    print(json.dumps(one), flush=True)
    two = measure(args, 2)
    print(json.dumps(two), flush=True)
    print(f"speed-up 1 -> 2 processes: {one['seconds_per_epoch'] / two['seconds_per_epoch']:.2f}x "
          f"({one['seconds_per_epoch']} -> {two['seconds_per_epoch']} s per epoch, {one['ratings']:,} ratings)")


if __name__ == "__main__":
    main()
