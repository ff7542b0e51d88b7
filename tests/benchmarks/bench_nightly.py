"""How long one nightly `recae retrain` takes on MovieLens 1M with 1% fresh ratings in the inbox.

Steps (each a real `python -m recae` process in a temporary home):
  1. ingest ml-1m from ../shared/data/ml-1m;
  2. train the champion with the default configuration on a random 90/10 split, seed 0 (`recae train`);
  3. write 1% fresh ratings (10,000 for ml-1m) into the inbox: (user, movie) pairs nobody rated yet, users drawn
     by their activity and movies by their popularity, rated by the bias model clip(round(mu + b_u + b_i + e)),
     e ~ N(0, 0.9), with b_u, b_i the mean residuals of the existing ratings;
  4. time `recae retrain` (ingest the inbox, warm-start a challenger, compare, publish or keep).

Prints each step's seconds and the retrain's JSON summary. Target: retrain <= 180 s on 2 cores.

    python tests/benchmarks/bench_nightly.py                          # ml-1m
    python tests/benchmarks/bench_nightly.py --dataset ml-100k --champion-epochs 40 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def recae(home: Path, *args: str, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "recae", "--home", str(home), *args], cwd=ROOT, text=True,
                            capture_output=True, env={**os.environ, **env})
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"`recae {' '.join(args)}` failed ({result.returncode}): {result.stderr[-2000:]}")
    return seconds, result.stdout


def fresh_ratings(home: Path, share: float, seed: int = 0) -> np.ndarray:
    """(n, 3) user_id, movie_id, rating: new pairs from the store's activity, popularity and bias structure."""
    from recae.store.db import open_store
    from recae.store.matrix import RatingMatrix

    matrix = RatingMatrix.from_db(open_store(f"sqlite:///{home / 'recae.db'}"))
    rng = np.random.default_rng(seed)
    rows, cols, values = matrix.coo()
    mu = float(values.mean())
    n_users, n_movies = matrix.shape
    user_count = np.bincount(rows, minlength=n_users)
    movie_count = np.bincount(cols, minlength=n_movies)
    b_u = np.bincount(rows, weights=values - mu, minlength=n_users) / (user_count + 5)
    b_i = np.bincount(cols, weights=values - mu, minlength=n_movies) / (movie_count + 5)
    wanted = round(share * matrix.nnz)
    seen = set((rows * n_movies + cols).tolist())
    picked: list[int] = []
    while len(picked) < wanted:
        u = rng.choice(n_users, 2 * wanted, p=user_count / user_count.sum())
        m = rng.choice(n_movies, 2 * wanted, p=movie_count / movie_count.sum())
        for key in (u * n_movies + m).tolist():
            if key not in seen:
                seen.add(key)
                picked.append(key)
                if len(picked) == wanted:
                    break
    keys = np.asarray(picked, dtype=np.int64)
    u, m = keys // n_movies, keys % n_movies
    scores = np.clip(np.round(mu + b_u[u] + b_i[m] + rng.normal(0, 0.9, keys.size)), 1, 5)
    return np.column_stack([matrix.index.user_ids[u], matrix.index.movie_ids[m], scores]).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k"])
    parser.add_argument("--share", type=float, default=0.01, help="Fresh ratings as a share of the stored ones.")
    parser.add_argument("--champion-epochs", type=int, help="Cap the champion's epochs (default: the config's).")
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL threads for every step.")
    parser.add_argument("--home", type=Path, help="Reuse this home (keeps ingest and champion between runs).")
    args = parser.parse_args()
    data = SHARED / args.dataset
    if not data.is_dir():
        sys.exit(f"{data} not found; the benchmark needs MovieLens in ../shared/data")
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    home = args.home or Path(tempfile.mkdtemp(prefix="bench-nightly-"))
    print(f"home {home}, {args.threads} threads, {os.cpu_count()} cores visible")
    if not (home / "recae.db").exists():
        seconds, _ = recae(home, "ingest", args.dataset, "--path", str(data), env=env)
        print(f"ingest {args.dataset}: {seconds:.1f} s")
        extra = ["--epochs", str(args.champion_epochs)] if args.champion_epochs else []
        seconds, out = recae(home, "train", "--split", "random", "--test-fraction", "0.1", "--seed", "0",
                             "--format", "json", *extra, env=env)
        champion = json.loads(out)
        print(f"champion (default config, random 90/10 seed 0): {seconds:.1f} s, test RMSE "
              f"{champion['test_rmse']:.4f}, best epoch {champion['best_epoch']}")
    fresh = fresh_ratings(home, args.share)
    inbox = home / "inbox"
    inbox.mkdir(exist_ok=True)
    name = f"fresh-{int(time.time())}.csv"
    np.savetxt(inbox / name, fresh, fmt="%d", delimiter=",")
    print(f"wrote {len(fresh):,} fresh ratings to {inbox / name}")
    seconds, out = recae(home, "retrain", env=env)
    report = json.loads(out)
    m = report["metrics"]
    print(f"recae retrain: {seconds:.1f} s wall (job's own clock {report['seconds']:.1f} s); decision "
          f"{report['decision']}; fine-tune {m.get('seconds')} s, {m.get('epochs')} epochs "
          f"(best {m.get('best_epoch')}); champion RMSE {m.get('champion_rmse')}, challenger {m.get('challenger_rmse')} on {m.get('n_compared')} "
          "held-out ratings")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
