"""Baselines side by side: on planted data, and on real MovieLens against figures measured on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recae.evaluation.evaluate import BASELINES, BaselineReport, ModelEvaluation, evaluate_baselines, gain
from recae.store.matrix import IdIndex, RatingMatrix
from tests.support.synthetic import planted_low_rank


def ml100k_fold(folder: Path, fold: int = 1) -> tuple[RatingMatrix, RatingMatrix]:
    """The canonical u<fold>.base / u<fold>.test split on one IdIndex over both files."""
    names = ["user_id", "movie_id", "rating", "timestamp"]
    base = pd.read_csv(folder / f"u{fold}.base", sep="\t", names=names)
    test = pd.read_csv(folder / f"u{fold}.test", sep="\t", names=names)
    both = pd.concat([base, test])
    index = IdIndex(np.unique(both.user_id.to_numpy()), np.unique(both.movie_id.to_numpy()))
    return tuple(  # type: ignore[return-value]
        RatingMatrix.from_ids(
            part.user_id.to_numpy(), part.movie_id.to_numpy(), part.rating.to_numpy(np.float32),
            part.timestamp.to_numpy(), index,
        )
        for part in (base, test)
    )


def ml1m_random_split(folder: Path, seed: int = 0, test_fraction: float = 0.1) -> tuple[RatingMatrix, RatingMatrix]:
    """ratings.dat (user::movie::rating::time) split at random: a seeded permutation, the first 10% held out."""
    table = pd.read_csv(folder / "ratings.dat", sep=":", header=None, usecols=[0, 2, 4, 6])
    user_ids, movie_ids, values, timestamps = (table[c].to_numpy() for c in (0, 2, 4, 6))
    full = RatingMatrix.from_ids(user_ids, movie_ids, values.astype(np.float32), timestamps)
    held_out = np.zeros(full.nnz, dtype=bool)
    held_out[np.random.default_rng(seed).permutation(full.nnz)[: int(full.nnz * test_fraction)]] = True
    return full.subset(~held_out), full.subset(held_out)


def test_report_names_every_baseline_and_orders_them_on_planted_data() -> None:
    observed = planted_low_rank(seed=4).observed
    held_out = np.random.default_rng(4).random(observed.nnz) < 0.2
    train, test = observed.subset(~held_out), observed.subset(held_out)
    report = evaluate_baselines(train, test, ranking_k=5)
    assert isinstance(report, BaselineReport)
    assert [r.name for r in report.results()] == list(BASELINES) == ["global_mean", "biases", "svd"]
    for result in report.results():
        assert result.rating.n_test == test.nnz
        assert result.ranking is not None and result.ranking.k == 5
        assert 0 <= result.ranking.ndcg <= 1
    assert report.svd.rating.rmse < report.global_mean.rating.rmse
    assert report.rmse()["svd"] == report.svd.rating.rmse


def test_report_without_ranking_and_on_mismatched_matrices() -> None:
    observed = planted_low_rank(n_users=30, n_movies=20, seed=5).observed
    report = evaluate_baselines(observed, observed)
    assert all(r.ranking is None for r in report.results())
    other = planted_low_rank(n_users=30, n_movies=21, seed=5).observed
    with pytest.raises(ValueError, match="share one IdIndex"):
        evaluate_baselines(observed, other)



def test_the_table_shows_by_how_much_each_list_beats_the_ease_reference() -> None:
    from recae.cli.output import render
    from recae.evaluation.metrics import RowScores, list_quality
    from recae.models.rankers import train_ease
    from recae.serving.evaluate_version import ranking_baselines

    observed = planted_low_rank(seed=4).observed
    held_out = np.random.default_rng(4).random(observed.nnz) < 0.2
    train, test = observed.subset(~held_out), observed.subset(held_out)
    served, _ = train_ease(train, input="value", relevant_from=4.0)  # the order recae serves, fitted here
    baselines = evaluate_baselines(train, test, ranking_k=10, threshold=4.0)
    report = ModelEvaluation(
        version="v1", model="stacked", split="random", n_test=test.nnz, rating=baselines.svd.rating,
        lists=list_quality(RowScores(lambda rows: served.score_rows(train.csr[rows])), train, test, threshold=4.0),
        baselines=baselines, ranking_baselines=ranking_baselines(train, test, threshold=4.0), relevant_from=4.0)
    rows = {r["model"]: r for r in report.rows()}
    reference = rows["ease"]["ndcg@10"]
    assert rows["ease"]["ndcg@10 vs ease"] == "+0.0%"
    for name, row in rows.items():
        assert row["ndcg@10 vs ease"] == gain(row["ndcg@10"], reference), name
    assert all(row["ndcg@10 vs ease"] is not None for row in rows.values())  # every row is ranked at 10
    assert rows["stacked (v1)"]["ndcg@10 vs ease"] == f"{100 * (report.ranking.ndcg / reference - 1):+.1f}%"
    assert "ndcg@10 vs ease" in render(report.rows(), "table")
    assert set(report.to_json()) >= {"rmse", "ranking", "baselines"}  # the JSON keeps its keys, gains none
    assert "ndcg@10 vs ease" not in str(report.to_json())


def test_a_gain_needs_two_numbers_and_a_reference_above_zero() -> None:
    assert gain(0.4820, 0.4458) == "+8.1%" and gain(0.2445, 0.4458) == "-45.2%"
    assert gain(0.3, 0.0) is None and gain(float("nan"), 0.4) is None and gain(0.3, float("nan")) is None

def test_baselines_on_ml100k_u1(ml100k: Path) -> None:
    train, test = ml100k_fold(ml100k, 1)
    assert (train.nnz, test.nnz) == (80_000, 20_000)
    report = evaluate_baselines(train, test, ranking_k=10)
    rmse = report.rmse()
    # Measured on u1 (defaults): global mean 1.1537, biases 0.9550, svd 0.9287.
    assert rmse["global_mean"] < 1.16
    assert rmse["biases"] < 0.96
    assert rmse["svd"] < 0.935
    assert rmse["svd"] < rmse["biases"] < rmse["global_mean"]
    for result in report.results():
        assert result.rating.mae < result.rating.rmse
    # Measured NDCG@10 (held-out >= 4 relevant, training films excluded): 0.006, 0.115, 0.165 over 456 users.
    ndcg = {r.name: r.ranking.ndcg for r in report.results() if r.ranking is not None}
    assert ndcg["svd"] > 0.15
    assert ndcg["svd"] > ndcg["biases"] > ndcg["global_mean"]
    assert report.svd.ranking is not None and report.svd.ranking.n_users + report.svd.ranking.n_skipped == 459


@pytest.mark.slow
def test_baselines_on_ml1m_random_split(ml1m: Path) -> None:
    train, test = ml1m_random_split(ml1m, seed=0)
    assert test.nnz == 100_020
    rmse = evaluate_baselines(train, test).rmse()
    # Measured (seed 0, 10% held out): global mean 1.1166, biases 0.9061, svd 0.8546.
    assert rmse["global_mean"] < 1.12
    assert rmse["biases"] < 0.91
    assert rmse["svd"] < 0.86
