"""Blending an item AE with a user-AE partner: the fitted weight, the mixed predictions, files and fold-in."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recae.artifacts.blending import blend
from recae.artifacts.model_files import load_model, save_model
from recae.artifacts.train_config import TrainConfig
from recae.evaluation.splits import random_split
from recae.models.build import model_config
from recae.serving.foldin import fold_in_scores
from recae.training.blend import blend_weight
from recae.training.train import train_split
from tests.support.synthetic import planted_low_rank


def test_blend_weight_recovers_a_planted_mix() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(3, 1, 5000), rng.normal(3, 1, 5000)
    truth = 0.7 * a + 0.3 * b + rng.normal(0, 0.05, 5000)
    assert blend_weight(a, b, truth) == pytest.approx(0.7, abs=0.01)


def test_blend_weight_stays_in_the_unit_interval() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(3, 1, 1000), rng.normal(3, 1, 1000)
    assert blend_weight(a, b, a + 0.5 * (a - b)) == 1.0  # least squares would say 1.5
    assert blend_weight(a, b, b - 0.5 * (a - b)) == 0.0  # least squares would say -0.5


def test_blend_weight_falls_back_to_the_main_model_when_there_is_nothing_to_fit() -> None:
    same = np.array([3.0, 4.0, 2.0])
    assert blend_weight(same, same.copy(), np.array([1.0, 5.0, 3.0])) == 1.0
    assert blend_weight(np.zeros(0), np.zeros(0), np.zeros(0)) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        blend_weight(np.zeros(3), np.zeros(2), np.zeros(3))


def test_blend_is_the_convex_mix_in_the_main_dtype() -> None:
    a = np.array([1.0, 5.0], np.float32)
    b = np.array([5.0, 1.0], np.float32)
    mixed = blend(a, b, 0.25)
    assert mixed.dtype == np.float32 and np.allclose(mixed, [4.0, 2.0])


@pytest.fixture(scope="module")
def blended_run():  # type: ignore[no-untyped-def]
    observed = planted_low_rank(n_users=250, n_movies=150, density=0.3, noise=0.3, seed=5).observed
    split = random_split(observed, test_fraction=0.15, seed=0)
    cfg = TrainConfig(ensemble=2, partner_members=2, epochs=150, lr=2e-2, weight_decay=1.0, patience=10,
                      batch_ratings=1000, val_fraction=0.1, blend_fraction=0.1, threads=1,
                      blend_svd=False)  # the pair alone (tests/training/test_blend_svd.py: with the SVD)
    return split, train_split(split, model_config("denoising", hidden=(32,), input_dropout=0.2), cfg)


def test_training_blends_an_item_ensemble_with_a_user_partner(blended_run) -> None:  # type: ignore[no-untyped-def]
    split, run = blended_run
    trained, metrics = run.trained, run.metrics
    assert trained.orientation == "item" and trained.partner is not None and trained.partner.orientation == "user"
    assert trained.partner.model_config.hidden == (64,)  # two merged partner members
    assert 0.0 < trained.blend_weight < 1.0 and metrics["blend_weight"] == pytest.approx(trained.blend_weight)
    rows, cols, values = split.test.coo()
    main = replace(trained, partner=None).predict(rows, cols)
    partner = trained.partner.predict(rows, cols)
    blended = trained.predict(rows, cols)
    w = trained.blend_weight
    assert np.allclose(blended, w * main + (1 - w) * partner, atol=1e-5)

    def rmse(p: np.ndarray) -> float:
        return float(np.sqrt(np.mean((p - values) ** 2)))

    # planted data, measured: main 0.481, partner 0.549, blend 0.465 (the mix beats both)
    assert rmse(blended) < min(rmse(main), rmse(partner))
    assert metrics["test_rmse"] == pytest.approx(rmse(blended), rel=1e-5)
    # on validation too (measured 0.469 against 0.515 and 0.563): the weight is fitted there
    assert metrics["val_rmse"] < min(metrics["main_val_rmse"], metrics["partner_val_rmse"])


def test_a_blended_model_scores_rows_like_it_predicts_pairs(blended_run) -> None:  # type: ignore[no-untyped-def]
    _, run = blended_run
    trained = run.trained
    n_movies = trained.index.n_movies
    rows = np.array([0, 7, 7, 249])
    scores = trained.score_rows(rows)
    assert np.allclose(trained.predict(np.repeat(rows, n_movies), np.tile(np.arange(n_movies), 4)),
                       scores.reshape(-1), atol=1e-5)


def test_a_blended_model_round_trips_through_its_files(blended_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, run = blended_run
    trained = run.trained
    meta = save_model(trained, tmp_path / "v", version="v")
    assert meta["partner"]["model_config"]["orientation"] == "user"
    loaded = load_model(tmp_path / "v")
    assert loaded.blend_weight == trained.blend_weight and loaded.partner is not None
    assert loaded.partner.model_config == trained.partner.model_config  # type: ignore[union-attr]
    # same weights, memory of another alignment: equal up to float32 rounding (see test_artifacts)
    np.testing.assert_allclose(loaded.score_rows(np.arange(250)), trained.score_rows(np.arange(250)), rtol=0,
                               atol=1e-5)


def test_fold_in_mixes_both_models_fold_ins(blended_run) -> None:  # type: ignore[no-untyped-def]
    _, run = blended_run
    trained = run.trained
    ratings = {int(trained.index.movie_ids[j]): float(r) for j, r in [(0, 5.0), (3, 1.0), (10, 4.0)]}
    alone = fold_in_scores(replace(trained, partner=None), ratings)
    partner = fold_in_scores(trained.partner, ratings)  # type: ignore[arg-type]
    both = fold_in_scores(trained, ratings)
    w = trained.blend_weight
    assert np.allclose(both, w * alone + (1 - w) * partner, atol=1e-5)
    assert not np.allclose(both, alone, atol=1e-3)


def test_fit_blend_recovers_the_weight_and_scores_it_on_ratings_it_was_not_fitted_on() -> None:
    from recae.training.blend import fit_blend

    rng = np.random.default_rng(3)
    a, b = rng.normal(3, 1, 4000), rng.normal(3, 1, 4000)
    truth = 0.7 * a + 0.3 * b + rng.normal(0, 0.1, 4000)
    fitted = fit_blend(a, b, truth, seed=0)
    assert fitted.weight == pytest.approx(0.7, abs=0.01)
    assert fitted.main_rmse == pytest.approx(float(np.sqrt(np.mean((a - truth) ** 2))))
    # each half scored with the other half's weight: the noise level, a little above the in-sample fit
    in_sample = float(np.sqrt(np.mean((blend(a, b, fitted.weight) - truth) ** 2)))
    assert 0.09 < fitted.cross_fitted_rmse < 0.11 and fitted.cross_fitted_rmse == pytest.approx(in_sample, rel=0.02)
    assert fitted.cross_fitted_rmse < min(fitted.main_rmse, fitted.partner_rmse)


def test_no_member_and_no_partner_trains_on_the_blend_carve() -> None:
    """Changing only the blend carve's ratings moves the blend weight but no trained weight: the weight is fitted
    out of fold for the ensemble that ships. Same process, deterministic kernels, one thread: exact comparison."""
    import torch

    from recae.evaluation.splits import Split
    from recae.store.matrix import RatingMatrix
    from recae.training.ensemble import blend_carve

    observed = planted_low_rank(n_users=90, n_movies=60, density=0.3, noise=0.3, seed=8).observed
    split = random_split(observed, test_fraction=0.1, seed=0)
    cfg = TrainConfig(ensemble=2, partner_members=1, epochs=6, lr=2e-2, weight_decay=1.0, patience=10,
                      batch_ratings=400, blend_fraction=0.15, threads=1, deterministic=True, ranker="none",
                      blend_svd=False)
    _, blend_part = blend_carve(split.train, cfg)
    in_blend = np.isin(split.train.row_of_each_rating() * 1000 + split.train.csr.indices,
                       blend_part.row_of_each_rating() * 1000 + blend_part.csr.indices)
    values = split.train.csr.data.copy()
    values[in_blend] = 6.0 - values[in_blend]  # the blend carve's ratings turned upside down
    train = split.train
    flipped = RatingMatrix._from_csr_parts(values, train.csr.indices, train.csr.indptr, train.timestamps, train.index)
    config = model_config("denoising", hidden=(16,), input_dropout=0.2)
    before = train_split(split, config, cfg).trained
    after = train_split(Split(split.spec, flipped, split.test), config, cfg).trained
    pairs = ((before.module, after.module), (before.partner.module, after.partner.module))  # type: ignore[union-attr]
    for ours, theirs in pairs:
        for name, tensor in ours.state_dict().items():
            assert torch.equal(tensor, theirs.state_dict()[name]), name
    assert before.blend_weight != after.blend_weight
