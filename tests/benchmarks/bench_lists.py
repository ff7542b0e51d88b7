"""Benchmark: candidates for the served order, compared on validation carves of the training part only.

    nice -n 10 python tests/benchmarks/bench_lists.py --data u1              # ml-100k u1.base, carved 10% seed 0
    nice -n 10 python tests/benchmarks/bench_lists.py --data ml-1m           # ml-1m random 90/10 seed 0's train part
    nice -n 10 python tests/benchmarks/bench_lists.py --data u1 --test       # then the winner, scored once on test

Protocol (``recae.evaluation.metrics.list_quality``): every film unrated in the fit part is ranked, the carve's
held-out ratings >= 4 are relevant, k = 10. Each variant's settings are chosen on the carve itself (as the shipped
lambda search does), so the figures compare the variants at their best; the test fold is never read for a choice.
Variants: EASE on rating values (today) and on 0/1 input; DLAE and EDLAE (Steck, NeurIPS 2020: the dropout's
diagonal penalty ``p / (1 - p) diag(X^T X)``); EASE trained towards the liked films (target ``r >= 4``, input the
values); and "watch x like": the ranker's top-N candidates re-ranked by a per-user softmax model over the
ranker's score and rank, the rating model's predicted rating and popularity (``lists_rerank.py`` beside this
file), fitted on the training run's blend carve (the ratings no autoencoder, partner or SVD part was fitted on),
with the ceiling a perfect like-model would reach. ``--test`` trains the shipped defaults on the whole training
part and scores today's order, the re-ranker and ``--test-closed`` closed forms once on the test fold.
Findings and figures: tests/benchmarks/README.md, "Lists against EASE" (2026-12-06).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from recae.evaluation.metrics import RowScores, list_quality
from recae.evaluation.splits import (
    Split,
    SplitSpec,
    canonical_split,
    holdout_validation,
    random_split,
)
from recae.models.rankers import (
    _mirror_lower,
    covered_items,
)
from recae.store.matrix import RatingMatrix

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
THRESHOLD = 4.0


def load(name: str, data: Path = DATA) -> Split:
    """The benchmark split: ml-100k's canonical fold u1, or ml-1m random 90/10 seed 0."""
    if name == "u1":
        raw = np.loadtxt(data / "ml-100k" / "u.data", dtype=np.int64)
        matrix = RatingMatrix.from_ids(raw[:, 0], raw[:, 1], raw[:, 2].astype(np.float32), raw[:, 3])
        test = np.loadtxt(data / "ml-100k" / "u1.test", dtype=np.int64)
        return canonical_split(matrix, "u1", test[:, 0], test[:, 1])
    if name == "ml-1m":
        raw = _read_dat(data / "ml-1m" / "ratings.dat")
        matrix = RatingMatrix.from_ids(raw[:, 0], raw[:, 1], raw[:, 2].astype(np.float32), raw[:, 3])
        return random_split(matrix, 0.1, 0)
    raise SystemExit(f"unknown data {name!r}; choose u1 or ml-1m")


def _read_dat(path: Path) -> np.ndarray:
    text = path.read_text(encoding="latin-1").replace("::", "\t")
    return np.loadtxt(text.splitlines(), dtype=np.int64, delimiter="\t")


def quality(score_of, fit: RatingMatrix, val: RatingMatrix) -> dict[str, float]:
    """P/R/NDCG@10 and coverage@10 of an order on the carve, and the per-user NDCG@10 (``per_user``) for paired
    comparisons (the users with a relevant carve film, ascending)."""
    q = list_quality(RowScores(score_of), fit, val, ks=(10,), threshold=THRESHOLD)
    m = q.at[10]
    return {"ndcg": m.ndcg, "precision": m.precision, "recall": m.recall, "coverage": q.coverage,
            "per_user": per_user_ndcg(score_of, fit, val)}


