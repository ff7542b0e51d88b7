"""Benchmark: more candidates for the "watch" side of the served order, on validation carves of the training part.

    nice -n 10 python tests/benchmarks/bench_watch.py --data u1       # ml-100k u1.base, carved 10% seed 0
    nice -n 10 python tests/benchmarks/bench_watch.py --data ml-1m    # ml-1m random 90/10 seed 0's train part

The protocol is ``bench_lists.py``'s (every film unrated in the fit part ranked, the carve's ratings >= 4 relevant,
k = 10; settings chosen on the carve itself, so each variant is shown at its best). Each line prints NDCG@10 and
the paired gain over the served order (EASE on r / 5 at its best lambda) with its standard error over users:

- ``time share``: the served scores plus gamma x the log ratio of the film's share of the ratings in the days the
  user was active (windows of 1 to 30 days; unknown timestamps left out) to its overall share, scaled per user;
- ``time gram``: EASE on the plain Gram plus alpha x a Gram of films rated within w places of each other in the
  user's time order, kept positive definite by its degree diagonal (the shipped term, ``recae.models.time_pairs``);
- ``next to``: the served weights plus beta x a normalised "rated within w places" similarity;
- ``blend``: per-user standardised scores of EASE, DLAE, RP3beta, user kNN and PureSVD, weights chosen greedily on
  one half of the carve's users and scored on the other half;
- ``two channels``: EASE reading the value and one more channel per film ("rated <= 2", "<= 3", ">= 4",
  centred), both diagonals held at zero;
- ``prior``: the served scores plus a popularity or shrunk-mean-rating prior, scaled per user.

Findings (2026-12-06): tests/benchmarks/README.md, "Lists against EASE".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lists import _inverse, load, paired, per_user_ndcg

from recae.evaluation.splits import holdout_validation
from recae.models.time_pairs import add_time_neighbours

Scores = Callable[[np.ndarray], np.ndarray]


def ease(gram: np.ndarray, lam: float) -> np.ndarray:
    p = _inverse(gram, np.full(gram.shape[0], lam))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def dense(x: sp.csr_matrix, weights: np.ndarray) -> np.ndarray:
    return np.asarray(x @ weights, dtype=np.float32)


class Carve:
    """The carve, the served order at its best lambda, and the helpers every variant shares."""

    def __init__(self, name: str) -> None:
        self.fit, self.val = holdout_validation(load(name).train, 0.1, 0)
        self.x = sp.csr_matrix(self.fit.csr, dtype=np.float64)
        self.values = self.x.data.copy()
        self.x.data = self.values / 5.0
        self.n_users, self.n_items = self.fit.shape
        self.gram = (self.x.T @ self.x).toarray()
        self.lam, self.reference = max(((lam, self.ndcg(lambda r, lam=lam: dense(self.x[r], ease(self.gram, lam))))
                                        for lam in (50, 100, 200, 400, 800, 1600)), key=lambda t: t[1].mean())
        self.served = dense(self.x, ease(self.gram, self.lam))
        print(f"served order: lambda {self.lam}, NDCG@10 {self.reference.mean():.4f}", flush=True)

    def ndcg(self, scores: Scores) -> np.ndarray:
        return per_user_ndcg(scores, self.fit, self.val)

    def report(self, label: str, scores: Scores) -> None:
        pu = self.ndcg(scores)
        print(f"{label}: {pu.mean():.4f} {paired(pu, self.reference)}", flush=True)

    def with_feature(self, label: str, feature: np.ndarray, gammas: tuple[float, ...]) -> None:
        spread = self.served.std(axis=1, keepdims=True)
        for gamma in gammas:
            self.report(f"{label} gamma {gamma}", lambda r, g=gamma: self.served[r] + g * spread[r] * feature[r])


def time_share(c: Carve) -> None:
    rows, cols, ts = c.fit.row_of_each_rating(), c.fit.csr.indices, c.fit.timestamps
    known = ts > 0
    day = np.floor(ts / 86400.0).astype(np.int64)
    day -= day[known].min() if known.any() else 0
    overall = np.bincount(cols, minlength=c.n_items) / cols.size
    for width in (1, 3, 7, 30):
        window = day // width
        users = sp.csr_matrix((np.ones(known.sum()), (rows[known], window[known])))
        users = sp.diags(1.0 / np.maximum(np.asarray(users.sum(1)).ravel(), 1)) @ users
        counts = sp.csr_matrix((np.ones(known.sum()), (window[known], cols[known])),
                               shape=(users.shape[1], c.n_items)).toarray()
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ratio = np.log((np.asarray(users @ share) + 1e-5) / (overall[None, :] + 1e-5)).astype(np.float32)
        ratio = (ratio - ratio.mean(1, keepdims=True)) / (ratio.std(1, keepdims=True) + 1e-9)
        c.with_feature(f"time share, {width}-day windows", ratio, (0.05, 0.1, 0.2))


def neighbours_in_time(c: Carve, window: int) -> np.ndarray:
    """(films, films) sum of x_a x_b over pairs rated within ``window`` places of each other in a user's time order
    (undated ratings left out), off the diagonal: the shipped term (``recae.models.time_pairs``) at weight 1 less
    the diagonal it adds to stay positive definite."""
    term = np.zeros((c.n_items, c.n_items), dtype=np.float32, order="F")
    add_time_neighbours(term, sp.csr_matrix(c.x, dtype=np.float32), c.fit.timestamps, np.arange(c.n_items),
                        window, 1.0)
    np.fill_diagonal(term, 0.0)
    return term.astype(np.float64)


def time_gram(c: Carve) -> None:
    for window in (1, 2, 3, 5, 20):
        near = neighbours_in_time(c, window)
        near += np.diag(near.sum(1))  # the pairs' own Gram: positive semi-definite
        for alpha in (0.05, 0.1, 0.25, 0.5):
            for lam in (c.lam * (1 + alpha) / 2, c.lam * (1 + alpha) / 1.4, c.lam * (1 + alpha)):
                b = ease(c.gram + alpha * near, lam)
                c.report(f"time gram w {window} alpha {alpha} lambda {lam:g}", lambda r, b=b: dense(c.x[r], b))


def time_dlae(c: Carve) -> None:
    """The time term with DLAE's dropout penalty (Steck 2020): free diagonal, or zero diagonal (EDLAE)."""
    near = neighbours_in_time(c, 3)
    near += np.diag(near.sum(1))
    gram = c.gram + 0.25 * near
    for dropout in (0.1, 0.25):
        for lam in (c.lam / 8, c.lam / 4, c.lam / 2):
            penalty = lam + dropout / (1 - dropout) * np.diag(gram)
            p = _inverse(gram, penalty)
            free = np.eye(c.n_items) - p * penalty[None, :]
            zero = -p / np.diag(p)[None, :]
            np.fill_diagonal(zero, 0.0)
            for kind, b in (("DLAE", free), ("EDLAE", zero)):
                c.report(f"time gram + {kind} p {dropout} lambda {lam:g}", lambda r, b=b: dense(c.x[r], b))


