"""The watch-x-like re-ranker: it orders the ranker's top films, ranks every film, prefers the films a user would
rate highly among those they would watch, is chosen on the blend carve only, and survives save and load."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recae.artifacts.model_files import load_model, save_model
from recae.artifacts.train_config import TrainConfig
from recae.errors import TrainingError
from recae.evaluation.metrics import dense_flags, top_k_unseen
from recae.evaluation.splits import Split, SplitSpec
from recae.models.build import model_config
from recae.models.rerank import RERANK_FEATURES, Reranker
from recae.store.matrix import IdIndex, RatingMatrix
from recae.training.train import train_split


def _reranker(weights: dict[str, float], depth: int) -> Reranker:
    w = np.array([weights.get(name, 0.0) for name in RERANK_FEATURES])
    n = len(RERANK_FEATURES)
    return Reranker(weights=w, mean=np.zeros(n), scale=np.ones(n), depth=depth, search={})


def test_candidates_are_reordered_and_every_other_film_keeps_the_rankers_order() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 30)).astype(np.float32)
    inputs = sp.csr_matrix((np.ones(3), ([0, 1, 2], [int(np.argmax(scores[0])), 5, 7])), shape=(3, 30))
    predicted = rng.uniform(1, 5, size=(3, 30)).astype(np.float32)
    served = _reranker({"rating": 1.0}, depth=8).order(scores, inputs, lambda at, cols: predicted[at, cols], 5.0,
                                                       np.ones(30), 3)
    seen = dense_flags(inputs.indptr, inputs.indices, scores.shape)
    for row in range(3):
        candidates = top_k_unseen(scores[row:row + 1], seen[row:row + 1], 8)[0]
        rest = np.setdiff1d(np.flatnonzero(~seen[row]), candidates)
        assert served[row, candidates].min() > served[row, rest].max()  # candidates first, every film scored
        assert list(rest[np.argsort(-served[row, rest])]) == list(rest[np.argsort(-scores[row, rest])])
        by_rating = candidates[np.argsort(-predicted[row, candidates], kind="stable")]
        assert list(candidates[np.argsort(-served[row, candidates], kind="stable")]) == list(by_rating)


def test_stored_weights_are_checked() -> None:
    good = _reranker({"share": 1.0}, depth=10).describe()
    assert Reranker.from_json(good).depth == 10
    with pytest.raises(ValueError, match="unknown re-ranker"):
        Reranker.from_json({**good, "features": ["share"]})
    with pytest.raises(ValueError, match="inconsistent"):
        Reranker.from_json({**good, "scale": [0.0] * len(RERANK_FEATURES)})
    with pytest.raises(TrainingError, match="rerank"):
        TrainConfig(rerank="always").validate()


def watched_but_disliked(n_users: int = 400, seed: int = 0) -> RatingMatrix:
    """Films 0-19 are watched by most users and rated 1-2; films 20-39 by fewer and rated 4-5: a ranker of "has
    rated" prefers the first group, the user would rate the second highly."""
    rng = np.random.default_rng(seed)
    users, movies, values = [], [], []
    for u in range(n_users):
        for film in range(40):
            if rng.random() < (0.55 if film < 20 else 0.25):
                users.append(u + 1)
                movies.append(film + 1)
                values.append(rng.integers(1, 3) if film < 20 else rng.integers(4, 6))
    return RatingMatrix.from_ids(np.array(users), np.array(movies), np.array(values, dtype=np.float32))


def _configs() -> tuple[object, TrainConfig]:
    return (model_config("denoising", hidden=(16,)),
            TrainConfig(epochs=30, ensemble=1, partner_members=0, threads=1, batch_ratings=2048, patience=5,
                        ranker="ease", ranker_input="binary", ranker_lambda=20.0, blend_fraction=0.2,
                        rerank_depth=30, deterministic=True))


@pytest.fixture(scope="module")
def planted_run() -> tuple[Split, object]:
    data = watched_but_disliked()
    mask = np.random.default_rng(1).random(data.nnz) < 0.1
    split = Split(spec=SplitSpec("random"), train=data.subset(~mask), test=data.subset(mask))
    return split, train_split(split, *_configs())


def test_the_served_order_prefers_the_films_the_user_would_like_among_those_they_would_watch(planted_run) -> None:  # type: ignore[no-untyped-def]
    split, result = planted_run
    trained = result.trained
    assert trained.reranker is not None and trained.rerank_search["kept"]
    rows = np.arange(split.train.shape[0])
    liked = split.train.index.movie_cols(np.arange(21, 41))

    def liked_share(scores: np.ndarray) -> float:
        block = split.train.csr[rows]
        top = top_k_unseen(scores, dense_flags(block.indptr, block.indices, scores.shape), 5)
        top = top[top >= 0]
        return float(np.isin(top, liked).mean())

    ranker_only = liked_share(trained.ranker.score_rows(split.train.csr[rows]))
    served = liked_share(trained.rank_rows(rows))
    assert ranker_only < 0.5 < 0.9 < served  # the ranker alone prefers the watched-but-disliked films
    assert result.metrics["rerank_val_ndcg@10"] > result.metrics["rerank_ranker_val_ndcg@10"]  # why it was kept
    assert trained.reranker.weights[RERANK_FEATURES.index("rating")] > 0


def test_changing_only_test_ratings_changes_neither_the_reranker_nor_its_choice(planted_run) -> None:  # type: ignore[no-untyped-def]
    split, result = planted_run
    flipped = RatingMatrix(csr=split.test.csr.copy(), timestamps=split.test.timestamps, index=split.test.index)
    flipped.csr.data[:] = 6.0 - flipped.csr.data
    other = train_split(replace(split, test=flipped), *_configs())
    a, b = result.trained, other.trained
    assert a.reranker is not None and b.reranker is not None
    assert np.allclose(a.reranker.weights, b.reranker.weights, rtol=1e-6, atol=1e-9)
    assert a.rerank_search["ndcg@10"] == b.rerank_search["ndcg@10"]
    assert a.rerank_search["kept"] == b.rerank_search["kept"]


def test_a_saved_model_serves_the_same_reranked_order(planted_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    split, result = planted_run
    save_model(result.trained, tmp_path / "v1", version="v1")
    loaded = load_model(tmp_path / "v1")
    assert loaded.reranker is not None and loaded.rerank_search["kept"]
    rows = np.arange(50)
    assert np.allclose(loaded.rank_rows(rows), result.trained.rank_rows(rows), atol=1e-5)
    off = load_model(tmp_path / "v1")
    assert np.allclose(replace(off, reranker=None).rank_rows(rows), result.trained.ranker.score_rows(
        split.train.csr[rows]), atol=1e-5)


def test_fold_in_serves_the_reranked_order_too(planted_run) -> None:  # type: ignore[no-untyped-def]
    from recae.serving.foldin import fold_in

    split, result = planted_run
    trained = result.trained
    index = split.train.index
    ratings = {int(index.movie_ids[c]): float(v) for c, v in zip(split.train.csr[3].indices, split.train.csr[3].data)}
    _, ranks = fold_in(trained, ratings)
    unseen = np.setdiff1d(np.arange(index.n_movies), index.movie_cols(np.array(list(ratings))))
    top = unseen[np.argsort(-ranks[unseen])][:3]
    assert np.isin(index.movie_ids[top], np.arange(21, 41)).all()  # liked films first, as in the stored lists
    assert np.isin(index.movie_ids[unseen[np.argsort(-trained.ranker.score_rows(split.train.csr[3])[0][unseen])][:3]],
                   np.arange(1, 21)).any()  # where the ranker alone puts a watched-but-disliked film