def per_user_ndcg(score_of, fit: RatingMatrix, val: RatingMatrix) -> np.ndarray:
    """(users with a relevant carve film,) NDCG@10 of each, users ascending (as list_quality averages them)."""
    from recae.evaluation.metrics import dense_flags, ndcg_at_k, top_k_unseen

    rel = val.csr.copy()
    rel.data = (rel.data >= THRESHOLD).astype(np.float32)
    rel.eliminate_zeros()
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    out = []
    for start in range(0, users.size, 1024):
        rows = users[start:start + 1024]
        scores = score_of(rows)
        block = fit.csr[rows]
        top = top_k_unseen(scores, dense_flags(block.indptr, block.indices, scores.shape), 10)
        rb = rel[rows]
        flags = dense_flags(rb.indptr, rb.indices, scores.shape)
        hits = (top >= 0) & np.take_along_axis(flags, np.maximum(top, 0), axis=1)
        out.append(ndcg_at_k(hits, np.diff(rb.indptr)))
    return np.concatenate(out)


def paired(per_user: np.ndarray, reference: np.ndarray) -> str:
    """Mean gain over the reference in % with its standard error (paired over users)."""
    diff = per_user - reference
    base = reference.mean()
    return f"{100 * diff.mean() / base:+.1f}% ± {100 * diff.std(ddof=1) / np.sqrt(diff.size) / base:.1f}"


# --- closed forms --------------------------------------------------------------------------------------------------


