"""Benchmark: the peer libraries a practitioner would install, on recae's own split, beside recae's order.

    pip install -e ".[peers]"                                               # implicit and cornac (benchmarks only)
    nice -n 19 python tests/benchmarks/bench_peers.py --data u1             # ml-100k u1.base / u1.test
    nice -n 19 python tests/benchmarks/bench_peers.py --data ml-1m          # ml-1m random 90/10 seed 0
    nice -n 19 python tests/benchmarks/bench_peers.py --data u1 --recae     # + the default model trained (served)
    nice -n 19 python tests/benchmarks/bench_peers.py --data u1 --model ~/.recae/models/VERSION  # a published one

Splits: exactly as ``recae train`` builds them (``--split u1``; ``--split random --test-fraction 0.1 --seed 0``),
through ``bench_lists.load``: the project's own split functions on the whole ratings file. Every peer sees the
training part only, as (user, film) positions of the project's IdIndex (``peer_adapters``); its settings are
chosen by NDCG@10 on the project's validation carve of the training part (``holdout_validation``, 10%, seed 0, the
carve EASE's lambda search uses), the grid widened wherever the best sits at an end; it is then refitted on the
whole training part and scored once on the test part. Scoring is the project's (``list_quality``): every film the
user did not rate in training is ranked, held-out ratings >= 4 are relevant, k = 10; coverage is the share of the
catalogue in at least one top-10 list. "fit s" is the wall time of the final fit, "CPU s" this process's CPU time
over it (all threads): the steadier figure on a shared machine.

Peers (each skipped with a message when its library is absent): ``implicit`` iALS and BPR on "has rated"; cornac
EASE fed the 1-5 ratings (``posB=False``: its default zeroes negative weights and scores lower) and, with
``--recvae``, cornac RecVAE on "has rated", put in eval mode before scoring (3.0.1 leaves it in training mode, which
drops half of each user's films at random). Beside them: the most-popular list, the EASE reference ``recae
evaluate`` prints (binary input, lambda on the carve), the ranker ``recae train`` fits (``fit_ranker``), and with
``--recae`` or ``--model`` the served order itself. ``--quick`` trims the grids to the settings found best before
(PEERS.md, the full grid) and one step either side.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench_lists import load
from peer_adapters import (
    Axis,
    ScoreFn,
    describe,
    grid_search,
    has_rated,
    laid_out,
    positions_of,
    quality,
    timed,
    triplets,
)
from recae.evaluation.metrics import relevance_threshold
from recae.evaluation.splits import Split, holdout_validation
from recae.store.matrix import RatingMatrix

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
INSTALL = 'pip install -e ".[peers]"'


@dataclass(frozen=True)
class Peer:
    """A peer model: its library (for the skip message), grids by data set, and a fit returning its order."""

    name: str
    library: str
    grids: dict[str, list[Axis]]  # "u1", "ml-1m", and "quick-<data>" (PEERS.md's best and one step either side)
    fit: Callable[[RatingMatrix, dict[str, float]], ScoreFn]


def _threads() -> int:
    """implicit's threads: 1 unless ``PEERS_THREADS`` says more. On a busy 2-core machine two threads took a BPR fit
    from 8 s to 137 s of wall time for the same 2 s of CPU (each iteration waits for both threads to be scheduled)."""
    import os

    return int(os.environ.get("PEERS_THREADS", "1"))


def _one_blas_thread():
    """What implicit asks for (its warning otherwise): BLAS on one thread while it fits on its own threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, "blas")


def fit_ials(train: RatingMatrix, s: dict[str, float]) -> ScoreFn:
    from implicit.cpu.als import AlternatingLeastSquares

    with _one_blas_thread():  # implicit's own threads do the work; a BLAS pool under them: 10x slower here
        model = AlternatingLeastSquares(factors=int(s["factors"]), regularization=s["regularization"],
                                        alpha=s["alpha"], iterations=15, random_state=0, num_threads=_threads())
        model.fit(has_rated(train), show_progress=False)
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)  # (n_users, f), (n_movies, f)
    return lambda rows: users[rows] @ items.T


