"""Evaluation: metrics (``recae.metrics``) and baselines (``recae.baselines``) composed side by side.

Import the metrics and the ``Scorer`` protocol from here; ``evaluate_baselines`` measures the three
reference models on the same held-out ratings so that a trained autoencoder can be compared with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from recae.baselines import BiasBaseline, Biases, GlobalMean, TruncatedSVDBaseline, fit_biases
from recae.matrix import RatingMatrix
from recae.metrics import (
    DEFAULT_RELEVANCE_THRESHOLD,
    RankingMetrics,
    RatingMetrics,
    Scorer,
    mae,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    rating_metrics,
    recall_at_k,
    rmse,
    top_k_unseen,
)

__all__ = [
    "BASELINES",
    "DEFAULT_RELEVANCE_THRESHOLD",
    "BaselineReport",
    "BaselineResult",
    "BiasBaseline",
    "Biases",
    "GlobalMean",
    "RankingMetrics",
    "RatingMetrics",
    "Scorer",
    "TruncatedSVDBaseline",
    "evaluate_baselines",
    "evaluate_scorer",
    "fit_biases",
    "mae",
    "ndcg_at_k",
    "precision_at_k",
    "ranking_metrics",
    "rating_metrics",
    "recall_at_k",
    "rmse",
    "top_k_unseen",
]

log = logging.getLogger(__name__)

#: Baselines by name, each a factory for an unfitted model with tuned defaults.
BASELINES: dict[str, Callable[[], GlobalMean | BiasBaseline | TruncatedSVDBaseline]] = {
    "global_mean": GlobalMean,
    "biases": BiasBaseline,
    "svd": TruncatedSVDBaseline,
}


@dataclass(frozen=True)
class BaselineResult:
    """One model's accuracy on the held-out ratings; ``ranking`` is None unless ranking was asked for."""

    name: str
    rating: RatingMetrics
    ranking: RankingMetrics | None = None


@dataclass(frozen=True)
class BaselineReport:
    """The three baselines measured on the same split."""

    global_mean: BaselineResult
    biases: BaselineResult
    svd: BaselineResult

    def results(self) -> tuple[BaselineResult, ...]:
        """The results in BASELINES order (weakest model first)."""
        return (self.global_mean, self.biases, self.svd)

    def rmse(self) -> dict[str, float]:
        """RMSE by baseline name."""
        return {r.name: r.rating.rmse for r in self.results()}


def evaluate_scorer(
    name: str,
    scorer: Scorer,
    train: RatingMatrix,
    test: RatingMatrix,
    ranking_k: int | None = None,
    threshold: float = DEFAULT_RELEVANCE_THRESHOLD,
) -> BaselineResult:
    """RMSE/MAE of a fitted ``scorer`` on ``test`` and, when ``ranking_k`` is given, its top-k quality."""
    ranking = None
    if ranking_k is not None:
        ranking = ranking_metrics(scorer, train, test, k=ranking_k, threshold=threshold)
    return BaselineResult(name=name, rating=rating_metrics(scorer, test), ranking=ranking)


def evaluate_baselines(
    train: RatingMatrix,
    test: RatingMatrix,
    ranking_k: int | None = None,
    threshold: float = DEFAULT_RELEVANCE_THRESHOLD,
) -> BaselineReport:
    """Fit each baseline on ``train`` and measure it on ``test`` (both on one IdIndex).

    Raises ValueError when the two matrices do not share a shape, EmptyStoreError when ``train`` is empty.
    """
    if train.shape != test.shape:
        raise ValueError(f"train has shape {train.shape} but test has {test.shape}; they must share one IdIndex")
    results = {}
    for name, factory in BASELINES.items():
        model = factory().fit(train)
        results[name] = evaluate_scorer(name, model, train, test, ranking_k, threshold)
        log.info("baseline %s: RMSE %.4f on %d ratings", name, results[name].rating.rmse, test.nnz)
    return BaselineReport(**results)
