"""Evaluation: metrics (``recae.metrics``) and baselines (``recae.baselines``) composed side by side.

Import the metrics and the ``Scorer`` protocol from here; ``evaluate_baselines`` measures the three
reference models on the same held-out ratings so that a trained autoencoder can be compared with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from recae.baselines import BiasBaseline, Biases, GlobalMean, TruncatedSVDBaseline, fit_biases
from recae.errors import EmptyStoreError
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

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from recae.splits import SplitSpec

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
    "ModelEvaluation",
    "evaluate_baselines",
    "evaluate_model",
    "held_out_for_model",
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


@dataclass(frozen=True)
class ModelEvaluation:
    """A published model scored on its held-out ratings, beside the baselines fitted on the same training data."""

    version: str
    model: str
    split: str
    n_test: int
    rating: RatingMetrics
    ranking: RankingMetrics
    baselines: BaselineReport
    note: str | None = None

    def to_json(self) -> dict[str, object]:
        """Stable keys: ``rmse``, ``mae``, ``n_test``, ``ranking``, ``baselines`` (plus identity and a note)."""

        def ranking_json(r: RankingMetrics | None) -> dict[str, float] | None:
            if r is None:
                return None
            return {f"precision@{r.k}": r.precision, f"recall@{r.k}": r.recall, f"ndcg@{r.k}": r.ndcg,
                    "n_users": r.n_users}

        return {
            "version": self.version, "model": self.model, "split": self.split,
            "rmse": self.rating.rmse, "mae": self.rating.mae, "n_test": self.n_test,
            "ranking": ranking_json(self.ranking),
            "baselines": {b.name: {"rmse": b.rating.rmse, "mae": b.rating.mae, "ranking": ranking_json(b.ranking)}
                          for b in self.baselines.results()},
            "note": self.note,
        }

    def rows(self) -> list[dict[str, object]]:
        """One flat record per model for tables: the autoencoder first, then the baselines."""
        entries = [(f"{self.model} ({self.version})", self.rating, self.ranking)]
        entries += [(b.name, b.rating, b.ranking) for b in self.baselines.results()]
        return [
            {"model": name, "rmse": rating.rmse, "mae": rating.mae,
             f"precision@{self.ranking.k}": ranking.precision if ranking else None,
             f"recall@{self.ranking.k}": ranking.recall if ranking else None,
             f"ndcg@{self.ranking.k}": ranking.ndcg if ranking else None, "n_test": rating.n_test}
            for name, rating, ranking in entries
        ]


def held_out_for_model(test: RatingMatrix, model_inputs: RatingMatrix) -> tuple[RatingMatrix, int]:
    """``test`` moved onto the model's IdIndex, without any (user, movie) the model read as input.

    Returns the mapped test ratings and how many were dropped (unknown to the model, or seen in training):
    nothing the model trained on can ever be scored as held out.
    """
    rows, cols, values = test.coo()
    index = model_inputs.index
    user_rows = index.lookup_users(test.index.user_ids[rows])
    movie_cols = index.lookup_movies(test.index.movie_ids[cols])
    known = (user_rows >= 0) & (movie_cols >= 0)
    n_movies = index.n_movies
    train_rows, train_cols, _ = model_inputs.coo()
    seen_keys = train_rows * n_movies + train_cols  # sorted: CSR order
    keys = user_rows * n_movies + movie_cols
    seen = np.zeros(keys.size, dtype=bool)
    seen[known] = np.isin(keys[known], seen_keys, assume_unique=False)
    keep = known & ~seen
    mapped = RatingMatrix.from_positions(user_rows[keep], movie_cols[keep], values[keep],
                                         test.timestamps[keep], index)
    return mapped, int((~keep).sum())


def evaluate_model(
    engine: Engine, version: str | None = None, split: SplitSpec | None = None, k: int = 10,
    threshold: float = DEFAULT_RELEVANCE_THRESHOLD,
) -> ModelEvaluation:
    """Score a published model (default: the champion) on the held-out ratings of the split it was trained on.

    The split is rebuilt from the store by its stored name and seed; ``split`` overrides it. Baselines are fitted
    on exactly the model's training ratings and measured on the same held-out ratings.
    """
    from recae.artifacts import load_champion, load_version
    from recae.registry import get_version
    from recae.splits import SplitSpec, split_from_store

    info = get_version(engine, version)
    trained = load_version(engine, info.version) if version else load_champion(engine)
    spec = split or SplitSpec.from_json(trained.split_spec or {"name": info.split})
    matrix = RatingMatrix.from_db(engine)
    rebuilt = split_from_store(engine, matrix, spec)
    test, dropped = held_out_for_model(rebuilt.test, trained.inputs)
    note = None
    if rebuilt.train.fingerprint() != trained.inputs.fingerprint():
        note = (f"the store changed since {info.version} was trained (or another split was asked for); "
                f"scored {test.nnz} held-out ratings, skipped {dropped} the model read or does not know")
    if test.nnz == 0:
        raise EmptyStoreError(f"split {spec.name!r} leaves no held-out ratings this model has not seen")
    rating = rating_metrics(trained, test)
    ranking = ranking_metrics(trained, trained.inputs, test, k=k, threshold=threshold)
    baselines = evaluate_baselines(trained.inputs, test, ranking_k=k, threshold=threshold)
    return ModelEvaluation(version=info.version, model=info.model, split=spec.name, n_test=test.nnz,
                           rating=rating, ranking=ranking, baselines=baselines, note=note)