def fit_bpr(train: RatingMatrix, s: dict[str, float]) -> ScoreFn:
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    with _one_blas_thread():
        model = BayesianPersonalizedRanking(factors=int(s["factors"]), learning_rate=s["learning_rate"],
                                            regularization=s["regularization"], iterations=int(s["iterations"]),
                                            random_state=0, num_threads=_threads())
        model.fit(has_rated(train), show_progress=False)
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)  # item bias folded in
    return lambda rows: users[rows] @ items.T


def _cornac_data(train: RatingMatrix, binary: bool):
    from cornac.data import Dataset

    data = Dataset.from_uir(triplets(train, binary), seed=0)
    return data, positions_of(data.uid_map, train.shape[0]), positions_of(data.iid_map, train.shape[1])


def fit_cornac_ease(train: RatingMatrix, s: dict[str, float]) -> ScoreFn:
    from cornac.models import EASE

    data, user_of_row, item_of_col = _cornac_data(train, binary=False)
    model = EASE(lamb=s["lambda"], posB=False, verbose=False, seed=0).fit(data)
    # EASE.score(u) is model.U[u] @ model.B, one user at a time; the same product, batched
    probe = int(user_of_row[train.csr.indptr[1:] > train.csr.indptr[:-1]][0])
    assert np.allclose(np.ravel(model.score(probe)), np.ravel(model.U[probe] @ model.B), atol=1e-5)
    return lambda rows: laid_out(np.asarray(model.U[user_of_row[rows]] @ model.B), item_of_col)


def fit_cornac_recvae(train: RatingMatrix, s: dict[str, float]) -> ScoreFn:
    import torch
    from cornac.models import RecVAE

    data, user_of_row, item_of_col = _cornac_data(train, binary=True)
    model = RecVAE(n_epochs=int(s["epochs"]), gamma=s["gamma"], seed=0, use_gpu=False, verbose=False).fit(data)
    model.recvae_model.eval()  # 3.0.1 leaves it training: every score would drop half the user's films

    def score(rows: np.ndarray) -> np.ndarray:  # RecVAE.score(u), batched
        x = torch.as_tensor(data.matrix[user_of_row[rows]].toarray(), dtype=torch.float32)
        with torch.no_grad():
            return laid_out(model.recvae_model(x, calculate_loss=False).numpy(), item_of_col)

    return score


BPR_GRID = [Axis("factors", (32, 64, 128), integer=True, high=512), Axis("learning_rate", (0.01, 0.03, 0.1), 3, high=1),
            Axis("regularization", (0.001, 0.01, 0.1), 10),
            Axis("iterations", (100, 300), 3, integer=True, high=1000)]
BPR_QUICK = [Axis("factors", (32, 64, 128), integer=True), Axis("learning_rate", (0.01, 0.03), 3, high=1),
             Axis("regularization", (0.01,), 10), Axis("iterations", (100,), 3, integer=True)]
PEERS = [
    Peer("implicit iALS", "implicit", {
        # factors at most half the users (u1: 943): past that the validation gain was < 0.001 a doubling, at 8x the cost
        "u1": [Axis("factors", (64, 128, 256), integer=True, high=512), Axis("regularization", (1, 3, 10, 30), 3),
               Axis("alpha", (0.5, 1, 2, 4))],
        "ml-1m": [Axis("factors", (64, 128, 256), integer=True, high=2048),
                  Axis("regularization", (3, 10, 30, 100), 3), Axis("alpha", (0.5, 1, 2, 4))],
        "quick-u1": [Axis("factors", (128, 256, 512), integer=True, high=512), Axis("regularization", (10, 30), 3),
                     Axis("alpha", (1, 2, 4))],  # the full grid's best here (128, 30, 4) and PEERS.md's (256, 10, 1)
        "quick-ml-1m": [Axis("factors", (32, 64, 128), integer=True), Axis("regularization", (10, 30, 100), 3),
                        Axis("alpha", (1, 2, 4))],
    }, fit_ials),
    Peer("implicit BPR", "implicit", {
        "u1": BPR_GRID, "ml-1m": BPR_GRID,
        "quick-u1": BPR_QUICK, "quick-ml-1m": BPR_QUICK,
    }, fit_bpr),
    Peer("cornac EASE, fed the 1-5 ratings", "cornac", {
        "u1": [Axis("lambda", (800, 1600, 3200, 6400, 12800))],
        "ml-1m": [Axis("lambda", (3200, 6400, 12800, 25600, 51200))],
        "quick-u1": [Axis("lambda", (1600, 3200, 6400))],
        "quick-ml-1m": [Axis("lambda", (6400, 12800, 25600))],
    }, fit_cornac_ease),
]
RECVAE = Peer("cornac RecVAE, eval mode", "cornac", {
    "u1": [Axis("epochs", (25, 50, 100), integer=True, high=400), Axis("gamma", (0.005,), 2)],
    "ml-1m": [Axis("epochs", (50,), integer=True), Axis("gamma", (0.005,), 2)],  # defaults: an epoch costs minutes
    "quick-u1": [Axis("epochs", (50,), integer=True), Axis("gamma", (0.005,), 2)],
    "quick-ml-1m": [Axis("epochs", (50,), integer=True), Axis("gamma", (0.005,), 2)],
}, fit_cornac_recvae)