def next_to(c: Carve) -> None:
    b0 = ease(c.gram, c.lam)
    for window in (1, 3, 10):
        near = neighbours_in_time(c, window)
        norm = np.sqrt(np.maximum(near.sum(1), 1))
        similar = near / norm[:, None] / norm[None, :]
        scale = np.abs(c.served).mean() / np.abs(dense(c.x, similar)).mean()
        for beta in (0.1, 0.3, 1.0):
            b = b0 + beta * scale * similar
            np.fill_diagonal(b, 0.0)
            c.report(f"next to w {window} beta {beta}", lambda r, b=b: dense(c.x[r], b))


def components(c: Carve) -> dict[str, np.ndarray]:
    ones = c.x.copy()
    ones.data[:] = 1.0
    penalty = c.lam + np.diag(c.gram) / 3.0  # DLAE, dropout 0.25
    dlae = np.eye(c.n_items) - _inverse(c.gram, penalty) * penalty[None, :]
    per_user = np.maximum(np.asarray(ones.sum(1)).ravel(), 1)
    per_film = np.maximum(np.asarray(ones.sum(0)).ravel(), 1)
    walk = ((sp.diags(1 / per_film) @ ones.T) @ (sp.diags(1 / per_user) @ ones)).toarray() / np.sqrt(per_film)[None, :]
    np.fill_diagonal(walk, 0.0)
    norms = np.sqrt(np.asarray(c.x.multiply(c.x).sum(1)).ravel()) + 1e-9
    unit = sp.diags(1 / norms) @ c.x
    users = (unit @ unit.T).toarray()
    np.fill_diagonal(users, 0.0)
    users[users < -np.partition(-users, 100, axis=1)[:, 100][:, None]] = 0.0
    u, s, vt = svds(c.x, k=50)
    raw = {"ease": c.served, "dlae": dense(c.x, dlae), "rp3beta": dense(ones, walk),
           "user knn": (sp.csr_matrix(users) @ c.x).toarray().astype(np.float32),
           "pure svd": ((u * s) @ vt).astype(np.float32)}
    return {k: (v - v.mean(1, keepdims=True)) / (v.std(1, keepdims=True) + 1e-9) for k, v in raw.items()}