def _inverse(gram: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """(G + diag(diagonal))^-1, symmetric, float64."""
    a = np.array(gram, dtype=np.float64, order="F", copy=True)
    a[np.diag_indices_from(a)] += diagonal
    factor, info = lapack.dpotrf(a, lower=1, overwrite_a=1, clean=0)
    assert info == 0, info
    inverse, info = lapack.dpotri(factor, lower=1, overwrite_c=1)
    assert info == 0, info
    _mirror_lower(inverse)
    return inverse


def closed_form(gram: np.ndarray, lam: float, dropout: float, kind: str, xty: np.ndarray | None = None) -> np.ndarray:
    """B of EASE / EDLAE (zero diagonal) or DLAE (free diagonal), penalty lam + p/(1-p) diag(G).

    With ``xty`` (= X^T Y) the target is Y instead of X: ``min ||Y - X B||^2 + ||Lambda^1/2 B||^2, diag(B) = 0``,
    ``B = P (X^T Y) - P diag(mu)`` with ``mu_j = (P X^T Y)_jj / P_jj``.
    """
    penalty = lam + dropout / (1.0 - dropout) * np.diag(gram).astype(np.float64)
    p = _inverse(gram, penalty)
    if xty is None:
        if kind == "dlae":
            return (np.eye(p.shape[0]) - p * penalty[None, :]).astype(np.float32)
        b = -p / np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
        return b.astype(np.float32)
    pc = p @ xty
    if kind == "dlae":
        return pc.astype(np.float32)
    mu = np.diag(pc) / np.diag(p)
    b = pc - p * mu[None, :]
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


def _weighted(fit: RatingMatrix, items: np.ndarray, power: float, user_beta: float, item_beta: float) -> sp.csr_matrix:
    """Input (r / r_max) ** power (power 0: 1 per rating), rows scaled by n_u ** -user_beta, columns by
    n_i ** -item_beta; only the covered ``items``."""
    rmax = fit.rating_scale()[1]
    x = sp.csr_matrix(fit.csr, dtype=np.float64, copy=True)
    x.data = (x.data / rmax) ** power
    if user_beta:
        x = sp.diags(np.maximum(np.diff(x.indptr), 1).astype(np.float64) ** -user_beta) @ x
    x = sp.csr_matrix(x)[:, items]
    if item_beta:
        x = x @ sp.diags(np.maximum(np.bincount(x.indices, minlength=x.shape[1]), 1).astype(np.float64) ** -item_beta)
    return sp.csr_matrix(x)


def _laid_out(covered: np.ndarray, items: np.ndarray, n_movies: int) -> np.ndarray:
    out = np.full((covered.shape[0], n_movies), -1e9, dtype=np.float32)
    out[:, items] = covered
    return out


def run_closed_forms(fit: RatingMatrix, val: RatingMatrix, rows: list[dict], which: str = "all") -> dict[str, float]:
    """Every closed-form variant, each at its best lambda on the carve; returns the best lambda of each."""
    items = covered_items(fit.csr, 10**9)
    chosen: dict[str, float] = {}
    liked = fit.csr.copy()
    liked.data = (liked.data >= THRESHOLD).astype(np.float32)
    liked.eliminate_zeros()
    liked = liked[:, items]
    # label, input power, user beta, item beta, kind, dropout, target
    variants = [
        ("EASE value (today)", 1.0, 0.0, 0.0, "ease", 0.0, None),
        ("EASE binary", 0.0, 0.0, 0.0, "ease", 0.0, None),
        ("EDLAE value p=0.1", 1.0, 0.0, 0.0, "ease", 0.1, None),
        ("EDLAE value p=0.25", 1.0, 0.0, 0.0, "ease", 0.25, None),
        ("EDLAE value p=0.5", 1.0, 0.0, 0.0, "ease", 0.5, None),
        ("DLAE value p=0.25", 1.0, 0.0, 0.0, "dlae", 0.25, None),
        ("DLAE value p=0.5", 1.0, 0.0, 0.0, "dlae", 0.5, None),
        ("EASE value -> liked target", 1.0, 0.0, 0.0, "ease", 0.0, "liked"),
        ("EASE value -> value+liked target", 1.0, 0.0, 0.0, "ease", 0.0, "mix"),
        ("EASE (r/5)^2", 2.0, 0.0, 0.0, "ease", 0.0, None),
        ("EASE (r/5)^3", 3.0, 0.0, 0.0, "ease", 0.0, None),
        ("EASE (r/5)^0.5", 0.5, 0.0, 0.0, "ease", 0.0, None),
        ("EASE value, rows / n_u^0.25", 1.0, 0.25, 0.0, "ease", 0.0, None),
        ("EASE value, rows / n_u^0.5", 1.0, 0.5, 0.0, "ease", 0.0, None),
        ("DLAE p=0.25 (r/5)^2", 2.0, 0.0, 0.0, "dlae", 0.25, None),
        ("DLAE p=0.25 (r/5)^2, rows / n_u^0.25", 2.0, 0.25, 0.0, "dlae", 0.25, None),
    ]
    if which != "all":
        variants = [v for v in variants if v[0] in which.split(";")]
    for label, power, user_beta, item_beta, kind, dropout, target in variants:
        x = _weighted(fit, items, power, user_beta, item_beta)
        raw = _weighted(fit, items, power, 0.0, 0.0)  # what a user's scores read
        gram = (x.T @ x).toarray()
        xty = None
        if target == "liked":
            xty = (x.T @ liked).toarray().astype(np.float64)
        elif target == "mix":
            xty = gram + (x.T @ liked).toarray().astype(np.float64)
        started = time.perf_counter()
        trials = {}
        base = float(np.mean(np.diag(gram)))
        start = 2 ** round(math.log2(4 * base * (1 - dropout)))
        grid = [start * 2.0**e for e in range(-4, 4)] if not dropout else [start * 2.0**e for e in range(-6, 2)]
        for lam in grid:
            b = closed_form(gram, lam, dropout, kind, xty)
            trials[lam] = float(per_user_ndcg(lambda r, raw=raw, b=b: _laid_out(np.asarray(raw[r] @ b), items, fit.shape[1]),
                                              fit, val).mean())
            if len(trials) >= 3 and trials[lam] < max(trials.values()) and list(trials.values())[-2] < max(trials.values()):
                break  # two steps past the peak (the curve is single-peaked over log lambda)
        best = max(trials, key=lambda k: trials[k])
        seconds = (time.perf_counter() - started) / len(trials)
        b = closed_form(gram, best, dropout, kind, xty)
        edge = " (edge)" if best in (grid[0], grid[-1]) else ""
        rows.append({"variant": f"{label}, lambda {best:g}{edge}",
                     **quality(lambda r, raw=raw, b=b: _laid_out(np.asarray(raw[r] @ b), items, fit.shape[1]), fit, val),
                     "seconds": seconds})
        chosen[label] = best
        print(_row(rows[-1]), flush=True)
    return chosen


REFERENCE: dict[str, np.ndarray] = {}


def _row(r: dict) -> str:
    gain = ""
    if "per_user" in r:
        REFERENCE.setdefault("ease", r["per_user"])
        gain = paired(r["per_user"], REFERENCE["ease"])
    elif "gain" in r:
        gain = r["gain"]
    return (f"| {r['variant']} | {r['ndcg']:.4f} | {gain} | {r['precision']:.4f} | {r['recall']:.4f} | "
            f"{r['coverage']:.3f} | {r.get('seconds', float('nan')):.1f} |")


def run_watch_like(split_name: str, fit: RatingMatrix, val: RatingMatrix, rows: list[dict], quick: bool,
                   depths: tuple[int, ...]) -> None:
    """The rating model trained on the carve's fit part as ``recae train`` trains it (re-ranker off), then the
    re-ranker fitted as ``recae train`` fits it (``attach_reranker``, on the blend carve) at each depth."""
    from lists_rerank import (
        RERANK_FEATURES,
        attach_reranker,
        carve_lists,
        choose_reranker,
        list_ndcg,
        served_scores,
    )

    from recae.artifacts.train_config import default_configs
    from recae.training.ensemble import blend_carve
    from recae.training.train import train_split

    model_cfg, cfg = default_configs()
    if quick:
        cfg = replace(cfg, ensemble=1, epochs=8)
    started = time.perf_counter()
    result = train_split(Split(SplitSpec("random", 0.1, 0), fit, val), model_cfg, cfg)
    trained, train_s = result.trained, time.perf_counter() - started
    m = result.metrics
    print(f"rating model on the fit part: {train_s:.0f} s; carve RMSE {m['test_rmse']:.4f}, served (EASE lambda "
          f"{trained.ranker.lam:g}) NDCG@10 {m['test_ndcg@10']:.4f}", flush=True)
    rows.append({"variant": f"EASE value, lambda {trained.ranker.lam:g} chosen as train does (served today)",
                 **quality(lambda r: trained.rank_rows(r), fit, val), "seconds": m["ranker_seconds"]})
    REFERENCE["ease"] = rows[-1]["per_user"]  # the served order of today is the reference from here on
    print(_row(rows[-1]), flush=True)
    rows.append({"variant": "predicted rating alone (rating model)",
                 **quality(lambda r: trained.score_rows(r), fit, val), "seconds": train_s})
    print(_row(rows[-1]), flush=True)
    resolved = cfg.sized(fit.nnz)
    fit_part, blend_part = blend_carve(fit, resolved)
    ranker = trained.ranker
    for depth in depths:
        started = time.perf_counter()
        kept, record = attach_reranker(trained, fit_part, blend_part, resolved, depth)
        fit_s = time.perf_counter() - started
        print(f"depth {depth}: blend-carve users {record['users']}, cross-fitted NDCG@10 {record['ndcg@10']:.4f} "
              f"vs ranker {record['ranker_ndcg@10']:.4f} (kept {record['kept']}); fit {fit_s:.1f} s", flush=True)
        started = time.perf_counter()
        reranker = _fitted(record, depth)  # kept or not: its figures for the table
        served = quality(lambda r, rr=reranker: served_scores(trained, rr, r), fit, val)
        apply_s = time.perf_counter() - started
        print(f"  weights {dict(zip(RERANK_FEATURES, np.round(reranker.weights, 3)))}; lists of the carve's users "
              f"{apply_s:.1f} s")
        rows.append({"variant": f"watch x like, top-{depth} re-ranked, weights from the blend carve"
                                f"{'' if kept is not None else ' (not kept by the 2 SE rule)'}",
                     **served, "seconds": fit_s})
        print(_row(rows[-1]), flush=True)
        users = np.flatnonzero(np.diff(val.csr.indptr) > 0)
        lists = carve_lists(trained.predict, ranker, fit, val, users, depth, THRESHOLD)
        ranker_ndcg = list_ndcg(lists, None)
        _, oracle = choose_reranker(lists, depth, 0)
        print(f"  (reference: weights cross-fitted on the carve's own halves: {oracle['ndcg@10']:.4f})", flush=True)
        cols = lists_cols(trained, ranker, fit, users, depth)
        held = np.asarray(val.csr[users].todense())  # (users, n_movies) carve ratings, 0 where none
        disliked = (np.take_along_axis(held, np.maximum(cols, 0), axis=1) > 0) & ~lists.labels
        ceiling = list_ndcg(lists, np.where(disliked, -1e9, -np.arange(depth, dtype=np.float64)[None, :]))
        print(f"  ceiling of a perfect like-model (drops carve films rated < 4; reads carve labels): {ceiling:.4f} "
              f"({100 * (ceiling / ranker_ndcg - 1):+.1f}%); top-10 of the ranker: "
              f"{lists.labels[:, :10].sum() / users.size:.2f} liked and {disliked[:, :10].sum() / users.size:.2f} "
              f"disliked carve films per user", flush=True)
        timed = replace(lists, feats=np.concatenate([lists.feats, _time_features(fit, users, cols)], axis=-1))
        _, rec = choose_reranker(timed, depth, 0)
        print(f"  with time features: cross-fitted on the carve {rec['ndcg@10']:.4f}", flush=True)
        for drop in range(len(RERANK_FEATURES)):
            keep = [i for i in range(len(RERANK_FEATURES)) if i != drop]
            _, rec = choose_reranker(replace(lists, feats=lists.feats[..., keep]), depth, 0)
            print(f"  without {RERANK_FEATURES[drop]}: cross-fitted on the carve {rec['ndcg@10']:.4f}", flush=True)


def _fitted(record: dict, depth: int):
    from lists_rerank import Reranker

    return Reranker(np.asarray(record["weights_fitted"]), np.asarray(record["mean"]), np.asarray(record["scale"]),
                    depth, record)


def lists_cols(trained, ranker, fit, users, depth):
    from lists_rerank import candidates

    from recae.evaluation.metrics import dense_flags

    block = fit.csr[users]
    scores = ranker.score_rows(block)
    return candidates(scores, dense_flags(block.indptr, block.indices, scores.shape), depth).cols


def _time_features(fit: RatingMatrix, users: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(users, depth, 3): log days between the user's mean rating time and the film's, the film's first rating
    after the user's last (days, log), and the film's median-time rank."""
    day = 86400.0
    rows = fit.row_of_each_rating()
    ts = fit.timestamps.astype(np.float64)
    n_u, n_m = fit.shape
    u_mean = np.bincount(rows, weights=ts, minlength=n_u) / np.maximum(np.bincount(rows, minlength=n_u), 1)
    u_last = np.zeros(n_u); np.maximum.at(u_last, rows, ts)
    cols_all = fit.csr.indices
    m_mean = np.bincount(cols_all, weights=ts, minlength=n_m) / np.maximum(np.bincount(cols_all, minlength=n_m), 1)
    m_first = np.full(n_m, np.inf); np.minimum.at(m_first, cols_all, ts)
    m_first[~np.isfinite(m_first)] = ts.max()
    c = np.maximum(cols, 0)
    gap = np.log1p(np.abs(u_mean[users][:, None] - m_mean[c]) / day)
    late = np.log1p(np.maximum(0.0, m_first[c] - u_last[users][:, None]) / day)
    signed = (m_mean[c] - u_mean[users][:, None]) / (365 * day)
    return np.stack([gap, late, signed], axis=-1)


def run_test(split: Split, quick: bool, closed: str) -> None:
    """The shipped defaults trained on the whole training part and scored once on the test fold: the served order
    (with the re-ranker when training kept it) beside the ranker's order alone, and RMSE."""
    from recae.artifacts.train_config import default_configs
    from recae.training.train import train_split

    model_cfg, cfg = default_configs()
    if quick:
        cfg = replace(cfg, ensemble=1, epochs=8)
    started = time.perf_counter()
    result = train_split(split, model_cfg, cfg)
    trained, m = result.trained, result.metrics
    print(f"trained in {time.perf_counter() - started:.0f} s; test RMSE {m['test_rmse']:.4f}", flush=True)
    print("| order, scored once on the test fold | NDCG@10 | vs EASE (paired SE) | P@10 | R@10 | coverage@10 | s |")
    print("|---|---|---|---|---|---|---|")
    from lists_rerank import attach_reranker, served_scores

    from recae.training.ensemble import blend_carve

    started = time.perf_counter()
    fit_part, blend_part = blend_carve(split.train, cfg.sized(split.train.nnz))
    kept, record = attach_reranker(trained, fit_part, blend_part, cfg.sized(split.train.nnz))
    print(f"re-ranker on the blend carve: {time.perf_counter() - started:.1f} s, NDCG@10 {record['ndcg@10']:.4f} vs "
          f"ranker {record['ranker_ndcg@10']:.4f}, kept by the 2 SE rule: {kept is not None}", flush=True)
    reranker = _fitted(record, record["depth"])
    for label, order in ((f"EASE (lambda {trained.ranker.lam:g}), today's served order", trained.rank_rows),
                         (f"watch x like, top-{record['depth']} re-ranked (kept: {kept is not None})",
                          lambda r: served_scores(trained, reranker, r))):
        started = time.perf_counter()
        row = {"variant": label, **quality(order, split.train, split.test)}
        row["seconds"] = time.perf_counter() - started
        print(_row(row), flush=True)
    for spec in filter(None, closed.split(",")):  # kind:dropout:lambda:power, lambda as chosen on the carve
        kind, dropout, lam, power = spec.split(":")
        items = covered_items(split.train.csr, 10**9)
        x = _weighted(split.train, items, float(power), 0.0, 0.0)
        b = closed_form((x.T @ x).toarray(), float(lam), float(dropout), kind)
        row = {"variant": f"{kind.upper()} p={dropout} (r/5)^{power}, lambda {lam} (chosen on the carve)",
               **quality(lambda r, x=x, b=b, items=items: _laid_out(np.asarray(x[r] @ b), items, split.train.shape[1]), split.train,
                         split.test)}
        print(_row(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="u1", choices=("u1", "ml-1m"))
    parser.add_argument("--skip-closed", action="store_true", help="only the rating-model variants")
    parser.add_argument("--closed", default="all", help="closed-form variants by label, ';'-separated")
    parser.add_argument("--skip-rating", action="store_true", help="only the closed forms")
    parser.add_argument("--depths", default="100", help="candidates re-ranked per user, comma-separated")
    parser.add_argument("--test", action="store_true", help="train the defaults on the training part, score test once")
    parser.add_argument("--test-closed", default="", help="closed forms to score on test: kind:dropout:lambda:power,...")
    parser.add_argument("--quick", action="store_true", help="rating model of one member, few epochs (smoke runs)")
    args = parser.parse_args()
    split = load(args.data)
    if args.test:
        run_test(split, args.quick, args.test_closed)
        return
    fit, val = holdout_validation(split.train, 0.1, 0)
    print(f"{args.data}: carve of the training part: {fit.nnz:,} fit / {val.nnz:,} validation ratings")
    print("| variant (settings chosen on the carve) | NDCG@10 | vs EASE (paired SE) | P@10 | R@10 | coverage@10 | s/fit |")
    print("|---|---|---|---|---|---|---|")
    rows: list[dict] = []
    if not args.skip_closed:
        run_closed_forms(fit, val, rows, args.closed)
    if not args.skip_rating:
        run_watch_like(args.data, fit, val, rows, args.quick, tuple(int(d) for d in args.depths.split(",")))


if __name__ == "__main__":
    main()
