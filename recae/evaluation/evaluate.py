"""Evaluation: metrics (``recae.evaluation.metrics``) and baselines (``recae.evaluation.baselines``) side by side.

Import the metrics and the ``Scorer`` protocol from here; ``evaluate_baselines`` measures the three
reference models on the same held-out ratings so that a trained autoencoder can be compared with them. Scoring a
published version (which needs the registry and the EASE reference list, rooms above this one) is
``recae.serving.evaluate_version.evaluate_model``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from recae.errors import DataError
from recae.evaluation.baselines import BiasBaseline, Biases, GlobalMean, TruncatedSVDBaseline, fit_biases
from recae.evaluation.metrics import (
    RELEVANT_SHARE,
    ListQuality,
    RankingMetrics,
    RatingMetrics,
    Scorer,
    list_quality,
    mae,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    rating_metrics,
    recall_at_k,
    relevance_threshold,
    rmse,
    top_k_unseen,
)
from recae.store.matrix import RatingMatrix

if TYPE_CHECKING:
    from recae.store.ingest import RatingsFile

__all__ = [
    "BASELINES",
    "RELEVANT_SHARE",
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
    "held_out_for_model",
    "file_for_model",
    "evaluate_scorer",
    "fit_biases",
    "mae",
    "RANKING_KS",
    "list_quality",
    "ndcg_at_k",
    "precision_at_k",
    "ranking_metrics",
    "rating_metrics",
    "recall_at_k",
    "relevance_threshold",
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
    threshold: float | None = None,
) -> BaselineResult:
    """RMSE/MAE of a fitted ``scorer`` on ``test`` and, when ``ranking_k`` is given, its top-k quality (held-out
    ratings relevant from ``threshold``; None: ``relevance_threshold`` of ``train``'s top rating)."""
    ranking = None
    if ranking_k is not None:
        threshold = relevance_threshold(train.rating_scale()[1], threshold)
        ranking = ranking_metrics(scorer, train, test, k=ranking_k, threshold=threshold)
    return BaselineResult(name=name, rating=rating_metrics(scorer, test), ranking=ranking)


def evaluate_baselines(
    train: RatingMatrix,
    test: RatingMatrix,
    ranking_k: int | None = None,
    threshold: float | None = None,
) -> BaselineReport:
    """Fit each baseline on ``train`` and measure it on ``test`` (both on one IdIndex); ``threshold`` as in
    :func:`evaluate_scorer`.

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


#: Cut-offs ``recae evaluate`` reports; coverage and popularity are measured on the top 10.
RANKING_KS = (10, 20, 100)


def lists_json(quality: ListQuality | None) -> dict[str, float] | None:
    """``precision@k``, ``recall@k``, ``ndcg@k`` for every k, ``coverage@10``, ``mean_popularity@10``, ``n_users``."""
    if quality is None:
        return None
    out: dict[str, float] = {}
    for k, r in sorted(quality.at.items()):
        out.update({f"precision@{k}": r.precision, f"recall@{k}": r.recall, f"ndcg@{k}": r.ndcg})
    first = next(iter(quality.at.values()))
    if not math.isnan(quality.coverage):  # measured for full lists only, not the rating baselines' single cut-off
        out.update({f"coverage@{quality.list_k}": quality.coverage,
                    f"mean_popularity@{quality.list_k}": quality.mean_popularity})
    out["n_users"] = first.n_users
    if first.of_users:  # a sample of the eligible users (recae.evaluation.metrics.RANKING_USERS)
        out["of_users"] = first.of_users
    return out


@dataclass(frozen=True)
class ModelEvaluation:
    """A published model scored on its held-out ratings, beside the baselines fitted on the same training data.

    ``lists`` is the quality of the served ranking (the ranker's order when the model has one) at every k of
    ``RANKING_KS``; ``ranking_baselines`` the most-popular and EASE lists measured the same way. ``test_file`` is
    set when the held-out ratings came from a file (``evaluate --ratings``); ``n_skipped`` counts held-out pairs
    not scored because the model does not know the user or the film (for a split rebuilt on a changed store, also
    the pairs the model read). Every list counts a held-out rating relevant from ``relevant_from``.
    """

    version: str
    model: str
    split: str
    n_test: int
    rating: RatingMetrics
    lists: ListQuality
    baselines: BaselineReport
    ranking_baselines: dict[str, ListQuality]
    relevant_from: float
    k: int = 10
    note: str | None = None
    n_skipped: int = 0
    test_file: str | None = None

    @property
    def ranking(self) -> RankingMetrics:
        """The served ranking's metrics at the requested ``k``."""
        return self.lists.at[self.k]

    def to_json(self) -> dict[str, object]:
        """Stable keys: ``rmse``, ``mae``, ``n_test``, ``n_skipped``, ``relevant_from``, ``ranking``, ``baselines``
        (plus identity, ``test_file`` and a note)."""
        baselines: dict[str, object] = {
            b.name: {"rmse": b.rating.rmse, "mae": b.rating.mae, "ranking": lists_json(_single(b.ranking))}
            for b in self.baselines.results()}
        baselines.update({name: {"rmse": None, "mae": None, "ranking": lists_json(quality)}
                          for name, quality in self.ranking_baselines.items()})
        return {
            "version": self.version, "model": self.model, "split": self.split,
            "test_file": self.test_file, "rmse": self.rating.rmse, "mae": self.rating.mae, "n_test": self.n_test,
            "n_skipped": self.n_skipped, "relevant_from": self.relevant_from, "ranking": lists_json(self.lists),
            "baselines": baselines, "note": self.note,
        }

    def rows(self) -> list[dict[str, object]]:
        """One flat record per model for tables: the autoencoder first, then the rating and ranking baselines.

        ``ndcg@k vs ease`` is each list's NDCG@k against the EASE reference's (lambda chosen on validation), as a
        signed percentage: by how much the served order wins, at a glance."""
        k = self.k
        reference = self.ranking_baselines.get(REFERENCE_LIST)
        reference_ndcg = reference.at[k].ndcg if reference is not None and k in reference.at else math.nan
        entries: list[tuple[str, RatingMetrics | None, RankingMetrics | None, ListQuality | None]] = [
            (f"{self.model} ({self.version})", self.rating, self.ranking, self.lists)]
        entries += [(b.name, b.rating, b.ranking, None) for b in self.baselines.results()]
        entries += [(name, None, q.at.get(k), q) for name, q in self.ranking_baselines.items()]
        return [
            {"model": name, "rmse": rating.rmse if rating else None, "mae": rating.mae if rating else None,
             f"precision@{k}": ranking.precision if ranking else None,
             f"recall@{k}": ranking.recall if ranking else None,
             f"ndcg@{k}": ranking.ndcg if ranking else None,
             f"ndcg@{k} vs {REFERENCE_LIST}": gain(ranking.ndcg, reference_ndcg) if ranking else None,
             f"coverage@{self.lists.list_k}": lists.coverage if lists else None,
             "n_test": self.n_test}
            for name, rating, ranking, lists in entries
        ]


#: The ranking baseline the others are set against in ``ModelEvaluation.rows``: the strongest closed form kept.
REFERENCE_LIST = "ease"


def gain(value: float, reference: float) -> str | None:
    """``value`` against ``reference`` as a signed percentage (``+8.1%``); None where either is not a number or
    the reference is 0 (no list to compare with)."""
    if not (math.isfinite(value) and math.isfinite(reference)) or reference <= 0:
        return None
    return f"{100.0 * (value / reference - 1.0):+.1f}%"


def _single(ranking: RankingMetrics | None) -> ListQuality | None:
    """A one-cut-off RankingMetrics as a ListQuality (the rating baselines are ranked at one k only)."""
    if ranking is None:
        return None
    return ListQuality(at={ranking.k: ranking}, coverage=float("nan"), mean_popularity=float("nan"), list_k=ranking.k)


def held_out_for_model(test: RatingMatrix, model_inputs: RatingMatrix) -> tuple[RatingMatrix, int]:
    """``test`` moved onto the model's IdIndex, without any (user, movie) the model read as input.

    Returns the mapped test ratings and how many were dropped (unknown to the model, or seen in training):
    nothing the model trained on can ever be scored as held out.
    """
    rows, cols, values = test.coo()
    user_rows, movie_cols, known, seen = _on_model(test.index.user_ids[rows], test.index.movie_ids[cols],
                                                   model_inputs)
    keep = known & ~seen
    mapped = RatingMatrix.from_positions(user_rows[keep], movie_cols[keep], values[keep],
                                         test.timestamps[keep], model_inputs.index)
    return mapped, int((~keep).sum())


def file_for_model(held: RatingsFile, model_inputs: RatingMatrix) -> tuple[RatingMatrix, int]:
    """The ratings of a held-out file on the model's IdIndex, and how many were skipped as unknown to the model.

    Unlike a split, a file may list pairs the model cannot place (a user or film it never saw): those are
    skipped and counted. A pair the model read in training is refused: a held-out file must be held out.

    Raises:
        DataError: naming the file, line and first pair the model read in training.
    """
    user_rows, movie_cols, known, seen = _on_model(held.user_ids, held.movie_ids, model_inputs)
    if seen.any():
        k = int(np.flatnonzero(seen)[0])
        raise DataError(f"{held.where(k)} is a rating the model read in training ({int(seen.sum())} of the file's "
                        f"{seen.size} pairs are); a held-out file must hold ratings the model never saw")
    mapped = RatingMatrix.from_positions(user_rows[known], movie_cols[known], held.ratings[known], None,
                                         model_inputs.index)
    return mapped, int((~known).sum())


def _on_model(user_ids: np.ndarray, movie_ids: np.ndarray,
              model_inputs: RatingMatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, known, seen) of (user_id, movie_id) pairs on the model's index: positions (-1 when unknown),
    whether the model knows both ids, and whether the pair is one of its training inputs."""
    index = model_inputs.index
    user_rows = index.lookup_users(user_ids)
    movie_cols = index.lookup_movies(movie_ids)
    known = (user_rows >= 0) & (movie_cols >= 0)
    n_movies = index.n_movies
    train_rows, train_cols, _ = model_inputs.coo()
    seen_keys = train_rows * n_movies + train_cols  # sorted: CSR order
    keys = user_rows * n_movies + movie_cols
    seen = np.zeros(keys.size, dtype=bool)
    seen[known] = np.isin(keys[known], seen_keys, assume_unique=False)
    return user_rows, movie_cols, known, seen