def blend(c: Carve) -> None:
    parts = components(c)

    def mixed(weights: dict[str, float]) -> Scores:
        return lambda r: sum(w * parts[k][r] for k, w in weights.items() if w)

    for name in parts:
        c.report(f"{name} alone", mixed({name: 1.0}))
    users = np.flatnonzero(np.diff(c.val.csr.multiply(c.val.csr >= 4).tocsr().indptr) > 0)
    half = np.random.default_rng(0).random(users.size) < 0.5
    for chosen_on in (half, ~half):
        weights, best = {"ease": 1.0}, c.ndcg(mixed({"ease": 1.0}))[chosen_on].mean()
        for name in [k for k in parts if k != "ease"] * 2:
            for w in (0.0, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5):
                score = c.ndcg(mixed({**weights, name: w}))[chosen_on].mean()
                if score > best + 1e-6:
                    weights, best = {**weights, name: w}, score
        pu = c.ndcg(mixed(weights))[~chosen_on]
        print(f"blend {weights}, on the other half: {pu.mean():.4f} {paired(pu, c.reference[~chosen_on])}",
              flush=True)


def two_channels(c: Carve) -> None:
    n = c.n_items
    for label, channel in (("<= 2", lambda r: r <= 2), ("<= 3", lambda r: r <= 3), (">= 4", lambda r: r >= 4),
                           ("centred", lambda r: (r - 3.5) / 1.5)):
        extra = c.x.copy()
        extra.data = np.asarray(channel(c.values), dtype=np.float64)
        extra.eliminate_zeros()
        z = sp.hstack([c.x, extra]).tocsr()
        gram = (z.T @ z).toarray()
        j = np.arange(n)
        for lam in (c.lam / 2, c.lam, c.lam * 2):
            p = _inverse(gram, np.full(2 * n, lam))
            free = p @ gram[:, :n]
            held = np.empty((n, 2, 2))
            held[:, 0, 0], held[:, 0, 1], held[:, 1, 0], held[:, 1, 1] = p[j, j], p[j, j + n], p[j + n, j], p[j + n, j + n]
            mu = np.linalg.solve(held, np.stack([free[j, j], free[j + n, j]], axis=1)[:, :, None])[:, :, 0]
            b = free - p[:, j] * mu[:, 0][None, :] - p[:, j + n] * mu[:, 1][None, :]
            c.report(f"two channels, {label}, lambda {lam:g}", lambda r, b=b, z=z: dense(z[r], b))


def prior(c: Carve) -> None:
    count = np.bincount(c.fit.csr.indices, minlength=c.n_items).astype(float)
    mean = np.bincount(c.fit.csr.indices, weights=c.values, minlength=c.n_items) / np.maximum(count, 1)
    popularity = np.log1p(count)
    quality = (mean * count + 3.6 * 10) / (count + 10)
    for label, feature in (("popularity", popularity), ("shrunk mean rating", quality)):
        z = ((feature - feature.mean()) / feature.std()).astype(np.float32)
        c.with_feature(f"prior: {label}", np.broadcast_to(z, (c.n_users, c.n_items)), (-0.2, -0.1, 0.1, 0.2))


VARIANTS = {"time share": time_share, "time gram": time_gram, "time dlae": time_dlae, "next to": next_to, "blend": blend,
            "two channels": two_channels, "prior": prior}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="u1", choices=("u1", "ml-1m"))
    parser.add_argument("--only", help=f"comma-separated variants among: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    carve = Carve(args.data)
    for name in args.only.split(",") if args.only else VARIANTS:
        VARIANTS[name.strip()](carve)


if __name__ == "__main__":
    main()
