"""The peer benchmark's adapters (tests/benchmarks/peer_adapters.py), without any peer library installed: a peer
sees exactly the training ratings, its scores land on the right films, and the grid search walks past an edge."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from recae.evaluation.splits import random_split
from tests.benchmarks.peer_adapters import (
    Axis,
    grid_search,
    has_rated,
    laid_out,
    positions_of,
    quality,
    triplets,
)
from tests.support.synthetic import planted_low_rank


def test_the_exported_split_holds_exactly_the_training_ratings() -> None:
    split = random_split(planted_low_rank(seed=3).observed, 0.2, 0)
    rows, cols, values = split.train.coo()
    exported = triplets(split.train)
    assert len(exported) == split.train.nnz
    assert set(exported) == set(zip(rows.tolist(), cols.tolist(), values.astype(np.float64).tolist()))
    test_rows, test_cols, _ = split.test.coo()
    assert not {(u, i) for u, i, _ in exported} & set(zip(test_rows.tolist(), test_cols.tolist()))
    assert {r for _, _, r in triplets(split.train, binary=True)} == {1.0}
    implicit_input = has_rated(split.train)
    assert implicit_input.shape == split.train.shape and set(implicit_input.data.tolist()) == {1.0}
    assert (implicit_input != 0).sum() == split.train.nnz
    assert abs(implicit_input - (split.train.csr != 0)).sum() == 0


def test_peer_scores_land_on_our_films_and_unseen_films_rank_last() -> None:
    peer_of_col = positions_of({4: 0, 0: 1, 2: 2}, 5)  # the peer knows our films 4, 0, 2 as its 0, 1, 2
    assert peer_of_col.tolist() == [1, -1, 2, -1, 0]
    ours = laid_out(np.array([[3.0, -2.0, 7.0], [0.5, 0.25, 0.0]]), peer_of_col)  # (2 users, 3 peer films)
    assert ours[:, [4, 0, 2]].tolist() == [[3.0, -2.0, 7.0], [0.5, 0.25, 0.0]]
    assert ours[:, [1, 3]].max(axis=1).tolist() == [-3.0, -1.0]  # below each user's lowest known score


def test_a_peer_order_is_scored_by_the_project_metric_on_unrated_films_only() -> None:
    split = random_split(planted_low_rank(seed=5).observed, 0.2, 0)
    liked = split.test.csr.copy()
    liked.data = (liked.data >= 4).astype(np.float32)
    oracle = quality(lambda rows: liked[rows].toarray() + 10 * split.train.csr[rows].toarray(), split.train,
                     split.test, 4.0)  # training films score highest, yet are never listed
    assert oracle.users > 0 and math.isclose(oracle.ndcg, 1.0)
    noise = quality(lambda rows: np.random.default_rng(0).random((rows.size, split.train.shape[1])), split.train,
                    split.test, 4.0)
    assert noise.ndcg < oracle.ndcg and 0 < noise.coverage <= 1


def test_the_grid_widens_past_an_edge_until_the_peak_and_says_when_it_stopped_short() -> None:
    def score(s: dict[str, float]) -> float:  # single-peaked at lambda 6400 and 64 factors
        return -(math.log2(s["lambda"]) - math.log2(6400)) ** 2 - (math.log2(s["factors"]) - 6) ** 2

    short = grid_search([Axis("lambda", (100, 200, 400, 800)), Axis("factors", (32, 64, 128), integer=True)],
                        score, max_widen=2)
    assert short.best == {"lambda": 3200, "factors": 64} and short.at_edge() == ["lambda"]
    assert len(short.trials) == 12 + 2  # the grid, then one point a round on the widened axis
    found = grid_search([Axis("lambda", (100, 200, 400, 800)), Axis("factors", (32, 64, 128), integer=True)],
                        score, max_widen=5)
    assert found.best == {"lambda": 6400, "factors": 64} and found.at_edge() == []
    closed = grid_search([Axis("lambda", (100, 200), step=0), Axis("factors", (7, 9), integer=True, step=1.5,
                                                                   high=14)], score)
    assert closed.best["lambda"] == 200 and {k[1] for k in closed.trials} == {7, 9, 14}  # then 21 > 14: stop


def test_the_benchmark_skips_with_a_message_without_data_or_a_peer(tmp_path: Path) -> None:
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    done = subprocess.run([sys.executable, str(bench / "bench_peers.py"), "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "skipping" in done.stdout and "ml-100k" in done.stdout, done.stderr
    probe = (f"import sys; sys.path.insert(0, {str(bench)!r}); import bench_peers; "
             "print(bench_peers.available('no_such_peer_library'))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'pip install -e ".[peers]"' in done.stdout and done.stdout.strip().endswith("False")
