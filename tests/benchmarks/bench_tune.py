"""Benchmark: `recae train --tune` on data the defaults were not developed on, against TUNED baselines.

    python tests/benchmarks/bench_tune.py                                   # ml-latest-small, 4-minute budget
    python tests/benchmarks/bench_tune.py --budget 10 --synth 6040,3706,1000209   # a `recae synth` catalogue

Split: random 90/10, seed 0 (``--seed``), the same for every model. The tuned autoencoder comes from the real
command (`recae train --tune --budget B`, a subprocess on a fresh home, wall time measured around it). The
baselines are tuned on the very carve `--tune` scores its trials on (``recae.training.tune``'s outer carve of the training
part): biased MF by its regulariser, the Soft-Impute SVD by rank and shrinkage; each is then refitted on the whole
training part with its chosen setting and scored once on the test part, as the tuned model is.
Target (issue 13): the tuned model's test RMSE beats the tuned baselines'; --tune keeps its budget.
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

from recae.evaluation.baselines import BiasBaseline, TruncatedSVDBaseline
from recae.store.matrix import RatingMatrix

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-latest-small"
BIAS_REGS = (1.0, 2.0, 5.0, 10.0, 20.0, 40.0)
SVD_RANKS = (5, 10, 20, 40, 80)
SVD_SHRINKAGE = (2.0, 5.0, 10.0, 15.0, 25.0)


def rmse(model: object, ratings: RatingMatrix) -> float:
    rows, cols, values = ratings.coo()
    predicted = np.asarray(model.predict(rows, cols), dtype=np.float64)  # type: ignore[attr-defined]
    return float(np.sqrt(np.mean((predicted - values) ** 2)))


def recae(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, "-m", "recae", "--home", str(home), *args], capture_output=True,
                          text=True, env=env, check=False)


def tuned_baselines(train: RatingMatrix, test: RatingMatrix, seed: int) -> list[dict[str, object]]:
    """Each baseline's setting chosen on --tune's outer carve of ``train``, then refitted on all of it."""
    from recae.evaluation.splits import holdout_validation
    from recae.training.tune import OUTER_SEED_OFFSET, TUNE_VAL_FRACTION

    rest, carve = holdout_validation(train, TUNE_VAL_FRACTION, seed + OUTER_SEED_OFFSET)
    results = []
    started = time.perf_counter()
    scores = {reg: rmse(BiasBaseline(reg, reg).fit(rest), carve) for reg in BIAS_REGS}
    reg = min(scores, key=scores.__getitem__)
    results.append({"baseline": "biases", "setting": f"reg {reg:g}", "val_rmse": scores[reg],
                    "test_rmse": rmse(BiasBaseline(reg, reg).fit(train), test),
                    "seconds": time.perf_counter() - started})
    started = time.perf_counter()
    svd_scores = {(rank, lam): rmse(TruncatedSVDBaseline(rank=rank, shrinkage=lam, reg_user=reg, reg_item=reg)
                                    .fit(rest), carve)
                  for rank in SVD_RANKS for lam in SVD_SHRINKAGE}
    rank, lam = min(svd_scores, key=svd_scores.__getitem__)
    svd = TruncatedSVDBaseline(rank=rank, shrinkage=lam, reg_user=reg, reg_item=reg).fit(train)
    results.append({"baseline": "svd (soft-impute)", "setting": f"rank {rank}, shrinkage {lam:g}, reg {reg:g}",
                    "val_rmse": svd_scores[(rank, lam)], "test_rmse": rmse(svd, test),
                    "seconds": time.perf_counter() - started})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="a MovieLens folder (default: ml-latest-small)")
    parser.add_argument("--dataset", default="ml-latest-small", help="its name for `recae ingest`")
    parser.add_argument("--synth", metavar="USERS,MOVIES,RATINGS", help="use a `recae synth` catalogue instead")
    parser.add_argument("--budget", type=float, default=4.0, help="--tune budget in minutes")
    parser.add_argument("--seed", type=int, default=0, help="the split's seed")
    parser.add_argument("--keep", type=Path, help="keep the home here (default: a temporary folder)")
    args = parser.parse_args()

    home = args.keep or Path(tempfile.mkdtemp(prefix="bench-tune-"))
    if args.synth:
        users, movies, ratings = (int(x) for x in args.synth.split(","))
        csv = home / "synth.csv"
        home.mkdir(parents=True, exist_ok=True)
        made = recae(home, "synth", "--users", str(users), "--movies", str(movies), "--ratings", str(ratings),
                     "--out", str(csv))
        assert made.returncode == 0, made.stderr
        ingested = recae(home, "ingest", "--ratings", str(csv), "--scale", "1", "5", "--step", "1")
        label = f"synth {users}x{movies}, {ratings:,} ratings"
    else:
        ingested = recae(home, "ingest", args.dataset, "--path", str(args.data))
        label = args.dataset
    assert ingested.returncode == 0, ingested.stderr

    started = time.perf_counter()
    trained = recae(home, "-v", "train", "--tune", "--budget", str(args.budget), "--seed", str(args.seed),
                    "--format", "json")
    wall = time.perf_counter() - started
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads(trained.stdout)
    shown = json.loads(recae(home, "models", "show", "--format", "json").stdout)
    record = shown["config"]["tune"]
    for line in trained.stderr.splitlines():
        if "recae.training.tune" in line:
            print(line.split("recae.training.tune: ", 1)[-1])

    from recae.evaluation.splits import random_split
    from recae.paths import resolve_paths
    from recae.store.db import open_store

    engine = open_store(resolve_paths(home).database_url)
    try:
        matrix = RatingMatrix.from_db(engine)
    finally:
        engine.dispose()
    split = random_split(matrix, 0.1, args.seed)
    assert split.test.nnz == shown["metrics"]["n_test"], "the baselines' split must be the model's"
    baselines = tuned_baselines(split.train, split.test, args.seed)

    n_users, n_movies = matrix.shape
    print(f"\n{label}: {matrix.nnz:,} ratings, {n_users:,} users x {n_movies:,} films, scale "
          f"{matrix.rating_scale()}; random 90/10 split seed {args.seed}: {split.train.nnz:,} train, "
          f"{split.test.nnz:,} test; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
    print(f"--tune --budget {args.budget:g} min: wall {wall:.0f} s ({wall / 60 / args.budget:.0%} of the budget; "
          f"search {record['search_seconds']:.0f} s, {len(record['trials'])} trials, {record['stopped']}; final "
          f"{record.get('final_seconds')} s, estimated {record['estimated_final_seconds']} s)")
    print(f"  chosen: {record['chosen']}")
    print(f"  members: {record['members']}")
    print(f"{'model':<22} {'setting':<40} {'val RMSE':>9} {'test RMSE':>10} {'seconds':>8}")
    print(f"{'recae --tune':<22} {'(one member of the chosen)':<40} {record['chosen']['val_rmse']:>9.4f} "
          f"{summary['test_rmse']:>10.4f} "
          f"{wall:>8.0f}")
    for row in baselines:
        print(f"{row['baseline']:<22} {row['setting']:<40} {row['val_rmse']:>9.4f} {row['test_rmse']:>10.4f} "
              f"{row['seconds']:>8.1f}")
    best = min(float(row["test_rmse"]) for row in baselines)  # type: ignore[arg-type]
    print(f"target (beats the best tuned baseline): {'met' if summary['test_rmse'] < best else 'NOT met'} "
          f"({summary['test_rmse']:.4f} vs {best:.4f})")


if __name__ == "__main__":
    main()
