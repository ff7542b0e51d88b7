"""Evaluation: metrics (``recae.metrics``) and baselines (``recae.baselines``) composed side by side.

Import the metrics and the ``Scorer`` protocol from here; ``evaluate_baselines`` measures the three
reference models on the same held-out ratings so that a trained autoencoder can be compared with them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from recae.baselines import BiasBaseline, Biases, GlobalMean, TruncatedSVDBaseline, fit_biases
from recae.errors import DataError, EmptyStoreError
from recae.metrics import (
    RELEVANT_SHARE,
    ListQuality,
    RankingMetrics,
    RatingMetrics,
    RowScores,
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
    from pathlib import Path

    from sqlalchemy.engine import Engine

    from recae.serving.scorer import TrainedModel
    from recae.splits import SplitSpec
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
    "evaluate_model",
    "held_out_for_model",
    "file_for_model",
    "evaluate_scorer",
    "fit_biases",
    "mae",
    "RANKING_KS",
    "list_quality",
    "ranking_baselines",
    "ndcg_at_k",
    "precision_at_k",
    "ranking_metrics",
    "rating_metrics",
    "recall_at_k",
    "relevance_threshold",
    "model_relevance",
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


def ranking_baselines(
    train: RatingMatrix, test: RatingMatrix, ks: tuple[int, ...] = RANKING_KS,
    threshold: float | None = None, seed: int = 0,
) -> dict[str, ListQuality]:
    """The two lists a top-N model must beat, measured like it on ``test``: ``most_popular`` (films by training
    rating count) and ``ease`` (Steck 2019 on the binary "has rated" matrix, lambda chosen on a carve of ``train``;
    the sparse EASE over every film where the rated films outnumber its exact head, as ``ranker = "auto"`` does).
    Held-out ratings are relevant from ``threshold`` (None: as in :func:`evaluate_scorer`), in EASE's lambda search
    too."""
    from recae.models.rankers import train_ease
    from recae.models.sparse_ease import DEFAULT_HEAD_ITEMS, train_sparse_ease

    threshold = relevance_threshold(train.rating_scale()[1], threshold)
    counts = np.bincount(train.csr.indices, minlength=train.shape[1]).astype(np.float32)  # (n_movies,)
    popular = RowScores(lambda rows: np.broadcast_to(counts, (rows.size, counts.size)))
    fit = train_sparse_ease if np.count_nonzero(counts) > DEFAULT_HEAD_ITEMS else train_ease
    ease, _ = fit(train, input="binary", seed=seed, relevant_from=threshold)
    reference = RowScores(lambda rows: ease.score_rows(train.csr[rows]))
    return {name: list_quality(scorer, train, test, ks=ks, threshold=threshold)
            for name, scorer in (("most_popular", popular), ("ease", reference))}


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
    if first.of_users:  # a sample of the eligible users (recae.metrics.RANKING_USERS)
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
        """One flat record per model for tables: the autoencoder first, then the rating and ranking baselines."""
        k = self.k
        entries: list[tuple[str, RatingMetrics | None, RankingMetrics | None, ListQuality | None]] = [
            (f"{self.model} ({self.version})", self.rating, self.ranking, self.lists)]
        entries += [(b.name, b.rating, b.ranking, None) for b in self.baselines.results()]
        entries += [(name, None, q.at.get(k), q) for name, q in self.ranking_baselines.items()]
        return [
            {"model": name, "rmse": rating.rmse if rating else None, "mae": rating.mae if rating else None,
             f"precision@{k}": ranking.precision if ranking else None,
             f"recall@{k}": ranking.recall if ranking else None,
             f"ndcg@{k}": ranking.ndcg if ranking else None,
             f"coverage@{self.lists.list_k}": lists.coverage if lists else None,
             "n_test": self.n_test}
            for name, rating, ranking, lists in entries
        ]


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


def model_relevance(trained: TrainedModel, relevant_from: float | None = None) -> float:
    """The rating from which a held-out rating is relevant for this model: ``relevant_from`` when given, else the
    one it was trained with (``relevant_from`` in its train config, also used by its ranker's lambda search), else
    ``RELEVANT_SHARE`` x the top of its training ratings (4 on 1-5 and 0.5-5, 8 on 2-10)."""
    if relevant_from is None and trained.train_config is not None:
        relevant_from = trained.train_config.relevant_from
    return relevance_threshold(trained.rating_scale[1], relevant_from)


def evaluate_model(
    engine: Engine, version: str | None = None, split: SplitSpec | None = None, k: int = 10,
    relevant_from: float | None = None, models_dir: Path | None = None, held: RatingsFile | None = None,
) -> ModelEvaluation:
    """Score a published model (default: the champion) on the held-out ratings of the split it was trained on.

    The split is rebuilt from the store by its stored name and seed; ``split`` overrides it, ``held`` (a ratings
    file, see ``file_for_model``) replaces it. Baselines are fitted on exactly the model's training ratings and
    measured on the same held-out ratings. Held-out ratings are relevant from ``relevant_from`` (None: the model's
    own threshold, see :func:`model_relevance`), for the model and every baseline alike.
    """
    from recae.serving.registry import get_version, load_champion, load_version
    from recae.splits import SplitSpec, split_from_store

    if split is not None and held is not None:
        raise ValueError("give a split or a held-out file, not both")
    info = get_version(engine, version)
    trained = load_version(engine, info.version, models_dir) if version else load_champion(engine, models_dir)
    spec = split or SplitSpec.from_json(trained.split_spec or {"name": info.split})
    note = None
    if held is not None:
        test, dropped = file_for_model(held, trained.inputs)
        if dropped:
            note = (f"skipped {dropped} of {held.label}'s {held.user_ids.size} pairs: the model does not know the "
                    "user or the film")
        if test.nnz == 0:
            raise DataError(f"{held.label}: none of its {held.user_ids.size} pairs has a user and film the model knows")
    else:
        rebuilt = split_from_store(engine, RatingMatrix.from_db(engine), spec)
        test, dropped = held_out_for_model(rebuilt.test, trained.inputs)
        if rebuilt.train.ratings_fingerprint() != trained.inputs.ratings_fingerprint():  # a loaded model: no stamps
            note = (f"the store changed since {info.version} was trained (or another split was asked for); "
                    f"scored {test.nnz} held-out ratings, skipped {dropped} the model read or does not know")
        if test.nnz == 0:
            raise EmptyStoreError(f"split {spec.name!r} leaves no held-out ratings this model has not seen")
    rating = rating_metrics(trained, test)
    ks = tuple(sorted({k, *RANKING_KS}))
    threshold = model_relevance(trained, relevant_from)
    lists = list_quality(trained, trained.inputs, test, ks=ks, threshold=threshold)
    baselines = evaluate_baselines(trained.inputs, test, ranking_k=k, threshold=threshold)
    seed = trained.train_config.seed if trained.train_config is not None else 0
    others = ranking_baselines(trained.inputs, test, ks=ks, threshold=threshold, seed=seed)
    return ModelEvaluation(version=info.version, model=info.model, split=spec.name, n_test=test.nnz,
                           rating=rating, lists=lists, baselines=baselines, ranking_baselines=others,
                           relevant_from=threshold, k=k, note=note,
                           n_skipped=dropped, test_file=str(held.path) if held is not None else None)
