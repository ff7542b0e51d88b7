"""The RBM for collaborative filtering on a planted rating set, and its place behind the scoring contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recae.artifacts.model_files import load_model, save_model
from recae.artifacts.train_config import TrainConfig
from recae.artifacts.trained_model import TrainedModel
from recae.errors import TrainingError
from recae.evaluation.baselines import GlobalMean
from recae.evaluation.splits import holdout_validation
from recae.models.batches import oriented_csr, sparse_rows
from recae.models.build import model_config
from recae.models.rbm_cf import RatingRBM, rating_levels
from recae.serving.foldin import fold_in_scores
from recae.store.matrix import IdIndex, RatingMatrix
from recae.training.train import fit, test_metrics


def planted_taste(n_users: int = 120, n_movies: int = 60, density: float = 0.35, seed: int = 0) -> RatingMatrix:
    """Two kinds of user and two kinds of film: a user rates films of their kind 4-5 and the others 1-2."""
    rng = np.random.default_rng(seed)
    user_kind, movie_kind = rng.integers(0, 2, n_users), rng.integers(0, 2, n_movies)
    mask = rng.random((n_users, n_movies)) < density
    rows, cols = np.nonzero(mask)
    liked = user_kind[rows] == movie_kind[cols]
    values = np.where(liked, rng.choice([4.0, 5.0], rows.size), rng.choice([1.0, 2.0], rows.size)).astype(np.float32)
    index = IdIndex(np.arange(1, n_users + 1, dtype=np.int64), np.arange(1, n_movies + 1, dtype=np.int64))
    return RatingMatrix.from_positions(rows, cols, values, None, index)


def _train(orientation: str, seed: int = 0, **settings: object) -> tuple[TrainedModel, RatingMatrix, RatingMatrix]:
    matrix = planted_taste(seed=seed)
    train, test = holdout_validation(matrix, 0.15, seed + 100)
    fit_part, val_part = holdout_validation(train, 0.1, seed)
    cfg = model_config("rbm", orientation=orientation, hidden=(20,), cd_lr=0.1, **settings)
    result = fit(fit_part, val_part, cfg, TrainConfig(epochs=40, patience=8, seed=seed, ensemble=1,
                                                       partner_members=0, batch_ratings=200))
    return TrainedModel.from_fit(result.module, train), train, test


@pytest.mark.parametrize(("orientation", "conditional"), [("item", False), ("user", False), ("item", True)])
def test_rbm_beats_the_global_mean_clearly_on_planted_tastes(orientation: str, conditional: bool) -> None:
    """The global mean scores ~1.6 here (ratings are 1-2 or 4-5); knowing the kinds leaves ~0.5."""
    trained, train, test = _train(orientation, conditional=conditional)
    ours = test_metrics(trained, test)["test_rmse"]
    rows, cols, values = test.coo()
    mean_rmse = float(np.sqrt(np.mean((GlobalMean().fit(train).predict(rows, cols) - values) ** 2)))
    assert mean_rmse > 1.3
    assert ours < 0.6 * mean_rmse


def test_scoring_paths_agree_and_survive_a_save_and_load(tmp_path: Path) -> None:
    trained, train, _ = _train("item")
    rows = np.arange(5)
    dense = trained.score_rows(rows)  # (5, n_movies) through unit_scores
    cols = np.tile(np.arange(train.index.n_movies), rows.size)
    pairs = trained.predict(np.repeat(rows, train.index.n_movies), cols).reshape(rows.size, -1)  # output_at
    assert np.allclose(dense, pairs, atol=1e-4)
    save_model(trained, tmp_path / "v1", version="v1")
    loaded = load_model(tmp_path / "v1")
    assert loaded.model_config.rating_levels == (1.0, 2.0, 4.0, 5.0)
    assert np.allclose(loaded.score_rows(rows), dense, atol=1e-5)


@pytest.mark.parametrize(("orientation", "conditional"), [("item", False), ("user", False), ("item", True),
                                                          ("user", True)])
def test_fold_in_follows_a_new_users_taste(orientation: str, conditional: bool) -> None:
    """A new user who loves films of one kind and hates the other gets that kind predicted higher."""
    trained, train, _ = _train(orientation, conditional=conditional)
    csr = train.csr
    film_means = np.asarray(csr.sum(0)).ravel() / np.maximum(np.diff(csr.tocsc().indptr), 1)
    # the planted kind of a film: which group of users likes it (the correlation of ratings with user 0's)
    user0 = csr[0].toarray().ravel()
    liked0 = set(np.flatnonzero(user0 >= 4)) or {int(np.argmax(film_means))}
    hated0 = set(np.flatnonzero((user0 > 0) & (user0 <= 2)))
    ratings = {int(train.index.movie_ids[c]): 5.0 for c in sorted(liked0)[:6]}
    ratings.update({int(train.index.movie_ids[c]): 1.0 for c in sorted(hated0)[:6]})
    scores = fold_in_scores(trained, ratings)
    assert scores.shape == (train.index.n_movies,)
    assert scores[sorted(liked0)].mean() > scores[sorted(hated0)].mean() + 1.5


def test_rating_levels_come_from_the_data_and_a_continuous_scale_is_refused() -> None:
    assert rating_levels(np.array([3.0, 1.0, 5.0, 3.0])) == (1.0, 3.0, 5.0)
    with pytest.raises(TrainingError, match="discrete rating scale"):
        rating_levels(np.linspace(1, 5, 100))


def test_hidden_input_reads_only_observed_ratings() -> None:
    """p(h | V) sums the weights of the observed (unit, rating) pairs: no term for a missing rating."""
    import scipy.sparse as sp

    cfg = model_config("rbm", hidden=(3,), rating_levels=(1.0, 2.0, 3.0))
    torch.manual_seed(0)
    rbm = RatingRBM(cfg, 4, 4)
    csr = sp.csr_matrix((np.array([3.0, 1.0], np.float32), np.array([0, 2]), np.array([0, 2])), shape=(1, 4))
    with torch.no_grad():
        got = rbm.hidden_input(sparse_rows(csr))[0]
        expected = rbm.hidden_bias + rbm.weight[2, 0] + rbm.weight[0, 2]
    assert torch.allclose(got, expected)


def test_cd_statistics_touch_only_units_the_batch_rated() -> None:
    planted = planted_taste(n_users=30, n_movies=20, seed=1)
    data = oriented_csr(planted, "item")
    cfg = model_config("rbm", hidden=(4,), rating_levels=(1.0, 2.0, 4.0, 5.0))
    rbm = RatingRBM(cfg, data.shape[1], data.shape[1])
    rows = sparse_rows(data, np.array([0]))
    (grad_w, grad_b, _, grad_d), _ = rbm.cd_gradients(rows, steps=2)  # the default rbm is conditional
    unrated = np.setdiff1d(np.arange(data.shape[1]), data[0].indices)
    assert torch.all(grad_w[:, unrated] == 0) and torch.all(grad_b[:, unrated] == 0)
    assert torch.all(grad_d[unrated] == 0) and grad_d[data[0].indices].abs().max() > 0


def test_conditional_hidden_input_adds_d_of_every_rated_unit() -> None:
    """p(h | V, r) adds D[u] for every rated unit u, including pairs in r whose values the visibles lack."""
    import scipy.sparse as sp

    cfg = model_config("rbm", hidden=(3,), rating_levels=(1.0, 2.0, 3.0), conditional=True)
    torch.manual_seed(0)
    rbm = RatingRBM(cfg, 4, 4)
    with torch.no_grad():
        rbm.cond_weight.normal_()
    csr = sp.csr_matrix((np.array([3.0, 1.0], np.float32), np.array([0, 2]), np.array([0, 2])), shape=(1, 4))
    rated = sp.csr_matrix((np.ones(3, np.float32), np.array([0, 2, 3]), np.array([0, 3])), shape=(1, 4))
    with torch.no_grad():
        own = rbm.hidden_input(sparse_rows(csr))[0]
        wider = rbm.hidden_input(sparse_rows(csr), rated=sparse_rows(rated))[0]
        plain = rbm.hidden_bias + rbm.weight[2, 0] + rbm.weight[0, 2]
    assert torch.allclose(own, plain + rbm.cond_weight[0] + rbm.cond_weight[2])
    assert torch.allclose(wider, own + rbm.cond_weight[3])


def test_conditional_gradient_is_the_level_sum_of_w_when_r_is_the_visible_pattern() -> None:
    """With r = the rated visibles, dD[u] = sum_k dW[k, u] (both phases see v summing to 1 over levels at u)."""
    data = oriented_csr(planted_taste(n_users=30, n_movies=20, seed=3), "item")
    cfg = model_config("rbm", hidden=(5,), rating_levels=(1.0, 2.0, 4.0, 5.0), conditional=True)
    torch.manual_seed(1)
    rbm = RatingRBM(cfg, data.shape[1], data.shape[1])
    (grad_w, _, _, grad_d), _ = rbm.cd_gradients(sparse_rows(data, np.arange(6)), steps=2)
    assert grad_d.abs().max() > 1e-3
    assert torch.allclose(grad_d, grad_w.sum(0), atol=1e-5)


def planted_rated_kinds(seed: int) -> RatingMatrix:
    """Users rate films of their own kind five times as often as others (liked 4-5, else 1-2): who rated a film
    tells its kind."""
    rng = np.random.default_rng(seed)
    n_users, n_movies = 300, 150
    user_kind, movie_kind = rng.integers(0, 2, n_users), rng.integers(0, 2, n_movies)
    same = user_kind[:, None] == movie_kind[None, :]
    rows, cols = np.nonzero(rng.random((n_users, n_movies)) < np.where(same, 0.2, 0.04))
    liked = same[rows, cols]
    values = np.where(liked, rng.choice([4.0, 5.0], rows.size), rng.choice([1.0, 2.0], rows.size)).astype(np.float32)
    index = IdIndex(np.arange(1, n_users + 1, dtype=np.int64), np.arange(1, n_movies + 1, dtype=np.int64))
    return RatingMatrix.from_positions(rows, cols, values, None, index)


def _rated_pairs_rmse(seed: int, conditional: bool) -> float:
    from recae.training.rbm import fit_rating_rbm

    known, asked = holdout_validation(planted_rated_kinds(seed), 0.6, seed + 100)  # asked: rated, values unknown
    fit_part, val_part = holdout_validation(known, 0.1, seed)
    cfg = model_config("rbm", hidden=(20,), cd_lr=0.1, conditional=conditional)
    result = fit_rating_rbm(fit_part, val_part, cfg, TrainConfig(epochs=80, patience=20, seed=seed, ensemble=1,
                                                                 partner_members=0, batch_ratings=300),
                            torch.device("cpu"), rated=asked if conditional else None)
    inputs, targets = oriented_csr(known, "item"), oriented_csr(asked, "item")
    every = np.arange(inputs.shape[0])
    rated = inputs + targets  # r: the known pairs and the asked ones (no values read from these)
    with torch.no_grad():
        predicted = result.module.predict_at(sparse_rows(inputs, every), sparse_rows(targets, every),
                                             sparse_rows(rated, every) if conditional else None)
    truth = sparse_rows(targets, every).values
    return float(torch.sqrt(((predicted.clamp(1.0, 5.0) - truth) ** 2).mean()))


def test_conditional_rbm_reads_which_pairs_were_rated() -> None:
    """The ICML 2007 case: 60% of the pairs are known to be rated but their values are not given. Who rated a film
    tells its kind, and the conditional RBM reads it through D . r. Measured on seeds 0-7 (2 cores, shared):
    plain 0.92-1.31, conditional 0.87-0.97, ahead by 0.047-0.37 on every seed."""
    plain, conditional = _rated_pairs_rmse(0, False), _rated_pairs_rmse(0, True)
    assert conditional < plain - 0.025
    assert conditional < 1.05


def test_rated_pairs_need_a_conditional_rbm_and_conditional_needs_the_rbm() -> None:
    from recae.training.rbm import fit_rating_rbm

    matrix = planted_taste(n_users=20, n_movies=10)
    with pytest.raises(TrainingError, match="conditional"):
        fit_rating_rbm(matrix, None, model_config("rbm", hidden=(4,), conditional=False), TrainConfig(epochs=1),
                       torch.device("cpu"), rated=matrix)
    with pytest.raises(TrainingError, match="conditional applies to the rbm model only"):
        model_config("stacked", conditional=True).validate()


def test_gibbs_steps_rise_along_the_papers_schedule() -> None:
    from recae.models.rbm_cf import cd_steps_at

    every_3 = model_config("rbm", cd_steps_every=3)
    assert [cd_steps_at(every_3, e) for e in range(1, 14)] == [1, 1, 1, 3, 3, 3, 5, 5, 5, 9, 9, 9, 9]
    assert [cd_steps_at(model_config("rbm", cd_steps=3, cd_steps_every=2), e) for e in (1, 3, 5, 9)] == [3, 5, 9, 9]
    assert {cd_steps_at(model_config("rbm", cd_steps=2), e) for e in range(1, 50)} == {2}


def test_the_auto_batch_holds_about_400_vectors_and_at_least_8_batches_an_epoch() -> None:
    from recae.training.rbm import auto_batch_ratings

    assert auto_batch_ratings(855_000, 6_000) == 57_000  # 400 users' worth: 15 batches an epoch
    assert auto_batch_ratings(855_000, 3_700) == 92_433  # 400 films' worth: 9.25 batches an epoch
    assert auto_batch_ratings(76_000, 943) == 9_500  # 400 users would be 32k: at least 8 batches an epoch
    assert auto_batch_ratings(500, 20) == 8_192 and auto_batch_ratings(10**9, 10**5) == 131_072
