"""Published models run on numpy alone (issue 25, item 2): for every model kind that can be published, the numpy
forward passes of a loaded model (``recae.artifacts.inference``) give what the torch modules that wrote it give,
to 1e-5 on the rating scale: predictions at given pairs, every film's scores, fold-in of a new user and of a known
one, the blend (partner, SVD part, mix weights) and the rankers' scores; and serving imports no torch."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recae.artifacts.inference import AutoEncoderNet, RbmNet
from recae.artifacts.model_files import load_model, save_model
from recae.artifacts.train_config import TrainConfig
from recae.artifacts.trained_model import TrainedModel
from recae.models.build import bake_kernels, build_model, model_config
from recae.models.rankers import fit_ease
from recae.models.sparse_ease import fit_sparse_ease
from recae.models.svd_part import fit_svd_part
from recae.serving.foldin import fold_in, fold_in_scores
from recae.serving.similar import movie_embeddings
from recae.store.matrix import IdIndex, RatingMatrix
from tests.support.serving import ROOT, build_home
from tests.support.synthetic import planted_low_rank

#: Absolute tolerance on the 1..5 scale (float32 sums in another order differ by ~1e-6).
ATOL = 1e-5
#: Every publishable network: the four autoencoder kinds (deep, centred, other activations, an iterative fold-in
#: for a non-identity output), and the RBM for CF plain and conditional; each in both orientations below.
KINDS = {
    "stacked": dict(name="stacked", hidden=(16,)),
    "stacked-deep-elu-centred": dict(name="stacked", hidden=(16, 8), activation="elu", center_inputs=True),
    "sparse-selu": dict(name="sparse", hidden=(24,), activation="selu", sparsity="l1", sparsity_weight=0.01),
    "denoising-tanh": dict(name="denoising", hidden=(12, 6), activation="tanh"),
    "contractive-relu": dict(name="contractive", hidden=(16,), activation="relu"),
    "stacked-sigmoid-output": dict(name="stacked", hidden=(12,), output_activation="sigmoid"),
    "rbm": dict(name="rbm", hidden=(10,), conditional=False),
    "rbm-conditional": dict(name="rbm", hidden=(10,), conditional=True),
}
N_USERS, N_MOVIES = 60, 40


@pytest.fixture(scope="module")
def inputs() -> RatingMatrix:
    """Whole-star planted ratings (the RBM needs a discrete scale), with user 0 and film 0 left without any
    training rating so that the fallback paths run."""
    data = planted_low_rank(n_users=N_USERS, n_movies=N_MOVIES, rank=3, density=0.35, noise=0.1, seed=3)
    rows, cols, values = data.observed.coo()
    keep = (rows != 0) & (cols != 0)
    index = IdIndex(data.observed.index.user_ids, data.observed.index.movie_ids)
    return RatingMatrix.from_positions(rows[keep], cols[keep], np.round(values[keep]), None, index)


def _trained(inputs: RatingMatrix, kind: str, orientation: str) -> TrainedModel:
    """A few epochs of real training (the sigmoid output scaled to the 1..5 scale would not fit: its scale is
    left as it is, the passes are what is compared)."""
    from recae.evaluation.splits import holdout_validation
    from recae.training.train import fit

    settings = dict(KINDS[kind])
    cfg = model_config(settings.pop("name"), orientation=orientation, **settings)
    fit_part, val_part = holdout_validation(inputs, 0.1, 0)
    result = fit(fit_part, val_part, cfg, TrainConfig(epochs=3, lr=1e-2, patience=5, batch_ratings=256, threads=1,
                                                      ensemble=1, weight_decay_grid=(), seed=0))
    return TrainedModel.from_fit(result.module, inputs)


def _loaded(trained: TrainedModel, folder: Path) -> TrainedModel:
    save_model(trained, folder, version=folder.name)
    loaded = load_model(folder)
    assert loaded.module is None and isinstance(loaded.network, AutoEncoderNet | RbmNet)
    return loaded


def _assert_same_scores(torch_model: TrainedModel, numpy_model: TrainedModel, rated: dict[int, float],
                        known_user: int) -> None:
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, N_USERS, 300), rng.integers(0, N_MOVIES, 300)
    every = np.arange(N_USERS)
    close = dict(rtol=0, atol=ATOL)
    np.testing.assert_allclose(numpy_model.predict(rows, cols), torch_model.predict(rows, cols), **close)
    np.testing.assert_allclose(numpy_model.score_rows(every), torch_model.score_rows(every), **close)
    np.testing.assert_allclose(numpy_model.rank_rows(every), torch_model.rank_rows(every), **close)
    for user_row in (None, known_user):  # a new user (the average unit's prior) and a known one (their own row)
        for ours, theirs in zip(fold_in(numpy_model, rated, user_row), fold_in(torch_model, rated, user_row),
                                strict=True):
            np.testing.assert_allclose(ours, theirs, **close)
    np.testing.assert_allclose(fold_in_scores(numpy_model, {}), fold_in_scores(torch_model, {}), **close)
    np.testing.assert_allclose(movie_embeddings(numpy_model), movie_embeddings(torch_model), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("orientation", ["item", "user"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_numpy_forward_passes_equal_torch_for_every_publishable_kind(inputs: RatingMatrix, tmp_path: Path, kind: str,
                                                                     orientation: str) -> None:
    trained = _trained(inputs, kind, orientation)
    loaded = _loaded(trained, tmp_path / "v")
    rated = {int(inputs.index.movie_ids[c]): r for c, r in ((1, 5.0), (7, 2.0), (12, 4.0), (0, 3.0))}
    _assert_same_scores(trained, loaded, rated, known_user=5)
    in_memory = trained.inference_form()  # what publish precomputes the stored lists with
    assert in_memory.module is None and type(in_memory.network) is type(loaded.network)
    _assert_same_scores(trained, in_memory, rated, known_user=5)


def test_the_blend_svd_part_and_both_rankers_agree_as_well(inputs: RatingMatrix, tmp_path: Path) -> None:
    """An item autoencoder with a user partner, a Soft-Impute SVD part stacked in with mix weights, and either
    ranker: every blended and ranked score of the loaded model equals the torch one's."""
    main, partner = _trained(inputs, "stacked", "item"), _trained(inputs, "denoising-tanh", "user")
    svd = fit_svd_part(inputs, seed=0)
    rated = {int(inputs.index.movie_ids[c]): r for c, r in ((2, 4.0), (9, 1.0), (30, 5.0))}
    pair = replace(main, partner=partner, blend_weight=0.6)
    stacked = replace(pair, svd=svd, mix_weights=(0.5, 0.3, 0.25, 0.1))
    rankers = (fit_ease(inputs.csr, 20.0), fit_sparse_ease(inputs.csr, 20.0, head_items=10, neighbours=5))
    for i, model in enumerate([pair, stacked, *(replace(stacked, ranker=r) for r in rankers)]):
        loaded = _loaded(model, tmp_path / f"v{i}")
        assert loaded.partner is not None and loaded.partner.module is None
        _assert_same_scores(model, loaded, rated, known_user=7)


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_a_local_kernel_left_in_a_file_is_folded_in_at_load(inputs: RatingMatrix, tmp_path: Path,
                                                           orientation: str) -> None:
    """Training bakes kernels before it publishes; a file that still holds ``kernels.*`` (a hand export) loads
    with ``W * K`` folded in and scores as the module with its kernels does."""
    torch.manual_seed(0)
    cfg = model_config("stacked", orientation=orientation, hidden=(12, 6), kernel_dim=3, kernel_weight=0.1)
    n_units = N_USERS if orientation == "item" else N_MOVIES
    module = build_model(cfg, n_units, n_units)
    with torch.no_grad():
        module.b_out.fill_(3.0)
        module.fallback.fill_(3.0)
        for embedding in module.kernels.values():
            embedding.normal_(0.0, 0.4)  # a kernel with zeros and partial weights, not K ~ 1 everywhere
    trained = TrainedModel.from_fit(module, inputs)
    loaded = _loaded(trained, tmp_path / "v")
    every = np.arange(N_USERS)
    np.testing.assert_allclose(loaded.score_rows(every), trained.score_rows(every), rtol=0, atol=ATOL)
    # fold-in's prior and user films' representation read W_out as stored: torch's unbaked module reads it
    # without its kernel, the baked one (what training publishes) as numpy does
    baked = TrainedModel.from_fit(bake_kernels(module), inputs)
    _assert_same_scores(baked, loaded, {int(inputs.index.movie_ids[3]): 4.0}, known_user=2)


