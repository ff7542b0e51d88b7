"""Losses: the sparse training path computes exactly the dense masked MSE, and the penalties their formulas."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recae.models.batches import make_batch
from recae.models.build import MODELS, build_model, model_config
from recae.models.losses import contractive_penalty, dense_masked_mse, kl_sparsity, l1_sparsity, l2_penalty, masked_mse


def random_ratings(seed: int, n_rows: int, n_cols: int, density: float) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    mask = rng.random((n_rows, n_cols)) < density
    values = rng.integers(1, 6, (n_rows, n_cols)).astype(np.float64)
    return sp.csr_matrix(np.where(mask, values, 0.0))


def test_masked_mse_counts_only_observed_entries() -> None:
    target = torch.tensor([[5.0, 0.0], [0.0, 1.0]])
    predicted = torch.tensor([[4.0, 100.0], [-7.0, 3.0]])
    mask = (target != 0).double()
    # (5-4)^2 + (1-3)^2 over 2 observed entries
    assert dense_masked_mse(predicted, target, mask).item() == pytest.approx(2.5)
    assert masked_mse(torch.tensor([4.0, 3.0]), torch.tensor([5.0, 1.0])).item() == pytest.approx(2.5)


def test_masked_mse_of_nothing_is_zero_with_a_gradient() -> None:
    predicted = torch.zeros(0, requires_grad=True)
    loss = masked_mse(predicted, torch.zeros(0))
    loss.backward()
    assert loss.item() == 0.0


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"rbm"}))  # the rbm is trained by CD, not the masked loss
@pytest.mark.parametrize("hidden", [(7,), (9, 4)])
@given(seed=st.integers(0, 10_000), density=st.floats(0.05, 0.6))
@settings(max_examples=8, deadline=None)
def test_sparse_loss_and_gradients_equal_the_dense_masked_loss(
    name: str, hidden: tuple[int, ...], seed: int, density: float
) -> None:
    ratings = random_ratings(seed, n_rows=13, n_cols=11, density=density)
    torch.manual_seed(seed)
    config = model_config(name, hidden=hidden, input_dropout=0.0, activation="sigmoid")
    model = build_model(config, 11, 11).double().train()
    batch = make_batch(ratings, ratings).inputs

    predicted, penalty = model(batch, batch)
    sparse_loss = masked_mse(predicted, batch.values) + penalty
    sparse_grads = torch.autograd.grad(sparse_loss, list(model.parameters()))

    dense = batch.dense()
    out, dense_penalty = model.forward_dense(dense)
    dense_loss = dense_masked_mse(out, dense, (dense != 0).double()) + dense_penalty
    dense_grads = torch.autograd.grad(dense_loss, list(model.parameters()))

    assert torch.allclose(sparse_loss, dense_loss, rtol=1e-10, atol=1e-12)
    for sparse_grad, dense_grad in zip(sparse_grads, dense_grads, strict=True):
        assert torch.allclose(sparse_grad, dense_grad, rtol=1e-8, atol=1e-10)


def test_l2_penalty_is_autorec_lambda_over_the_number_of_ratings() -> None:
    weights = [torch.ones(2, 3), torch.full((4,), 2.0)]
    # lambda/2 * (6 + 16) / 11
    assert float(l2_penalty(weights, 0.5, 11)) == pytest.approx(0.25 * 22 / 11)
    assert l2_penalty(weights, 0.0, 11) == 0.0


def test_kl_sparsity_is_zero_at_the_target_rate_and_positive_elsewhere() -> None:
    at_target = torch.full((8, 5), 0.05)
    assert kl_sparsity(at_target, 0.05).item() == pytest.approx(0.0, abs=1e-7)
    busy = torch.full((8, 5), 0.5)
    expected = 5 * (0.05 * np.log(0.05 / 0.5) + 0.95 * np.log(0.95 / 0.5))
    assert kl_sparsity(busy, 0.05).item() == pytest.approx(expected, rel=1e-5)
    assert l1_sparsity(torch.tensor([[1.0, -2.0], [0.0, 3.0]])).item() == pytest.approx(3.0)


def test_contractive_penalty_matches_the_autograd_jacobian_for_a_sigmoid_layer() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 4, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64)
    h = torch.sigmoid(x @ weight + bias)
    closed_form = contractive_penalty(h * (1 - h), weight)
    norms = [
        (torch.autograd.functional.jacobian(lambda v: torch.sigmoid(v @ weight + bias), x[i]) ** 2).sum()
        for i in range(3)
    ]
    assert closed_form.item() == pytest.approx(torch.stack(norms).mean().item(), rel=1e-10)
