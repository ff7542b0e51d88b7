"""Scoring a published version on held-out ratings beside the baselines: what ``recae evaluate`` reports.

The parts are the evaluation room's (splits, metrics, baselines, held-out pairs); putting them together needs the
registry (which version, its files) and the EASE ranker as the reference list, so it lives here, above both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from recae.artifacts.train_config import TrainConfig
from recae.artifacts.trained_model import model_relevance
from recae.errors import DataError, EmptyStoreError
from recae.evaluation.evaluate import (
    RANKING_KS,
    ModelEvaluation,
    evaluate_baselines,
    file_for_model,
    held_out_for_model,
)
from recae.evaluation.metrics import ListQuality, RowScores, list_quality, rating_metrics, relevance_threshold
from recae.evaluation.splits import SplitSpec, split_from_store
from recae.models.rankers import train_ease
from recae.models.sparse_ease import DEFAULT_HEAD_ITEMS, train_sparse_ease
from recae.serving.registry import get_version, load_champion, load_version
from recae.store.matrix import RatingMatrix
from recae.threads import blas_threads

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.engine import Engine

    from recae.store.ingest import RatingsFile


def ranking_baselines(
    train: RatingMatrix, test: RatingMatrix, ks: tuple[int, ...] = RANKING_KS,
    threshold: float | None = None, seed: int = 0,
) -> dict[str, ListQuality]:
    """The two lists a top-N model must beat, measured like it on ``test``: ``most_popular`` (films by training
    rating count) and ``ease`` (Steck 2019 on the binary "has rated" matrix, lambda chosen on a carve of ``train``;
    the sparse EASE over every film where the rated films outnumber its exact head, as ``ranker = "auto"`` does).
    Held-out ratings are relevant from ``threshold`` (None: as in :func:`evaluate_scorer`), in EASE's lambda search
    too."""
    threshold = relevance_threshold(train.rating_scale()[1], threshold)
    counts = np.bincount(train.csr.indices, minlength=train.shape[1]).astype(np.float32)  # (n_movies,)
    popular = RowScores(lambda rows: np.broadcast_to(counts, (rows.size, counts.size)))
    fit = train_sparse_ease if np.count_nonzero(counts) > DEFAULT_HEAD_ITEMS else train_ease
    ease, _ = fit(train, input="binary", seed=seed, relevant_from=threshold)
    reference = RowScores(lambda rows: ease.score_rows(train.csr[rows]))
    return {name: list_quality(scorer, train, test, ks=ks, threshold=threshold)
            for name, scorer in (("most_popular", popular), ("ease", reference))}


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
    ks = tuple(sorted({k, *RANKING_KS}))
    threshold = model_relevance(trained, relevant_from)
    seed = trained.train_config.seed if trained.train_config is not None else 0
    # BLAS threads as a training of this size gets them (one on small data: recae.threads.blas_threads)
    with blas_threads((trained.train_config or TrainConfig()).blas_threads(trained.inputs.nnz)):
        rating = rating_metrics(trained, test)
        lists = list_quality(trained, trained.inputs, test, ks=ks, threshold=threshold)
        baselines = evaluate_baselines(trained.inputs, test, ranking_k=k, threshold=threshold)
        others = ranking_baselines(trained.inputs, test, ks=ks, threshold=threshold, seed=seed)
    return ModelEvaluation(version=info.version, model=info.model, split=spec.name, n_test=test.nnz,
                           rating=rating, lists=lists, baselines=baselines, ranking_baselines=others,
                           relevant_from=threshold, k=k, note=note,
                           n_skipped=dropped, test_file=str(held.path) if held is not None else None)
