"""The films' genres and eras stacked beside the autoencoders and the SVD (``TrainConfig.blend_side``): the weights
fitted on the blend carve, what the side part reads, fold-in, and data without genres training as before."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from recae.artifacts.train_config import TrainConfig
from recae.evaluation.splits import Split, random_split
from recae.models.build import model_config
from recae.models.side_part import film_groups
from recae.serving.foldin import fold_in_scores
from recae.store.matrix import RatingMatrix
from recae.training.train import train_split
from tests.support.synthetic import planted_tastes

CFG = TrainConfig(ensemble=1, partner_members=1, epochs=8, lr=2e-2, weight_decay=1.0, patience=10, batch_ratings=800,
                  blend_fraction=0.15, threads=1, deterministic=True, ranker="none")
MODEL = model_config("denoising", hidden=(8,), input_dropout=0.2)


@pytest.fixture(scope="module")
def tastes():  # type: ignore[no-untyped-def]
    matrix, genres, _ = planted_tastes(seed=2, n_users=200, n_movies=60)
    split = random_split(matrix, test_fraction=0.1, seed=0)
    groups = film_groups(genres, [1995] * len(genres))
    return split, groups, train_split(split, MODEL, CFG, groups=groups)


def test_the_side_part_is_stacked_fifth_and_wins_where_tastes_follow_genres(tastes) -> None:  # type: ignore[no-untyped-def]
    split, groups, run = tastes
    trained, metrics = run.trained, run.metrics
    assert trained.side is not None and trained.side.names == ("Comedy", "Drama", "era:1995-1999")
    w = np.asarray(trained.mix_weights)
    keys = ("blend_weight_main", "blend_weight_partner", "blend_weight_svd", "blend_weight_side", "blend_intercept")
    assert [metrics[k] for k in keys] == pytest.approx(list(w), abs=1e-6)
    assert metrics["blend_weight_side"] > 0.2  # the planted taste is what the networks learn slowest
    rows, cols, _ = split.test.coo()
    parts = [replace(trained, partner=None, svd=None, side=None).predict(rows, cols),
             trained.partner.predict(rows, cols), trained.svd.predict(rows, cols), trained.side.predict(rows, cols)]
    expected = np.clip(sum(wj * pj for wj, pj in zip(w, parts)) + w[-1], *trained.rating_scale)
    np.testing.assert_allclose(trained.predict(rows, cols), expected, atol=1e-5)
    without = train_split(split, MODEL, replace(CFG, blend_side=False), groups=groups)
    assert without.trained.side is None and len(without.trained.mix_weights) == 4
    assert "blend_weight_side" not in without.metrics
    assert run.metrics["val_rmse"] < without.metrics["val_rmse"] - 0.01  # cross-fitted on the blend carve


def test_data_without_genres_or_years_trains_as_before(tastes) -> None:  # type: ignore[no-untyped-def]
    split, groups, _ = tastes
    bare = film_groups([""] * groups.matrix.shape[0], [None] * groups.matrix.shape[0])
    for given in (None, bare):
        run = train_split(split, MODEL, CFG, groups=given)
        assert run.trained.side is None and len(run.trained.mix_weights) == 4


def test_a_new_users_fold_in_mixes_the_side_parts_fold_in(tastes) -> None:  # type: ignore[no-untyped-def]
    _, _, run = tastes
    trained = run.trained
    w = trained.mix_weights
    cols, values = np.array([0, 2, 1, 3]), np.array([5.0, 5.0, 1.0, 1.5])  # loves comedies (even films)
    ratings = {int(trained.index.movie_ids[j]): float(r) for j, r in zip(cols, values)}
    others = fold_in_scores(replace(trained, side=None, mix_weights=(*w[:3], w[4])), ratings)  # all but the side
    side = trained.side.fold_in(cols, values)
    assert np.all(side[::2] > 0) and np.all(side[1::2] < 0)
    # the stack is affine before its clip: adding the side column is adding w_side * side wherever nothing clips
    mixed = fold_in_scores(trained, ratings)
    inside = (others > 1.2) & (others < 4.8) & (mixed > 1.0) & (mixed < 5.0)
    assert inside.sum() > 20
    np.testing.assert_allclose(mixed[inside], others[inside] + w[3] * side[inside], atol=1e-4)


def test_the_side_part_reads_neither_the_blend_carve_nor_the_test_part(tastes) -> None:  # type: ignore[no-untyped-def]
    """Blend-carve and test values turned upside down move no affinity and no bias (exact: same process, one
    thread); the weights, fitted on the blend carve, move."""
    from recae.training.ensemble import blend_carve

    split, groups, before = tastes
    train, test = split.train, split.test
    _, blend_part = blend_carve(train, CFG)
    keys = train.row_of_each_rating() * 1000 + train.csr.indices
    in_blend = np.isin(keys, blend_part.row_of_each_rating() * 1000 + blend_part.csr.indices)
    values = train.csr.data.copy()
    values[in_blend] = 6.0 - values[in_blend]
    flipped = RatingMatrix._from_csr_parts(values, train.csr.indices, train.csr.indptr, train.timestamps, train.index)
    test_flipped = RatingMatrix._from_csr_parts(6.0 - test.csr.data, test.csr.indices, test.csr.indptr,
                                                test.timestamps, test.index)
    after = train_split(Split(split.spec, flipped, test_flipped), MODEL, CFG, groups=groups).trained
    ours, theirs = before.trained.side, after.side
    assert ours is not None and theirs is not None and ours.mu == theirs.mu
    for name in ("item_bias", "user_affinity", "groups"):
        assert np.array_equal(getattr(ours, name), getattr(theirs, name)), name
    assert before.trained.mix_weights != after.mix_weights


def test_a_trained_model_with_its_side_part_saves_and_loads(tastes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The side part is fitted on the SVD part's biases: it must own its copy (safetensors refuses shared memory)."""
    from recae.artifacts.model_files import load_model, save_model

    split, _, run = tastes
    meta = save_model(run.trained, tmp_path / "v", version="v")
    assert meta["side"]["groups"] == ["Comedy", "Drama", "era:1995-1999"]
    loaded = load_model(tmp_path / "v")
    rows, cols, _ = split.test.coo()
    np.testing.assert_allclose(loaded.predict(rows, cols), run.trained.predict(rows, cols), atol=1e-5)