@dataclass(frozen=True)
class Row:
    model: str
    settings: str
    precision: float
    recall: float
    ndcg: float
    coverage: float
    fit_s: float
    cpu_s: float


def available(library: str) -> bool:
    try:
        __import__(library)
    except ImportError as exc:
        print(f"skipping the {library} peers: {exc} (install them with {INSTALL})", flush=True)
        return False
    return True


def run_peer(peer: Peer, data: str, split: Split, fit: RatingMatrix, val: RatingMatrix, threshold: float,
             quick: bool) -> Row:
    """Settings by NDCG@10 on the carve, then refit on the whole training part and scored once on test."""
    axes = peer.grids[f"quick-{data}" if quick else data]

    def on_trial(settings: dict[str, float], ndcg: float) -> None:
        print(f"  {peer.name}: {describe(settings)}: validation NDCG@10 {ndcg:.4f}", flush=True)

    search = grid_search(axes, lambda s: quality(peer.fit(fit, s), fit, val, threshold).ndcg, on_trial=on_trial)
    best = search.best
    edge = search.at_edge()
    order, wall, cpu = timed(lambda: peer.fit(split.train, best))
    q = quality(order, split.train, split.test, threshold)
    settings = (f"{describe(best)} (val {search.best_score:.4f}, {len(search.trials)} tried"
                f"{'; at the edge of ' + ', '.join(edge) if edge else ''})")
    return Row(peer.name, settings, q.precision, q.recall, q.ndcg, q.coverage, wall, cpu)


def recae_rows(split: Split, threshold: float, train_default: bool, model_dir: str | None) -> list[Row]:
    """The most-popular list, ``recae evaluate``'s EASE reference, the ranker ``recae train`` fits, and the served
    order (defaults trained here with ``train_default``, or a published model folder)."""
    from recae.artifacts.train_config import default_configs
    from recae.models.rankers import train_ease
    from recae.models.sparse_ease import DEFAULT_HEAD_ITEMS
    from recae.training.ranking import fit_ranker

    train, test = split.train, split.test
    rows: list[Row] = []
    counts = np.bincount(train.csr.indices, minlength=train.shape[1]).astype(np.float32)
    q = quality(lambda r: np.broadcast_to(counts, (r.size, counts.size)), train, test, threshold)
    rows.append(Row("most popular", "training rating count", q.precision, q.recall, q.ndcg, q.coverage, 0.0, 0.0))
    # what recae.serving.evaluate_version.ranking_baselines fits for the `ease` row (dense below its head size)
    assert np.count_nonzero(counts) <= DEFAULT_HEAD_ITEMS
    (ease, search), wall, cpu = timed(lambda: train_ease(train, input="binary", seed=0, relevant_from=threshold))
    q = quality(lambda r: ease.score_rows(train.csr[r]), train, test, threshold)
    rows.append(Row("recae evaluate's `ease` reference", f"binary input, lambda {ease.lam:g} (val "
                    f"{search['ndcg@10']:.4f})", q.precision, q.recall, q.ndcg, q.coverage, wall, cpu))
    _, cfg = default_configs()
    cfg = cfg.sized(train.nnz)
    (ranker, search), wall, cpu = timed(lambda: fit_ranker(train, cfg))
    q = quality(lambda r: ranker.score_rows(train.csr[r]), train, test, threshold)
    rows.append(Row("recae ranker as `recae train` fits it", f"{ranker.describe()['kind']}, {cfg.ranker_input} input,"
                    f" lambda {ranker.lam:g} (val {search['ndcg@10']:.4f})", q.precision, q.recall, q.ndcg,
                    q.coverage, wall, cpu))
    if train_default:
        from recae.training.train import train_split

        model_cfg, cfg = default_configs()
        result, wall, cpu = timed(lambda: train_split(split, model_cfg, cfg))
        rows.append(_served(result.trained, train, test, threshold, "defaults trained here", wall, cpu))
        print(f"recae defaults: test RMSE {result.metrics['test_rmse']:.4f}", flush=True)
    if model_dir:
        from recae.artifacts.model_files import load_model

        trained = load_model(model_dir)
        if trained.inputs.ratings_fingerprint() != train.ratings_fingerprint():
            raise SystemExit(f"{model_dir} was not trained on this split's training part; train it with "
                             f"`recae train` on the same split")
        from recae.evaluation.evaluate import held_out_for_model

        mapped, _ = held_out_for_model(test, trained.inputs)  # the test part on the model's own IdIndex
        rows.append(_served(trained, trained.inputs, mapped, threshold, f"published {Path(model_dir).name}", 0.0,
                            0.0))
    return rows


