"""Models: the contract, the registry, and that every model in both orientations learns planted structure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recae.artifacts.train_config import TrainConfig
from recae.artifacts.trained_model import TrainedModel
from recae.errors import TrainingError
from recae.models.autoencoders import ModelConfig, pairs_pattern
from recae.models.batches import batch_plan, make_batch, oriented_csr, sparse_rows
from recae.models.build import MODELS, build_model, merge_members, model_config
from recae.models.names import MODEL_NAMES, Orientation
from recae.training.train import fit
from recae.training.validation import unit_means
from tests.support.synthetic import planted_low_rank


def unobserved_truth(planted) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Positions the model never saw, and their true ratings."""
    seen = planted.observed.csr.toarray() != 0
    rows, cols = np.nonzero(~seen)
    return rows, cols, planted.full[rows, cols]


def carve_validation(matrix, fraction: float = 0.1, seed: int = 0):  # type: ignore[no-untyped-def]
    keep = np.random.default_rng(seed).random(matrix.nnz) >= fraction
    return matrix.subset(keep), matrix.subset(~keep)


def test_registry_names_every_model_with_its_defaults() -> None:
    assert set(MODELS) == {"stacked", "sparse", "denoising", "contractive", "rbm"}
    assert model_config("rbm").cd_lr > 0 and len(model_config("rbm").hidden) == 1
    assert model_config("denoising").input_dropout > 0
    assert model_config("sparse").sparsity_weight > 0 and model_config("sparse").hidden[0] > 500
    assert model_config("contractive").contractive_weight > 0
    assert model_config("stacked", hidden=[64, 16]).hidden == (64, 16)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"name": "nope"}, "unknown model"),
        ({"orientation": "diagonal"}, "unknown orientation"),
        ({"activation": "swish"}, "unknown activation"),
        ({"dropout": 1.0}, "dropout"),
        ({"hidden": (0,)}, "hidden"),
        ({"sparsity_weight": 0.1, "activation": "relu"}, "KL sparsity"),
    ],
)
def test_bad_settings_name_what_is_allowed(settings: dict, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        build_model(ModelConfig(**settings), 5, 5)


def test_config_round_trips_through_json() -> None:
    config = model_config("sparse", hidden=(30, 10), activation="sigmoid", dropout=0.1)
    assert ModelConfig.from_json(config.to_json()) == config
    rbm = model_config("rbm", rating_levels=[1, 2, 3])
    assert ModelConfig.from_json(rbm.to_json()) == rbm and rbm.rating_levels == (1.0, 2.0, 3.0)
    with pytest.raises(TrainingError, match="unknown model setting 'widht'"):
        ModelConfig.from_json({"widht": 3})


def test_batches_cover_every_row_once_and_follow_the_rating_budget() -> None:
    row_nnz = np.array([5, 0, 30, 1, 1, 1, 7, 2, 9, 4])
    plan = batch_plan(row_nnz, 8, seed=3, epoch=1)
    assert sorted(np.concatenate(plan).tolist()) == list(range(10))
    assert all(np.maximum(row_nnz[g], 1).sum() <= 8 or len(g) == 1 for g in plan)
    assert [g.tolist() for g in plan] == [g.tolist() for g in batch_plan(row_nnz, 8, seed=3, epoch=1)]
    assert [g.tolist() for g in plan] != [g.tolist() for g in batch_plan(row_nnz, 8, seed=3, epoch=2)]


def test_item_orientation_is_the_transpose() -> None:
    planted = planted_low_rank(n_users=9, n_movies=7, seed=1)
    item = oriented_csr(planted.observed, "item")
    assert item.shape == (7, 9)
    assert np.array_equal(item.toarray(), planted.observed.csr.toarray().T)


def test_sparse_rows_transpose_pattern_is_the_transpose() -> None:
    planted = planted_low_rank(n_users=12, n_movies=8, seed=2)
    block = sparse_rows(planted.observed.csr, np.array([3, 0, 7]))
    dense = block.dense()
    assert torch.equal(block.csr().to_dense(), dense)
    assert torch.equal(block.csr_t().to_dense(), dense.t())


@pytest.mark.parametrize("rows", [None, [3, 0, 7, 0], [], [5]], ids=["all", "repeated", "none", "one"])
def test_sparse_rows_transpose_is_the_stable_column_order(rows: list[int] | None) -> None:
    """The transposed pattern lists each column's entries in CSR order (what a stable argsort of the columns gives),
    with ``perm`` their CSR positions: the gradient X^T G reads values through it."""
    csr = planted_low_rank(n_users=12, n_movies=8, seed=2).observed.csr
    block = sparse_rows(csr, None if rows is None else np.array(rows, dtype=np.int64))
    col = block.col.numpy()
    perm = np.argsort(col, kind="stable")
    row_of = np.repeat(np.arange(block.n_rows), np.diff(block.crow.numpy()))
    assert block.perm.numpy().tolist() == perm.tolist()
    assert block.row_t.numpy().tolist() == row_of[perm].tolist()
    assert block.crow_t.numpy().tolist() == [0, *np.cumsum(np.bincount(col, minlength=8)).tolist()]
    assert {t.dtype for t in (block.crow, block.col, block.crow_t, block.row_t, block.perm)} == {torch.int64}


def test_pairs_pattern_answers_repeated_and_unordered_pairs() -> None:
    vectors = np.array([4, 1, 4, 1, 4])
    units = np.array([2, 0, 2, 3, 0])
    unique_vectors, pattern, inverse = pairs_pattern(vectors, units, 5)
    assert unique_vectors.tolist() == [1, 4]
    rows = unique_vectors[pattern.row_of.numpy()][inverse]
    cols = pattern.col.numpy()[inverse]
    assert rows.tolist() == vectors.tolist() and cols.tolist() == units.tolist()


def test_model_shapes_follow_the_contract() -> None:
    planted = planted_low_rank(n_users=20, n_movies=10, seed=3)
    data = oriented_csr(planted.observed, "item")
    model = build_model(model_config("stacked", hidden=(16, 4)), 20, 20).eval()
    batch = make_batch(data, data)
    encoded = model.encode(batch.inputs)
    assert [h.shape for h in encoded.hidden] == [(10, 16), (10, 4)]
    assert model.features(encoded.code).shape == (10, 16)
    assert model.output_at(model.features(encoded.code), batch.targets).shape == (data.nnz,)


@pytest.mark.parametrize("orientation", ["item", "user"])
# the rbm is a softmax over discrete rating values, and these ratings are continuous: its own planted test is in
# tests/models/test_rbm_cf.py
@pytest.mark.parametrize("name", sorted(set(MODELS) - {"rbm"}))
def test_every_model_learns_a_planted_low_rank_matrix(name: str, orientation: str) -> None:
    planted = planted_low_rank(n_users=300, n_movies=200, rank=3, density=0.2, noise=0.1, seed=5)
    fit_part, val_part = carve_validation(planted.observed)
    overrides = {"hidden": (1000,) if name == "sparse" else (200,)}
    config = model_config(name, orientation=orientation, **overrides)
    result = fit(fit_part, val_part, config, TrainConfig(ensemble=1, weight_decay_grid=(), epochs=300,
            lr=1e-2, weight_decay=5.0, patience=10,
                                                         batch_ratings=2048, seed=0, threads=1))
    trained = TrainedModel.from_fit(result.module, planted.observed)
    rows, cols, truth = unobserved_truth(planted)
    model_rmse = float(np.sqrt(np.mean((trained.predict(rows, cols) - truth) ** 2)))
    mean_rmse = float(np.sqrt(np.mean((planted.observed.csr.data.mean() - truth) ** 2)))
    # Measured: the global mean misses by 0.99 here; the models land between 0.29 and 0.67 (denoising, user:
    # masking half of so few inputs costs it most).
    assert model_rmse < 0.72 * mean_rmse, (name, orientation, model_rmse, mean_rmse)


@pytest.mark.parametrize("activation", ["relu", "elu", "selu", "tanh", "identity"])
def test_other_activations_also_learn_planted_structure(activation: str) -> None:
    planted = planted_low_rank(n_users=300, n_movies=200, rank=3, density=0.2, seed=6)
    fit_part, val_part = carve_validation(planted.observed)
    config = model_config("stacked", hidden=(64,), activation=activation)
    result = fit(fit_part, val_part, config, TrainConfig(ensemble=1, weight_decay_grid=(), epochs=60,
            lr=1e-2, weight_decay=5.0, patience=10,
                                                         batch_ratings=2048, threads=1))
    data, val = oriented_csr(fit_part, "item"), oriented_csr(val_part, "item")
    means = unit_means(data, data.shape[1])
    baseline = float(np.sqrt(np.mean((means[val.indices] - val.data) ** 2)))
    # Measured: the users' means miss by 1.04 on validation; these activations reach 0.35 to 0.53.
    assert result.best_val_rmse < 0.6 * baseline, (activation, result.best_val_rmse, baseline)


@pytest.mark.parametrize("hidden", [(8,), (8, 4)])
def test_merged_members_predict_exactly_the_average_of_the_members(hidden: tuple[int, ...]) -> None:
    planted = planted_low_rank(n_users=30, n_movies=20, seed=8)
    data = oriented_csr(planted.observed, "item")
    batch = make_batch(data, data)
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        member = build_model(model_config("stacked", hidden=hidden), 30, 30).eval()
        torch.nn.init.normal_(member.b_out)
        members.append(member)
    merged = merge_members(members).eval()
    assert merged.config.hidden == tuple(3 * h for h in hidden)
    with torch.no_grad():
        average = torch.stack([m.predict_at(batch.inputs, batch.targets) for m in members]).mean(dim=0)
        assert torch.allclose(merged.predict_at(batch.inputs, batch.targets), average, atol=1e-5)


def test_local_kernel_matches_its_formula_and_bakes_into_an_identical_plain_network() -> None:
    planted = planted_low_rank(n_users=30, n_movies=20, seed=9)
    data = oriented_csr(planted.observed, "item")
    batch = make_batch(data, data)
    torch.manual_seed(0)
    module = build_model(model_config("stacked", hidden=(8, 4), kernel_dim=3, kernel_weight=0.1), 30, 30).eval()
    for embedding in module.kernels.values():
        torch.nn.init.normal_(embedding, 0.0, 0.4)  # spread out, so that some K_ij are clipped to 0
    u, v = module.kernels["in_u"], module.kernels["in_v"]
    expected = torch.clamp(1 - ((u[:, None, :] - v[None, :, :]) ** 2).sum(-1), min=0)  # (n_in, n_out, d) way
    assert torch.allclose(module.kernel("in"), expected, atol=1e-6)
    assert (module.kernel("in") == 0).any() and (module.kernel("in") > 0).any()
    plain = merge_members([module]).eval()  # one member: just baked
    assert not plain.kernels and plain.config.kernel_dim == 0
    with torch.no_grad():
        assert torch.allclose(plain.predict_at(batch.inputs, batch.targets),
                              module.predict_at(batch.inputs, batch.targets), atol=1e-5)
    assert float(torch.as_tensor(module.kernel_penalty(100)).detach()) > 0


def test_a_local_kernel_model_learns_planted_structure() -> None:
    planted = planted_low_rank(n_users=300, n_movies=200, rank=3, density=0.2, seed=6)
    fit_part, val_part = carve_validation(planted.observed)
    config = model_config("stacked", hidden=(64,), kernel_dim=5, kernel_weight=0.01)
    result = fit(fit_part, val_part, config, TrainConfig(ensemble=1, weight_decay_grid=(), epochs=60, lr=1e-2,
                                                         weight_decay=5.0, patience=10, batch_ratings=2048, threads=1))
    data, val = oriented_csr(fit_part, "item"), oriented_csr(val_part, "item")
    baseline = float(np.sqrt(np.mean((unit_means(data, data.shape[1])[val.indices] - val.data) ** 2)))
    assert not result.module.kernels  # published networks are plain
    # Measured: users' means miss by 1.04 on validation; the kernelised stack reaches about 0.4.
    assert result.best_val_rmse < 0.6 * baseline, (result.best_val_rmse, baseline)


def test_every_model_name_has_a_network_and_no_network_lacks_a_name() -> None:
    assert tuple(MODELS) == MODEL_NAMES


def test_orientation_read_from_json_is_the_enum_and_is_written_back_as_the_same_string() -> None:
    cfg = ModelConfig.from_json({"orientation": "user"})
    assert cfg.orientation is Orientation.USER and cfg.orientation.other is Orientation.ITEM
    assert json.loads(json.dumps(cfg.to_json()))["orientation"] == "user"
    with pytest.raises(TrainingError, match="unknown orientation 'sideways'"):
        ModelConfig(orientation="sideways").validate()  # type: ignore[arg-type]