def test_serving_a_published_model_imports_no_torch(tmp_path: Path) -> None:
    """A fresh interpreter answers a fold-in from the command line (``recommend --rate``), the HTTP API's fold-in
    and stored list, and ``similar``, with the champion loaded, and never imports torch."""
    home = build_home(tmp_path / "home").path
    code = f"""
import sys, json
from recae.cli import cli
from fastapi.testclient import TestClient
from recae.serving.http import create_app
home = {str(home)!r}
for args in (["recommend", "--rate", "1=5", "--rate", "50=4", "--rate", "30=2", "--format", "json"],
             ["similar", "--movie", "7", "--format", "json"]):
    cli.main(["--home", home, *args], prog_name="recae", standalone_mode=False)
client = TestClient(create_app("sqlite:///" + home + "/recae.db"))
answer = client.post("/v1/recommendations", json={{"ratings": {{"1": 5, "50": 4}}, "explain": True}})
assert answer.status_code == 200 and answer.json()["source"] == "live", answer.text
assert client.get("/v1/movies/7/similar").status_code == 200
assert client.get("/v1/users/3/recommendations").status_code == 200
print("TORCH" if any(m.split(".")[0] == "torch" for m in sys.modules) else "NO-TORCH", file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "NO-TORCH"
    assert '"recommendations"' in done.stdout or "movie_id" in done.stdout