def _served(trained, train: RatingMatrix, test: RatingMatrix, threshold: float, what: str, wall: float,
            cpu: float) -> Row:
    from recae.evaluation.metrics import ranking_scores

    q = quality(lambda r: ranking_scores(trained, r), train, test, threshold)
    ranker = trained.ranker.describe() if trained.ranker is not None else {"kind": "predicted rating"}
    return Row("recae served order", f"{what}; ranker {ranker['kind']}, lambda {ranker.get('lambda', '-')}",
               q.precision, q.recall, q.ndcg, q.coverage, wall, cpu)


def table(rows: list[Row], reference: float) -> str:
    lines = ["| model | settings chosen on validation | P@10 | R@10 | NDCG@10 | vs `ease` | coverage@10 | fit s | "
             "CPU s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r.ndcg):
        lines.append(f"| {r.model} | {r.settings} | {r.precision:.4f} | {r.recall:.4f} | {r.ndcg:.4f} | "
                     f"{100 * (r.ndcg / reference - 1):+.1f}% | {r.coverage:.3f} | {r.fit_s:.1f} | {r.cpu_s:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="u1", choices=("u1", "ml-1m"))
    parser.add_argument("--data-dir", type=Path, default=DATA, help="folder holding ml-100k/ and ml-1m/")
    parser.add_argument("--peers", default="implicit iALS,implicit BPR,cornac EASE",
                        help="peers to run, by name prefix, comma-separated")
    parser.add_argument("--recvae", action="store_true", help="also cornac RecVAE (slow: minutes an epoch on ml-1m)")
    parser.add_argument("--quick", action="store_true", help="grids trimmed to PEERS.md's best and one step around")
    parser.add_argument("--recae", action="store_true", help="train recae's defaults here: the served order")
    parser.add_argument("--model", help="a published model folder trained on this split: its served order")
    args = parser.parse_args()
    folder = args.data_dir / ("ml-100k" if args.data == "u1" else "ml-1m")
    if not folder.is_dir():
        print(f"skipping: {folder} is absent (MovieLens is not in the repository; give --data-dir a folder "
              f"holding {folder.name}/)")
        return

    split = load(args.data, args.data_dir)
    threshold = relevance_threshold(split.train.rating_scale()[1])
    fit, val = holdout_validation(split.train, 0.1, 0)
    print(f"{args.data}: {split.train.nnz:,} training / {split.test.nnz:,} test ratings, {split.train.shape[1]:,} "
          f"films; carve {fit.nnz:,} fit / {val.nnz:,} validation; relevant from {threshold:g}", flush=True)
    rows = recae_rows(split, threshold, args.recae, args.model)
    reference = rows[1].ndcg
    print(table(rows, reference), flush=True)
    wanted = [p for p in PEERS if any(p.name.startswith(w.strip()) for w in args.peers.split(","))]
    for peer in wanted + ([RECVAE] if args.recvae else []):
        if available(peer.library):
            rows.append(run_peer(peer, args.data, split, fit, val, threshold, args.quick))
            print(table([rows[-1]], reference).splitlines()[-1], flush=True)  # the row now: a long run may stop
    print(f"\n{args.data}: scored on {split.test.nnz:,} held-out ratings (users with a film rated >= {threshold:g})")
    print(table(rows, reference))


if __name__ == "__main__":
    main()
