"""A Soft-Impute SVD as the blend's third component (``TrainConfig.blend_svd``): the fitted weights, the mixed
predictions, what the SVD reads, files, fold-in and the command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from recae.artifacts.blending import mix
from recae.artifacts.model_files import META_FILE, WEIGHTS_FILE, file_record, load_model, read_tensors, save_model
from recae.artifacts.train_config import TrainConfig
from recae.cli import cli
from recae.errors import CorruptArtifactError
from recae.evaluation.splits import Split, random_split
from recae.models.build import model_config
from recae.models.svd_part import fit_svd_part
from recae.serving.foldin import fold_in_scores
from recae.store.matrix import IdIndex, RatingMatrix
from recae.training.blend import fit_mix, stacking_weights
from recae.training.train import train_split
from tests.support.synthetic import planted_low_rank

CFG = TrainConfig(ensemble=2, partner_members=1, epochs=6, lr=2e-2, weight_decay=1.0, patience=10, batch_ratings=400,
                  blend_fraction=0.15, threads=1, deterministic=True, ranker="none", blend_svd=True)
MODEL = model_config("denoising", hidden=(16,), input_dropout=0.2)


def test_stacking_weights_recover_a_planted_affine_mix() -> None:
    rng = np.random.default_rng(0)
    p = rng.normal(3, 1, (6000, 3))
    truth = p @ np.array([0.9, 0.3, 0.2]) - 0.8 + rng.normal(0, 0.05, 6000)  # stretched: weights sum to 1.4
    np.testing.assert_allclose(stacking_weights(p, truth), [0.9, 0.3, 0.2, -0.8], atol=0.01)
    # the right component gets the weight whichever column holds it
    np.testing.assert_allclose(stacking_weights(p[:, [2, 0, 1]], truth), [0.2, 0.9, 0.3, -0.8], atol=0.01)
    scale = (-100.0, 100.0)
    fitted = fit_mix([p[:, 0], p[:, 1], p[:, 2]], truth, scale, seed=0)
    assert fitted.weights == pytest.approx(tuple(stacking_weights(p, truth)))
    assert 0.045 < fitted.cross_fitted_rmse < 0.055 < min(fitted.rmses)  # the noise level, out of fold


def test_the_mix_is_clipped_to_the_scale_and_degenerate_data_keeps_the_first_component() -> None:
    rng = np.random.default_rng(1)
    p = rng.normal(3, 1, (3000, 3))
    w = np.array([1.2, 0.1, 0.0, -0.5])
    mixed = mix([p[:, 0], p[:, 1], p[:, 2]], w, (1.0, 5.0))
    np.testing.assert_allclose(mixed, np.clip(p @ w[:3] + w[3], 1.0, 5.0), atol=1e-12)
    assert mixed.min() == 1.0 and mixed.max() == 5.0  # the stretch leaves the scale somewhere: clipped there
    same = np.column_stack([p[:, 0], p[:, 0], p[:, 2]])  # a repeated component: the minimum-norm solution
    w = stacking_weights(same, 0.5 * p[:, 0] + 0.5 * p[:, 2])
    np.testing.assert_allclose(w, [0.25, 0.25, 0.5, 0.0], atol=1e-9)
    assert list(stacking_weights(np.zeros((0, 3)), np.zeros(0))) == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="shapes differ"):
        stacking_weights(np.zeros((3, 2)), np.zeros(2))


def planted_split() -> Split:
    observed = planted_low_rank(n_users=90, n_movies=60, density=0.3, noise=0.3, seed=8).observed
    return random_split(observed, test_fraction=0.1, seed=0)


@pytest.fixture(scope="module")
def svd_run():  # type: ignore[no-untyped-def]
    split = planted_split()
    return split, train_split(split, MODEL, CFG)


def test_training_mixes_main_partner_and_svd_with_weights_fitted_on_the_blend_carve(svd_run) -> None:  # type: ignore[no-untyped-def]
    split, run = svd_run
    trained, metrics = run.trained, run.metrics
    assert trained.svd is not None and trained.partner is not None
    w = np.asarray(trained.mix_weights)
    assert w.shape == (4,) and np.all(np.isfinite(w))
    keys = ("blend_weight_main", "blend_weight_partner", "blend_weight_svd", "blend_intercept")
    assert [metrics[k] for k in keys] == pytest.approx(list(w), abs=1e-6)
    assert {"svd_val_rmse", "main_val_rmse", "partner_val_rmse", "pair_val_rmse", "val_rmse"} <= set(metrics)
    assert 0.0 <= trained.blend_weight <= 1.0  # the pair's own weight, kept for readers of the two-model blend
    rows, cols, _ = split.test.coo()
    parts = [replace(trained, partner=None, svd=None).predict(rows, cols), trained.partner.predict(rows, cols),
             trained.svd.predict(rows, cols)]
    expected = np.clip(sum(wj * pj for wj, pj in zip(w, parts)) + w[3], *trained.rating_scale)
    np.testing.assert_allclose(trained.predict(rows, cols), expected, atol=1e-5)
    n_movies = trained.index.n_movies
    users = np.array([0, 7, 7, 80])
    np.testing.assert_allclose(trained.score_rows(users).reshape(-1),
                               trained.predict(np.repeat(users, n_movies), np.tile(np.arange(n_movies), 4)), atol=1e-5)


def test_the_two_model_path_is_unchanged_when_blend_svd_is_off(svd_run) -> None:  # type: ignore[no-untyped-def]
    import torch

    split, with_svd = svd_run
    without = train_split(split, MODEL, replace(CFG, blend_svd=False))
    assert without.trained.svd is None and without.trained.mix_weights == ()
    assert not any("svd" in key for key in without.metrics)
    for ours, theirs in ((without.trained.module, with_svd.trained.module),
                         (without.trained.partner.module, with_svd.trained.partner.module)):  # type: ignore[union-attr]
        for name, tensor in ours.state_dict().items():
            assert torch.equal(tensor, theirs.state_dict()[name]), name


def test_without_a_partner_the_main_ensemble_and_the_svd_are_mixed_and_round_trip(tmp_path: Path) -> None:
    split = planted_split()
    run = train_split(split, MODEL, replace(CFG, partner_members=0))
    trained, metrics = run.trained, run.metrics
    assert trained.partner is None and trained.svd is not None
    w = np.asarray(trained.mix_weights)
    assert w.shape == (3,) and np.all(np.isfinite(w))
    assert [metrics[k] for k in ("blend_weight_main", "blend_weight_svd", "blend_intercept")] == pytest.approx(
        list(w), abs=1e-6)
    assert "blend_weight_partner" not in metrics and "pair_val_rmse" not in metrics and metrics["n_blend"] > 0
    rows, cols, _ = split.test.coo()
    parts = [replace(trained, svd=None).predict(rows, cols), trained.svd.predict(rows, cols)]
    expected = np.clip(w[0] * parts[0] + w[1] * parts[1] + w[2], *trained.rating_scale)
    np.testing.assert_allclose(trained.predict(rows, cols), expected, atol=1e-5)
    save_model(trained, tmp_path / "v", version="v")
    loaded = load_model(tmp_path / "v")
    assert loaded.partner is None and loaded.mix_weights == trained.mix_weights
    np.testing.assert_allclose(loaded.predict(rows, cols), trained.predict(rows, cols), atol=1e-5)
    ratings = {int(trained.index.movie_ids[j]): float(r) for j, r in [(0, 5.0), (3, 1.0)]}
    folded = [fold_in_scores(replace(trained, svd=None), ratings), trained.svd.fold_in(np.array([0, 3]), [5.0, 1.0])]
    np.testing.assert_allclose(fold_in_scores(trained, ratings),
                               np.clip(w[0] * folded[0] + w[1] * folded[1] + w[2], *trained.rating_scale), atol=1e-5)


def test_the_svd_reads_neither_the_blend_carve_nor_the_test_part(svd_run) -> None:  # type: ignore[no-untyped-def]
    """Changing only blend-carve and test values moves no SVD factor, no bias and no network weight; the weights
    (fitted on the blend carve) move. Same process, deterministic kernels, one thread: exact comparison."""
    from recae.training.ensemble import blend_carve

    split, before = svd_run
    train = split.train
    _, blend_part = blend_carve(train, CFG)
    keys = train.row_of_each_rating() * 1000 + train.csr.indices
    in_blend = np.isin(keys, blend_part.row_of_each_rating() * 1000 + blend_part.csr.indices)
    values = train.csr.data.copy()
    values[in_blend] = 6.0 - values[in_blend]  # the blend carve's ratings turned upside down
    flipped = RatingMatrix._from_csr_parts(values, train.csr.indices, train.csr.indptr, train.timestamps, train.index)
    test = split.test
    test_flipped = RatingMatrix._from_csr_parts(6.0 - test.csr.data, test.csr.indices, test.csr.indptr,
                                                test.timestamps, test.index)
    after = train_split(Split(split.spec, flipped, test_flipped), MODEL, CFG).trained
    ours, theirs = before.trained.svd, after.svd
    assert ours is not None and theirs is not None and ours.mu == theirs.mu
    for name in ("user_bias", "item_bias", "user_factors", "item_factors"):
        assert np.array_equal(getattr(ours, name), getattr(theirs, name)), name
    assert before.trained.mix_weights != after.mix_weights


def test_a_model_with_an_svd_part_round_trips_and_an_old_folder_loads(svd_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, run = svd_run
    trained = run.trained
    meta = save_model(trained, tmp_path / "v", version="v")
    assert meta["svd"]["weights"] == list(trained.mix_weights)
    assert any(k.startswith("svd/") for k in read_tensors(tmp_path / "v" / WEIGHTS_FILE))
    loaded = load_model(tmp_path / "v")
    assert loaded.mix_weights == trained.mix_weights and loaded.svd is not None
    users = np.arange(trained.index.n_users)
    np.testing.assert_allclose(loaded.score_rows(users), trained.score_rows(users), rtol=0, atol=1e-5)
    old = replace(trained, svd=None, mix_weights=(), blend_weight=0.6)  # what recae wrote before blend_svd
    meta = save_model(old, tmp_path / "old", version="old")
    assert "svd" not in meta and not any(k.startswith("svd/") for k in read_tensors(tmp_path / "old" / WEIGHTS_FILE))
    reloaded = load_model(tmp_path / "old")
    assert reloaded.svd is None and reloaded.blend_weight == 0.6
    np.testing.assert_allclose(reloaded.score_rows(users), old.score_rows(users), rtol=0, atol=1e-5)


def test_a_missing_svd_tensor_or_bad_svd_weights_are_one_line_corrupt_artifact_errors(svd_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    save_model(svd_run[1].trained, tmp_path / "v", version="v")
    folder = tmp_path / "v"
    meta = json.loads((folder / META_FILE).read_text())
    tensors = {k: v for k, v in read_tensors(folder / WEIGHTS_FILE).items() if k != "svd/item_factors"}
    save_file(tensors, str(folder / WEIGHTS_FILE))
    meta["files"][WEIGHTS_FILE] = file_record(folder / WEIGHTS_FILE)  # a consistent checksum: the tensor is missing
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CorruptArtifactError, match="weights do not match meta.json") as caught:
        load_model(folder)
    assert "\n" not in str(caught.value)
    save_model(svd_run[1].trained, tmp_path / "w", version="w")
    meta = json.loads((tmp_path / "w" / META_FILE).read_text())
    meta["svd"]["weights"] = [0.9, 0.9, -0.8]  # no intercept
    (tmp_path / "w" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CorruptArtifactError, match="svd weights") as caught:
        load_model(tmp_path / "w")
    assert "\n" not in str(caught.value)


def test_fold_in_of_a_new_user_beats_the_movie_means_and_mixes_the_three_fold_ins(svd_run) -> None:  # type: ignore[no-untyped-def]
    data = planted_low_rank(n_users=200, n_movies=100, rank=3, density=0.35, noise=0.1, seed=5)
    rows, cols, values = data.observed.coo()
    seen = rows < 160  # the SVD is fitted on the first 160 users; the last 40 are new
    index = IdIndex(data.observed.index.user_ids[:160], data.observed.index.movie_ids)
    train = RatingMatrix.from_positions(rows[seen], cols[seen], values[seen], None, index)
    svd = fit_svd_part(train)
    movie_means = np.asarray(train.csr.sum(0)).ravel() / np.maximum(np.diff(train.csr.tocsc().indptr), 1)
    rng = np.random.default_rng(1)
    errors_svd, errors_means = [], []
    for user in range(160, 200):
        rated = rng.choice(100, 35, replace=False)
        others = np.setdiff1d(np.arange(100), rated)
        scores = svd.fold_in(rated, data.full[user, rated])
        errors_svd.append(scores[others] - data.full[user, others])
        errors_means.append(movie_means[others] - data.full[user, others])
    rmse_svd = float(np.sqrt(np.mean(np.concatenate(errors_svd) ** 2)))
    rmse_means = float(np.sqrt(np.mean(np.concatenate(errors_means) ** 2)))
    # measured over planted seeds 5..10: ratio 0.63-0.68 (the training users' own unobserved entries: 0.65-0.70 RMSE)
    assert rmse_svd < 0.75 * rmse_means, (rmse_svd, rmse_means)
    no_ratings = svd.fold_in(np.zeros(0, np.int64), np.zeros(0))
    np.testing.assert_allclose(no_ratings, np.clip(svd.mu + svd.item_bias, *svd.scale), atol=1e-6)
    # the served model: its three parts' fold-ins mixed with its weights
    trained = svd_run[1].trained
    ratings = {int(trained.index.movie_ids[j]): float(r) for j, r in [(0, 5.0), (3, 1.0), (10, 4.0)]}
    parts = [fold_in_scores(replace(trained, partner=None, svd=None), ratings),
             fold_in_scores(trained.partner, ratings), trained.svd.fold_in(np.array([0, 3, 10]), [5.0, 1.0, 4.0])]
    w = trained.mix_weights
    expected = np.clip(sum(wj * pj for wj, pj in zip(w, parts)) + w[3], *trained.rating_scale)
    np.testing.assert_allclose(fold_in_scores(trained, ratings), expected, atol=1e-5)


def test_a_known_users_svd_fold_in_of_their_own_ratings_stays_near_their_stored_scores() -> None:
    observed = planted_low_rank(n_users=90, n_movies=60, density=0.3, noise=0.3, seed=8).observed
    svd = fit_svd_part(observed)
    rows, cols, values = observed.coo()
    gaps = np.array([np.sqrt(np.mean((svd.fold_in(cols[rows == u], values[rows == u])
                                      - svd.score_rows(np.array([u]))[0]) ** 2)) for u in range(90)])
    # ridge with Soft-Impute's lambda is its fixed point's user step, the bias refitted beside the factor: RMS gap
    # per user measured over planted seeds 8-10: median 0.001-0.007, largest 0.007-0.047 (on a 1-5 scale)
    assert np.median(gaps) < 0.02 and gaps.max() < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("partner_members", [1, 0])
def test_recae_train_with_blend_svd_in_the_config_file_end_to_end(tmp_path: Path, partner_members: int) -> None:
    planted = planted_low_rank(80, 40, seed=7).observed
    rows, cols, values = planted.coo()
    lines = "".join(f"{planted.index.user_ids[u]},{planted.index.movie_ids[m]},{r:g}\n"
                    for u, m, r in zip(rows, cols, np.clip(np.round(values * 2) / 2, 1, 5), strict=True))
    (tmp_path / "ratings.csv").write_text(lines)
    config = tmp_path / "run.toml"
    config.write_text("[model]\nhidden = [16]\n[train]\nepochs = 3\nensemble = 1\nthreads = 1\n"
                      f"partner_members = {partner_members}\nranker = \"none\"\nblend_svd = true\n")
    home = ["--home", str(tmp_path / "home")]
    assert CliRunner().invoke(cli, [*home, "ingest", "--ratings", str(tmp_path / "ratings.csv")]).exit_code == 0
    result = CliRunner().invoke(cli, [*home, "train", "--config", str(config), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    keys = ["blend_weight_main", *(["blend_weight_partner"] if partner_members else []), "blend_weight_svd",
            "blend_intercept", "svd_val_rmse"]
    assert all(np.isfinite(summary[k]) for k in keys), summary
    assert ("blend_weight_partner" in summary) == bool(partner_members)


def test_a_blend_svd_model_folds_new_users_in_far_better_than_the_movie_means() -> None:
    """The served mix (item AE, user AE, SVD) for 40 users it never saw, from 35 ratings each."""
    data = planted_low_rank(n_users=200, n_movies=100, rank=3, density=0.35, noise=0.1, seed=5)
    rows, cols, values = data.observed.coo()
    seen = rows < 160
    index = IdIndex(data.observed.index.user_ids[:160], data.observed.index.movie_ids)
    train = RatingMatrix.from_positions(rows[seen], cols[seen], values[seen], None, index)
    cfg = TrainConfig(ensemble=2, partner_members=1, epochs=60, lr=2e-2, weight_decay=0.05, patience=10,
                      batch_ratings=1024, blend_fraction=0.1, threads=1, ranker="none", blend_svd=True)
    no_test = train.subset(np.zeros(train.nnz, bool))
    trained = train_split(Split(planted_split().spec, train, no_test), model_config("denoising", hidden=(48,)),
                          cfg).trained
    movie_means = np.asarray(train.csr.sum(0)).ravel() / np.maximum(np.diff(train.csr.tocsc().indptr), 1)
    rng = np.random.default_rng(1)
    errors, errors_pair, errors_means = [], [], []
    for user in range(160, 200):
        rated = rng.choice(100, 35, replace=False)
        others = np.setdiff1d(np.arange(100), rated)
        fresh = {int(index.movie_ids[c]): float(data.full[user, c]) for c in rated}
        errors.append(fold_in_scores(trained, fresh)[others] - data.full[user, others])
        errors_pair.append(fold_in_scores(replace(trained, svd=None, mix_weights=()), fresh)[others]
                           - data.full[user, others])
        errors_means.append(movie_means[others] - data.full[user, others])

    def rmse(parts: list[np.ndarray]) -> float:
        return float(np.sqrt(np.mean(np.concatenate(parts) ** 2)))

    # measured over init seeds 0-2: 0.381-0.392 against movie means 1.073 (ratio 0.36), the pair alone 0.50-0.53
    assert rmse(errors) < 0.5 * rmse(errors_means), (rmse(errors), rmse(errors_means))
    assert rmse(errors) < rmse(errors_pair), (rmse(errors), rmse(errors_pair))
