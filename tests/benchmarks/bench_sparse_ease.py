"""Benchmark: sparse EASE over the whole catalogue: fit with its lambda search, top-100 for every user, quality.

    /usr/bin/time -v python tests/benchmarks/bench_sparse_ease.py scale                 # ML-32M shape
    /usr/bin/time -v python tests/benchmarks/bench_sparse_ease.py scale --users 162541 --movies 62423 \\
        --ratings 25000095                                                                 # ML-25M shape
    python tests/benchmarks/bench_sparse_ease.py quality                                   # u1, ml-1m, latest-small

``scale``: synthetic ratings from ``recae.synth`` (or ``--npz`` a saved CSR), sparse EASE fitted as ``recae train``
fits it (lambda searched on a validation carve of a user sample, then the final fit), then top-100 unseen films
for every user, batched as ``precompute_recommendations`` batches them. Prints seconds, peak RSS and films covered.

``quality``: on each real split (ml-100k u1.base/u1.test; ml-1m and ml-latest-small random 90/10, seed 0, as
``recae train --split random --test-fraction 0.1 --seed 0`` builds them) dense EASE and sparse EASE each choose
lambda on their own validation carve of the training part, then are scored once on the test part: NDCG@10 with
held-out ratings from 0.8 x the top rating relevant. ``--heads`` adds sparse EASE with smaller heads, so that the
approximation is measured where the default head would hold every film.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recae.evaluation.metrics import RowScores, dense_flags, ranking_metrics, relevance_threshold
from recae.models.rankers import train_ease
from recae.models.sparse_ease import DEFAULT_HEAD_ITEMS, DEFAULT_NEIGHBOURS, train_sparse_ease
from recae.evaluation.metrics import top_k_unseen
from recae.serving.recommend import precompute_batch_users
from recae.store.matrix import IdIndex, RatingMatrix
from recae.threads import in_order_on_threads

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def as_matrix(csr: sp.csr_matrix) -> RatingMatrix:
    coo = csr.tocoo()
    index = IdIndex(np.arange(1, csr.shape[0] + 1), np.arange(1, csr.shape[1] + 1))
    return RatingMatrix.from_positions(coo.row, coo.col, coo.data, None, index)


def scale(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    if args.npz:
        csr = sp.load_npz(args.npz).tocsr().astype(np.float32)
    else:
        from recae.synth import SynthSpec, generate

        data = generate(SynthSpec(n_users=args.users, n_movies=args.movies, n_ratings=args.ratings))
        rows = data.user_ids - data.user_ids.min()
        csr = sp.csr_matrix((data.ratings, (rows, data.movie_ids - 1)), shape=(args.users, args.movies),
                            dtype=np.float32)
        del data, rows
    train = as_matrix(csr)
    del csr
    rated = int(np.count_nonzero(np.bincount(train.csr.indices, minlength=train.shape[1])))
    print(f"data: {train.nnz:,} ratings, {train.shape[0]:,} x {train.shape[1]:,}, {rated:,} films rated "
          f"({time.perf_counter() - started:.1f} s, peak {peak_gib():.2f} GiB)", flush=True)

    started = time.perf_counter()
    ranker, search = train_sparse_ease(train, lam=args.lam, head_items=args.head, neighbours=args.neighbours)
    fit_s = time.perf_counter() - started
    trials = ", ".join(f"{t['lambda']:g}: {t['ndcg@10']:.4f}" for t in search.get("trials", []))
    print(f"fit with lambda search: {fit_s:.1f} s, lambda {ranker.lam:g} (trials on {search.get('sample_ratings', 0):,}"
          f" ratings: {trials}), items {ranker.describe()['items']:,} of {rated:,} rated "
          f"(head {ranker.head.size:,}, tail {ranker.tail.size:,}, {ranker.tail_weights.nnz:,} tail weights), "
          f"peak {peak_gib():.2f} GiB", flush=True)

    csr = train.csr
    n_users = args.max_users or csr.shape[0]
    batch = precompute_batch_users(csr.shape[1])
    started = time.perf_counter()

    def top_of(start: int) -> np.ndarray:  # batched and threaded as precompute_recommendations does it
        block = csr[start:min(start + batch, n_users)]
        scores = ranker.score_rows(block)
        return top_k_unseen(scores, dense_flags(block.indptr, block.indices, scores.shape), args.top)

    for _ in in_order_on_threads(top_of, range(0, n_users, batch)):
        pass
    score_s = time.perf_counter() - started
    print(f"top-{args.top} for {n_users:,} users: {score_s:.1f} s ({n_users / score_s:,.0f} users/s; all "
          f"{csr.shape[0]:,}: {score_s * csr.shape[0] / n_users:.0f} s), peak {peak_gib():.2f} GiB", flush=True)


def real_splits() -> dict[str, tuple[RatingMatrix, RatingMatrix]]:
    """name -> (train, test) on one IdIndex, read from ../shared/data."""
    import pandas as pd

    def split(frame: pd.DataFrame, test_mask: np.ndarray) -> tuple[RatingMatrix, RatingMatrix]:
        users, movies = np.unique(frame.u.to_numpy()), np.unique(frame.i.to_numpy())
        index = IdIndex(users.astype(np.int64), movies.astype(np.int64))
        rows, cols = np.searchsorted(users, frame.u.to_numpy()), np.searchsorted(movies, frame.i.to_numpy())
        whole = RatingMatrix.from_positions(rows, cols, frame.r.to_numpy(np.float32), None, index)
        order = np.lexsort((cols, rows))  # the matrix's rating order
        mask = test_mask[order]
        return whole.subset(~mask), whole.subset(mask)

    names = ["u", "i", "r", "t"]
    out = {}
    base = pd.read_csv(DATA / "ml-100k" / "u1.base", sep="\t", names=names)
    test = pd.read_csv(DATA / "ml-100k" / "u1.test", sep="\t", names=names)
    out["ml-100k u1"] = split(pd.concat([base, test]), np.r_[np.zeros(len(base), bool), np.ones(len(test), bool)])
    ml1m = pd.read_csv(DATA / "ml-1m" / "ratings.dat", sep="::", engine="python", names=names)
    out["ml-1m random 90/10 seed 0"] = split(ml1m, np.random.default_rng(0).random(len(ml1m)) < 0.1)
    small = pd.read_csv(DATA / "ml-latest-small" / "ratings.csv", names=names, header=0)
    out["ml-latest-small random 90/10 seed 0"] = split(small, np.random.default_rng(0).random(len(small)) < 0.1)
    return out


def quality(args: argparse.Namespace) -> None:
    if not (DATA / "ml-100k").is_dir():
        raise SystemExit(f"no MovieLens data at {DATA}")
    for name, (train, test) in real_splits().items():
        threshold = relevance_threshold(train.rating_scale()[1])

        def ndcg(ranker: object) -> float:
            scores = RowScores(lambda rows: ranker.score_rows(train.csr[rows]))  # type: ignore[attr-defined]
            return ranking_metrics(scores, train, test, k=10, threshold=threshold).ndcg

        started = time.perf_counter()
        dense, search = train_ease(train)
        base = ndcg(dense)
        print(f"{name}: dense EASE lambda {dense.lam:g}, NDCG@10 {base:.4f} ({time.perf_counter() - started:.1f} s)",
              flush=True)
        for head in [DEFAULT_HEAD_ITEMS, *args.heads]:
            started = time.perf_counter()
            sparse, search = train_sparse_ease(train, head_items=head, neighbours=args.neighbours)
            value = ndcg(sparse)
            print(f"{name}: sparse EASE head {sparse.head.size:,} + tail {sparse.tail.size:,}, lambda {sparse.lam:g},"
                  f" items {sparse.describe()['items']:,}, NDCG@10 {value:.4f} ({100 * (value / base - 1):+.2f}% "
                  f"against dense; {time.perf_counter() - started:.1f} s)", flush=True)


def main() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    at_scale = modes.add_parser("scale")
    at_scale.add_argument("--users", type=int, default=200_948)
    at_scale.add_argument("--movies", type=int, default=87_585)
    at_scale.add_argument("--ratings", type=int, default=32_000_204)
    at_scale.add_argument("--npz", help="a saved CSR (scipy.sparse.save_npz) instead of synthetic ratings")
    at_scale.add_argument("--lam", type=float, default=0.0, help="0: searched on validation, as recae train does")
    at_scale.add_argument("--head", type=int, default=DEFAULT_HEAD_ITEMS)
    at_scale.add_argument("--neighbours", type=int, default=DEFAULT_NEIGHBOURS)
    at_scale.add_argument("--top", type=int, default=100)
    at_scale.add_argument("--max-users", type=int, default=0, help="score only this many users (0: all)")
    at_quality = modes.add_parser("quality")
    at_quality.add_argument("--heads", type=int, nargs="*", default=[1000, 2000])
    at_quality.add_argument("--neighbours", type=int, default=DEFAULT_NEIGHBOURS)
    args = parser.parse_args()
    scale(args) if args.mode == "scale" else quality(args)


if __name__ == "__main__":
    main()
