"""Mult-VAE: the loss by hand, the sparse first layer, a planted answer, artifacts, the CLI, and real data."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from click.testing import CliRunner

from recae.artifacts.multvae_files import load_multvae, save_multvae
from recae.cli import cli
from recae.errors import EXIT_ERROR, CorruptArtifactError, RecaeError, UnknownMovieError
from recae.evaluation.clicks import evaluate_top_n, popularity_scorer, split_heldout_users
from recae.models.batches import sparse_rows
from recae.models.multvae import (
    MultVAE,
    MultVAEConfig,
    MultVAETrainConfig,
    TrainedMultVAE,
    anneal_beta,
    gaussian_kl,
    multvae_loss,
)
from recae.store.matrix import IdIndex, RatingMatrix
from recae.training.multvae import MultVAERun, fit_multvae, train_and_evaluate

#: Measured on the planted clusters below (small_config, seeds 0/1/2): Mult-VAE recall@20 0.60/0.63/0.52 against
#: popularity 0.11/0.16/0.15, margins 0.49/0.47/0.37.
PLANTED_MARGIN = 0.30
#: Measured on ml-100k (threshold 3.5, 100 + 100 held-out users, default network, seeds 0/1/2): recall@20
#: 0.372/0.355/0.384 against popularity 0.238/0.182/0.226 (margins 0.13-0.17); NDCG@100 0.407/0.426/0.428
#: against 0.268/0.242/0.277 (margins 0.14-0.18).
ML100K_MARGIN = 0.08


def planted_clusters(n_groups: int = 4, users_per_group: int = 100, items_per_group: int = 40,
                     seed: int = 0) -> RatingMatrix:
    """Users in ``n_groups`` taste groups: each likes (5 stars) ~15 films of its own cluster, plus ~3 films liked
    at random from a popularity-skewed catalogue, and rates ~5 other films low (1-3 stars, not clicks).

    The right answer is known: a user's hidden clicks are mostly films of their own cluster, which popularity
    cannot tell apart from the other clusters' films.
    """
    rng = np.random.default_rng(seed)
    n_items = n_groups * items_per_group
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.7
    popularity = rng.permutation(popularity / popularity.sum())
    rows, cols, values = [], [], []
    for user in range(n_groups * users_per_group):
        group = user % n_groups
        own = group * items_per_group + rng.choice(items_per_group, rng.integers(10, 20), replace=False)
        noise = rng.choice(n_items, 3, replace=False, p=popularity)
        disliked = rng.choice(n_items, 5, replace=False)
        liked = np.union1d(own, noise)
        disliked = np.setdiff1d(disliked, liked)
        rows += [user] * (liked.size + disliked.size)
        cols += [*liked, *disliked]
        values += [5.0] * liked.size + list(rng.integers(1, 4, disliked.size).astype(float))
    index = IdIndex(np.arange(n_groups * users_per_group) + 1, np.arange(n_items) * 10 + 10)
    return RatingMatrix.from_positions(np.array(rows), np.array(cols), np.array(values, np.float32), None, index)


def small_config() -> tuple[MultVAEConfig, MultVAETrainConfig]:
    return MultVAEConfig(hidden=64, latent=16), MultVAETrainConfig(epochs=40, batch_users=50, patience=0, seed=0,
                                                                   device="cpu", total_anneal_steps=2000, threads=1)


# --- pieces ----------------------------------------------------------------------------------------------------


def test_loss_on_a_hand_worked_case() -> None:
    # One user, three films, equal logits: log pi = -ln 3 each; the user clicked films 0 and 1.
    logits = torch.zeros(1, 3)
    clicks = sparse_rows(sp.csr_matrix(np.array([[1, 1, 0]], np.float32)))
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]])
    # KL = 1/2 [(-0 + 1 + 1 - 1) + (-ln 2 + 2 + 0 - 1)] = 1 - ln(2) / 2
    assert gaussian_kl(mu, logvar).item() == pytest.approx(1 - math.log(2) / 2)
    loss = multvae_loss(logits, clicks, mu, logvar, beta=0.2)
    assert loss.neg_ll.item() == pytest.approx(2 * math.log(3))
    assert loss.kl.item() == pytest.approx(1 - math.log(2) / 2)
    assert loss.total.item() == pytest.approx(2 * math.log(3) + 0.2 * (1 - math.log(2) / 2))
    # a batch of two users averages them; a standard-normal posterior has KL 0
    two = sparse_rows(sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 1]], np.float32)))
    logits2 = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0)]])  # second user: pi_2 = 2 / 4
    loss2 = multvae_loss(logits2, two, torch.zeros(2, 2), torch.zeros(2, 2), beta=1.0)
    assert loss2.kl.item() == 0.0
    assert loss2.total.item() == pytest.approx((2 * math.log(3) + math.log(2)) / 2)


def test_beta_grows_linearly_to_its_cap() -> None:
    assert anneal_beta(0, 1000, 0.2) == 0.0
    assert anneal_beta(100, 1000, 0.2) == pytest.approx(0.1)
    assert anneal_beta(5000, 1000, 0.2) == 0.2
    assert anneal_beta(7, 0, 0.3) == 0.3


def test_sparse_first_layer_equals_the_dense_computation() -> None:
    rng = np.random.default_rng(1)
    dense = (rng.random((7, 30)) < 0.2).astype(np.float32)
    dense[3] = 0  # a user with no click at all
    module = MultVAE(30, MultVAEConfig(hidden=12, latent=5), generator=torch.Generator().manual_seed(0)).eval()
    mu, logvar = module.encode(sparse_rows(sp.csr_matrix(dense)))
    mu_d, logvar_d = module.encode_dense(torch.from_numpy(dense))
    assert torch.allclose(mu, mu_d, atol=1e-6) and torch.allclose(logvar, logvar_d, atol=1e-6)
    # gradients of the first layer agree too
    (mu.sum() + logvar.pow(2).sum()).backward()
    grad_sparse = module.w_in.grad.clone()
    module.zero_grad()
    mu_d, logvar_d = module.encode_dense(torch.from_numpy(dense))
    (mu_d.sum() + logvar_d.pow(2).sum()).backward()
    assert torch.allclose(grad_sparse, module.w_in.grad, atol=1e-6)


def test_input_dropout_drops_about_half_and_rescales() -> None:
    module = MultVAE(2000, MultVAEConfig(hidden=4, latent=2)).train()
    clicks = sparse_rows(sp.csr_matrix(np.ones((1, 2000), np.float32)))
    values = module.normalised_input(clicks, torch.Generator().manual_seed(0)).values
    kept = values[values > 0]
    assert 0.45 < kept.numel() / 2000 < 0.55
    assert torch.allclose(kept, torch.full_like(kept, 2 / math.sqrt(2000)))  # (1 / ||x||) / (1 - p)


# --- planted structure -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_run() -> MultVAERun:
    config, train_config = small_config()
    return train_and_evaluate(planted_clusters(), heldout=40, config=config, train_config=train_config)


def test_mult_vae_finds_the_planted_clusters_popularity_cannot(planted_run: MultVAERun) -> None:
    vae, pop = planted_run.test, planted_run.popularity
    assert vae.n_users == pop.n_users == 40
    assert vae.recall[0] >= pop.recall[0] + PLANTED_MARGIN
    assert vae.ndcg[0] > pop.ndcg[0]
    assert planted_run.fit.best_val_ndcg > 0 and 1 <= planted_run.fit.best_epoch <= 40
    rows = planted_run.rows()
    assert [r["model"] for r in rows] == ["mult-vae", "popularity"]
    assert set(rows[0]) == {"model", "recall@20", "recall@100", "ndcg@20", "ndcg@100", "users"}


def test_a_new_user_of_one_cluster_gets_films_of_that_cluster(planted_run: MultVAERun) -> None:
    trained: TrainedMultVAE = planted_run.trained
    liked = [20, 40, 60, 80, 100]  # ids 10 * (col + 1): cols 1, 3, 5, 7, 9 of cluster 0 (cols 0..39)
    recs = trained.recommend(liked, n=10)
    assert len(recs) == 10 and not {r.movie_id for r in recs} & set(liked)
    in_cluster = sum(r.movie_id <= 400 for r in recs)
    assert in_cluster >= 8
    with pytest.raises(UnknownMovieError):
        trained.recommend([5, 7], n=3)


def test_training_is_seeded() -> None:
    config, train_config = small_config()
    train_config = replace(train_config, epochs=2)
    clicks = sp.csr_matrix((np.random.default_rng(0).random((60, 25)) < 0.3).astype(np.float32))
    split = split_heldout_users(clicks, 5, seed=0, min_user_items=1)
    a = fit_multvae(split.train, split.validation, config, train_config)
    b = fit_multvae(split.train, split.validation, config, train_config)
    assert all(torch.equal(a.module.state_dict()[k], b.module.state_dict()[k]) for k in a.module.state_dict())
    assert len(a.history) == 2 and a.history[0].epoch == 1


# --- artifacts -------------------------------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_scores(planted_run: MultVAERun, tmp_path: Path) -> None:
    trained = planted_run.trained
    folder = save_multvae(trained, tmp_path / "vae" / "v1")
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "weights.safetensors"]
    assert not list((tmp_path / "vae").glob(".tmp-*"))
    loaded = load_multvae(folder)
    users = planted_run.split.test
    for name, tensor in trained.module.state_dict().items():  # a byte copy: exact on any CPU
        assert torch.equal(loaded.module.state_dict()[name], tensor), name
    # same weights, memory of another alignment: equal up to float32 rounding (see test_artifacts)
    np.testing.assert_allclose(loaded.score(users.fold_in), trained.score(users.fold_in), rtol=1e-5, atol=1e-6)
    assert np.array_equal(loaded.movie_ids, trained.movie_ids)
    assert loaded.config == trained.config and loaded.train_config == trained.train_config
    assert loaded.metrics == trained.metrics
    again = evaluate_top_n(loaded.score, users)
    assert again == planted_run.test
    with pytest.raises(RecaeError, match="already exists"):
        save_multvae(trained, folder)


def test_damaged_artifacts_are_one_line_errors(planted_run: MultVAERun, tmp_path: Path) -> None:
    folder = save_multvae(planted_run.trained, tmp_path / "m")
    weights = folder / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="checksum"):
        load_multvae(folder)
    (folder / "meta.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CorruptArtifactError, match="unreadable"):
        load_multvae(folder)
    weights.unlink()
    with pytest.raises(CorruptArtifactError, match="missing weights.safetensors"):
        load_multvae(folder)


# --- the CLI ---------------------------------------------------------------------------------------------------


def _invoke(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def test_vae_help_has_an_example() -> None:
    result = CliRunner().invoke(cli, ["vae", "--help"])
    assert result.exit_code == 0 and "Example" in result.stdout and "recae vae" in result.stdout


def test_vae_command_end_to_end(tmp_path: Path) -> None:
    matrix = planted_clusters(users_per_group=40, seed=3)
    rows, cols, values = matrix.coo()
    csv = tmp_path / "ratings.csv"
    pd.DataFrame({"user_id": matrix.index.user_ids[rows], "movie_id": matrix.index.movie_ids[cols],
                  "rating": values}).to_csv(csv, index=False)
    home = tmp_path / "home"
    code, _, err = _invoke(home, "vae")
    assert code == EXIT_ERROR and err.strip().count("\n") == 0 and "recae ingest" in err and "Traceback" not in err
    code, _, err = _invoke(home, "ingest", "--ratings", str(csv), "--scale", "1", "5", "--step", "1")
    assert code == 0, err
    code, out, err = _invoke(home, "vae", "--heldout-users", "20", "--epochs", "3", "--hidden", "32", "--latent",
                             "8", "--batch-users", "40", "--format", "json")
    assert code == 0, err
    rows_out = json.loads(out)
    assert [r["model"] for r in rows_out] == ["mult-vae", "popularity"]
    assert all(r["users"] == 20 and 0 <= r["ndcg@100"] <= 1 for r in rows_out)
    saved = list((home / "models" / "vae").iterdir())
    assert len(saved) == 1 and str(saved[0]) in err
    loaded = load_multvae(saved[0])
    assert loaded.config == MultVAEConfig(hidden=32, latent=8)
    assert loaded.metrics["test_recall@20"] == rows_out[0]["recall@20"]
    code, out, _ = _invoke(home, "vae", "--heldout-users", "0.2", "--epochs", "1", "--format", "csv",
                           "--out", str(tmp_path / "mine"))
    assert code == 0 and out.splitlines()[0] == "model,recall@20,recall@100,ndcg@20,ndcg@100,users"
    assert (tmp_path / "mine" / "meta.json").is_file()
    code, out, err = _invoke(home, "vae", "--heldout-users", "500")
    assert code == EXIT_ERROR and out == "" and "lower --heldout-users" in err and "Traceback" not in err
    code, _, err = _invoke(home, "vae", "--heldout-users", "2.5")
    assert code == 2 and "--heldout-users" in err


# --- real data -------------------------------------------------------------------------------------------------


def test_mult_vae_beats_popularity_on_ml100k(ml100k: Path) -> None:
    table = pd.read_csv(ml100k / "u.data", sep="\t", names=["user", "movie", "rating", "ts"])
    matrix = RatingMatrix.from_ids(table.user.to_numpy(), table.movie.to_numpy(), table.rating.to_numpy(np.float32),
                                   table.ts.to_numpy())
    train_config = MultVAETrainConfig(epochs=60, patience=15, seed=0, device="cpu", threads=1)
    run = train_and_evaluate(matrix, heldout=100, train_config=train_config)
    vae, pop = run.test, run.popularity
    assert vae.n_users == pop.n_users == 100
    assert vae.recall[0] >= pop.recall[0] + ML100K_MARGIN
    assert vae.ndcg[1] >= pop.ndcg[1] + ML100K_MARGIN
    assert popularity_scorer(run.split.train)(run.split.test.fold_in).shape == (100, run.split.n_items)
