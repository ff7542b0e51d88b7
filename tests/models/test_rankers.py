"""The top-N ranker (EASE): its closed form, its planted answer, how lambda is chosen, and that test ratings never
reach it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recae.artifacts.model_files import load_model, save_model
from recae.artifacts.train_config import TrainConfig
from recae.artifacts.trained_model import TrainedModel
from recae.evaluation.metrics import RowScores, list_quality, ranking_metrics
from recae.evaluation.splits import Split, SplitSpec
from recae.models.build import model_config
from recae.models.rankers import (
    LambdaTrial,
    best_trial,
    choose_ease_lambda,
    covered_items,
    ease_weights,
    fit_ease,
    ranker_input,
    start_lambda,
    train_ease,
)
from recae.serving.foldin import fold_in
from recae.store.matrix import IdIndex, RatingMatrix
from recae.training.train import train_split
from tests.support.synthetic import planted_low_rank

N_CLUSTERS, FILMS_PER_CLUSTER, USERS_PER_CLUSTER = 3, 12, 40


def planted_clusters(seed: int = 0) -> RatingMatrix:
    """Users who each watch 7 of the 12 films of their own cluster (ratings 3..5) and nothing else."""
    rng = np.random.default_rng(seed)
    rows, cols, values = [], [], []
    n_movies = N_CLUSTERS * FILMS_PER_CLUSTER
    for user in range(N_CLUSTERS * USERS_PER_CLUSTER):
        cluster = user % N_CLUSTERS
        films = cluster * FILMS_PER_CLUSTER + rng.choice(FILMS_PER_CLUSTER, 7, replace=False)
        for film in sorted(films.tolist()):
            rows.append(user)
            cols.append(film)
            values.append(float(rng.integers(3, 6)))
    index = IdIndex(np.arange(1, N_CLUSTERS * USERS_PER_CLUSTER + 1), np.arange(101, 101 + n_movies))
    return RatingMatrix.from_positions(np.array(rows), np.array(cols), np.array(values), None, index)


def test_ease_matches_a_direct_solve_on_a_tiny_matrix() -> None:
    rng = np.random.default_rng(0)
    dense = (rng.random((30, 8)) < 0.4) * rng.integers(1, 6, (30, 8))
    x = ranker_input(sp.csr_matrix(dense.astype(np.float32)), "value", 5.0)
    lam = 3.0
    gram = (x.T @ x).toarray().astype(np.float64) + lam * np.eye(8)
    p = np.linalg.inv(gram)
    expected = np.eye(8) - p / np.diag(p)[None, :]  # B = I - P diag(1/diag(P)), Steck 2019 eq. 8
    ours = ease_weights(x, lam)
    assert ours.dtype == np.float32 and np.allclose(np.diag(ours), 0.0)
    assert np.allclose(ours, expected, atol=1e-4)
    # B solves the constrained least squares: the gradient of ||X - XB||^2 + lam ||B||^2 vanishes off the diagonal
    xd = x.toarray().astype(np.float64)
    gradient = -xd.T @ (xd - xd @ ours) + lam * ours
    off = ~np.eye(8, dtype=bool)
    assert np.abs(gradient[off]).max() < 1e-3 * np.abs(xd.T @ xd).max()


def test_users_get_their_own_clusters_unwatched_films_first() -> None:
    ratings = planted_clusters()
    ranker = fit_ease(ratings.csr, lam=5.0)
    scores = ranker.score_rows(ratings.csr)
    for user in range(ratings.shape[0]):
        cluster = user % N_CLUSTERS
        own = set(range(cluster * FILMS_PER_CLUSTER, (cluster + 1) * FILMS_PER_CLUSTER))
        seen = set(ratings.csr[user].indices.tolist())
        unwatched_own = own - seen
        order = [c for c in np.argsort(-scores[user], kind="stable") if c not in seen]
        assert set(order[: len(unwatched_own)]) == unwatched_own, f"user {user}"


def test_only_the_most_rated_films_are_covered_and_the_rest_rank_last() -> None:
    ratings = planted_clusters()
    counts = np.bincount(ratings.csr.indices, minlength=ratings.shape[1])
    items = covered_items(ratings.csr, 10)
    assert items.size == 10 and counts[items].min() >= np.sort(counts)[-10]
    ranker = fit_ease(ratings.csr, lam=5.0, max_items=10)
    scores = ranker.score_rows(ratings.csr[:20])
    assert scores.shape == (20, ratings.shape[1]) and np.isfinite(scores).all()
    uncovered = np.setdiff1d(np.arange(ratings.shape[1]), items)
    assert (scores[:, uncovered].max(axis=1) < scores[:, items].min(axis=1)).all()


def test_the_lambda_walk_finds_the_peak_on_either_side_of_the_start() -> None:
    def peaked(at: float):  # type: ignore[no-untyped-def]
        return lambda lam: -abs(np.log2(lam) - np.log2(at))

    for peak, start in ((512.0, 32.0), (8.0, 128.0), (64.0, 64.0)):
        trials = choose_ease_lambda(peaked(peak), start)
        assert best_trial(trials).lam == peak
        assert len(trials) <= 8 and len({t.lam for t in trials}) == len(trials)
    assert best_trial([LambdaTrial(1.0, 0.2), LambdaTrial(2.0, 0.2)]).lam == 1.0  # ties: the earliest


def test_the_start_lambda_grows_with_how_much_each_film_is_rated() -> None:
    sparse = planted_low_rank(n_users=100, n_movies=60, density=0.1, seed=1).observed
    dense = planted_low_rank(n_users=100, n_movies=60, density=0.6, seed=1).observed
    assert start_lambda(dense.csr, "binary", 5.0) > 2 * start_lambda(sparse.csr, "binary", 5.0)


def test_lambda_is_chosen_on_validation_and_beats_a_far_off_lambda() -> None:
    ratings = planted_clusters(seed=3)
    ranker, search = train_ease(ratings, seed=0)
    trials = search["trials"]
    assert ranker.lam == search["lambda"] == max(trials, key=lambda t: t["ndcg@10"])["lambda"]
    assert len(trials) >= 2 and search["metric"] == "ndcg@10"


def _tiny_configs() -> tuple[object, TrainConfig]:
    return (model_config("denoising", hidden=(16,)),
            TrainConfig(epochs=4, ensemble=1, partner_members=0, threads=1, batch_ratings=2048, patience=2))


def test_changing_only_test_ratings_changes_neither_the_ranker_nor_its_lambda() -> None:
    data = planted_low_rank(n_users=120, n_movies=50, density=0.3, seed=4).observed
    test_mask = np.random.default_rng(0).random(data.nnz) < 0.15
    train, test = data.subset(~test_mask), data.subset(test_mask)
    other = RatingMatrix(csr=test.csr.copy(), timestamps=test.timestamps, index=test.index)
    other.csr.data[:] = 6.0 - other.csr.data  # every test rating flipped
    model_cfg, train_cfg = _tiny_configs()
    results = [train_split(Split(spec=SplitSpec("random"), train=train, test=t), model_cfg, train_cfg)
               for t in (test, other)]
    first, second = (r.trained for r in results)
    assert first.ranker is not None and second.ranker is not None
    assert first.ranker.lam == second.ranker.lam and first.ranker_search == second.ranker_search
    assert np.array_equal(first.ranker.weights, second.ranker.weights)
    assert results[0].metrics["test_rmse"] != results[1].metrics["test_rmse"]  # the test sets did differ


@pytest.fixture(scope="module")
def trained_with_ranker() -> TrainedModel:
    data = planted_low_rank(n_users=100, n_movies=40, density=0.35, seed=6).observed
    model_cfg, train_cfg = _tiny_configs()
    mask = np.random.default_rng(1).random(data.nnz) < 0.1
    return train_split(Split(spec=SplitSpec("random"), train=data.subset(~mask), test=data.subset(mask)),
                       model_cfg, train_cfg).trained


def test_the_model_ranks_by_its_ranker_and_still_predicts_ratings(trained_with_ranker: TrainedModel) -> None:
    trained = trained_with_ranker
    rows = np.arange(5)
    ranks = trained.rank_rows(rows)
    assert np.allclose(ranks, trained.ranker.score_rows(trained.inputs.csr[rows]))  # type: ignore[union-attr]
    ratings = trained.score_rows(rows)
    assert ratings.min() >= trained.rating_scale[0] and not np.allclose(ranks, ratings)
    alone = replace(trained, ranker=None)
    assert np.array_equal(alone.rank_rows(rows), alone.score_rows(rows))


def test_fold_in_ranks_a_user_as_the_model_ranks_the_same_known_user(trained_with_ranker: TrainedModel) -> None:
    trained = trained_with_ranker
    row = 3
    stored = trained.inputs.csr[row]
    ratings = {int(trained.index.movie_ids[c]): float(v) for c, v in zip(stored.indices, stored.data, strict=True)}
    _, ranks = fold_in(trained, ratings)
    assert np.allclose(ranks, trained.rank_rows(np.array([row]))[0], atol=1e-5)


def test_the_ranker_survives_saving_and_loading(trained_with_ranker: TrainedModel, tmp_path: Path) -> None:
    meta = save_model(trained_with_ranker, tmp_path / "v", version="v")
    assert meta["ranker"]["kind"] == "ease" and meta["ranker"]["search"]["trials"]
    loaded = load_model(tmp_path / "v")
    assert loaded.ranker is not None and loaded.ranker.lam == trained_with_ranker.ranker.lam  # type: ignore[union-attr]
    assert np.array_equal(loaded.ranker.weights, trained_with_ranker.ranker.weights)  # type: ignore[union-attr]
    rows = np.arange(4)
    assert np.allclose(loaded.rank_rows(rows), trained_with_ranker.rank_rows(rows), atol=1e-6)


def test_list_quality_agrees_with_ranking_metrics_and_measures_the_lists() -> None:
    ratings = planted_clusters(seed=5)
    mask = np.random.default_rng(2).random(ratings.nnz) < 0.2
    train, test = ratings.subset(~mask), ratings.subset(mask)
    counts = np.bincount(train.csr.indices, minlength=train.shape[1]).astype(np.float32)
    popular = RowScores(lambda rows: np.broadcast_to(counts, (rows.size, counts.size)))
    quality = list_quality(popular, train, test, ks=(5, 10), threshold=4.0, list_k=5)
    single = ranking_metrics(popular, train, test, k=10, threshold=4.0)
    assert quality.at[10] == single
    # the most-popular list shows few distinct films, all of them popular
    ranker = fit_ease(train.csr, lam=5.0)
    personal = list_quality(RowScores(lambda rows: ranker.score_rows(train.csr[rows])), train, test, ks=(10,),
                            threshold=4.0, list_k=5)
    assert personal.coverage > quality.coverage
    assert personal.mean_popularity < quality.mean_popularity
    assert personal.at[10].ndcg > quality.at[10].ndcg


def test_precomputed_lists_follow_the_ranker_and_show_the_predicted_rating(
        trained_with_ranker: TrainedModel, engine) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from recae.serving.recommend import precompute_recommendations
    from recae.store.db import Recommendation
    from tests.serving.test_precompute import add_version

    trained = trained_with_ranker
    with engine.begin() as conn:
        add_version(conn, "ranked")
        precompute_recommendations(conn, "ranked", trained, trained.inputs, n=5)
    with engine.connect() as conn:
        rows = conn.execute(select(Recommendation.user_id, Recommendation.movie_id, Recommendation.score,
                                   Recommendation.predicted_rating).where(Recommendation.version == "ranked")
                            .order_by(Recommendation.user_id, Recommendation.rank)).all()
    assert len(rows) == 5 * trained.index.n_users
    user_rows = trained.index.user_rows(np.array([r[0] for r in rows]))
    cols = trained.index.movie_cols(np.array([r[1] for r in rows]))
    ranks = trained.rank_rows(np.arange(trained.index.n_users))
    assert np.allclose([r[2] for r in rows], ranks[user_rows, cols], atol=1e-5)
    assert np.allclose([r[3] for r in rows], trained.predict(user_rows, cols), atol=1e-5)
    for user in range(trained.index.n_users):  # each list is the ranker's top 5 of the user's unrated films
        unseen = np.setdiff1d(np.arange(trained.index.n_movies), trained.inputs.csr[user].indices)
        best = unseen[np.argsort(-ranks[user, unseen], kind="stable")[:5]]
        assert np.allclose(np.sort(ranks[user, cols[user_rows == user]]), np.sort(ranks[user, best]), atol=1e-6)


@pytest.mark.parametrize("block_products", [1, 50, 1 << 25])
@pytest.mark.parametrize("kernel", ["scipy", "numpy"])
def test_the_gram_matrix_summed_over_user_blocks_is_xtx(block_products: int, kernel: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from recae.models import rankers
    from recae.models.rankers import gram_matrix

    if kernel == "numpy":
        monkeypatch.setattr(rankers, "_csr_todense", None)
    x = sp.random(60, 25, density=0.3, format="csr", dtype=np.float32, random_state=3)
    ours = gram_matrix(x, block_products=block_products)
    assert ours.flags.f_contiguous and np.allclose(ours, (x.T @ x).toarray(), atol=1e-5)


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_the_lower_triangle_is_mirrored_in_bands(block: int) -> None:
    from recae.models.rankers import _mirror_lower

    rng = np.random.default_rng(block)
    full = rng.random((7, 7)).astype(np.float32)
    full = full + full.T
    lower_only = np.asfortranarray(np.tril(full) + np.triu(rng.random((7, 7)), k=1).astype(np.float32))
    _mirror_lower(lower_only, block=block)
    assert np.array_equal(lower_only, full)


def test_the_lambda_search_chooses_alike_with_and_without_the_cached_gram(monkeypatch: pytest.MonkeyPatch) -> None:
    from recae.models import rankers

    ratings = planted_clusters(seed=7)
    cached, cached_search = train_ease(ratings, seed=1)
    monkeypatch.setattr(rankers, "GRAM_CACHE_BYTES", 0)  # a catalogue too big to keep a second Gram matrix
    recomputed, search = train_ease(ratings, seed=1)
    assert cached.lam == recomputed.lam
    assert [t["lambda"] for t in search["trials"]] == [t["lambda"] for t in cached_search["trials"]]
    assert np.allclose(cached.weights, recomputed.weights, atol=1e-6)
