"""RBM layers against exact answers on tiny models, and the RBM pretraining of a deep autoencoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recae.artifacts.train_config import TrainConfig
from recae.errors import TrainingError
from recae.models.batches import oriented_csr, sparse_rows
from recae.models.build import build_model, model_config
from recae.models.rbm import (
    RBM,
    CDSettings,
    ObservedGaussianRBM,
    exact_gradient,
    exact_log_likelihood,
    train_rbm,
)
from recae.training.rbm import pretrain_with_rbms
from tests.support.synthetic import planted_low_rank

#: Six binary vectors over 3 units: two planted modes ({1,2} and {3}) and two odd ones.
TINY = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1], [1, 1, 1]], dtype=torch.float32)


def _random_rbm(seed: int) -> RBM:
    torch.manual_seed(seed)
    rbm = RBM(3, 2)
    with torch.no_grad():
        rbm.weight.copy_(torch.randn(3, 2) * 0.5)
        rbm.visible_bias.copy_(torch.randn(3) * 0.3)
        rbm.hidden_bias.copy_(torch.randn(2) * 0.3)
    return rbm


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cd1_gradient_agrees_with_the_exact_gradient_of_a_3x2_rbm(seed: int) -> None:
    """CD-1 (averaged over many chains) vs <.>_data - <.>_model with Z summed over all 2^3 x 2^2 states.

    Measured over seeds 0..5: cosine 0.977..0.986, norm ratio 0.87..1.04; CD-1 is biased, so not exact.
    """
    rbm = _random_rbm(seed)
    grad_w, grad_b, grad_c, _ = rbm.cd_gradients(TINY.repeat(20_000, 1), steps=1)
    exact_w, exact_b, exact_c = exact_gradient(rbm, TINY)
    cd = torch.cat([grad_w.flatten(), grad_b, grad_c]).double()
    exact = torch.cat([exact_w.flatten(), exact_b, exact_c])
    clear = exact.abs() > 0.05
    assert clear.sum() >= 4
    assert torch.equal(cd[clear].sign(), exact[clear].sign())
    assert float(cd @ exact / (cd.norm() * exact.norm())) > 0.95
    assert 0.7 < float(cd.norm() / exact.norm()) < 1.3


@pytest.mark.parametrize("persistent", [False, True])
def test_exact_likelihood_rises_under_cd_training(persistent: bool) -> None:
    """From -ln 8 (uniform) towards the data's entropy bound -1.33; measured -1.61..-1.64 with CD-1."""
    torch.manual_seed(0)
    rbm = RBM(3, 2)
    before = exact_log_likelihood(rbm, TINY)
    settings = CDSettings(lr=0.1, momentum=0.5, weight_decay=0.0, persistent=persistent)
    history = train_rbm(rbm, TINY.repeat(50, 1), settings, 30, batch_size=30, seed=0)
    after = exact_log_likelihood(rbm, TINY)
    assert before == pytest.approx(-np.log(8), abs=0.01)
    assert after > before + 0.3
    assert len(history) == 30 and all(np.isfinite(h.free_energy) for h in history)


def test_rbm_reconstructs_planted_binary_patterns() -> None:
    """Three disjoint 4-bit blocks, each pattern switching one on: the trained RBM rebuilds every pattern."""
    patterns = torch.zeros(3, 12)
    for i in range(3):
        patterns[i, 4 * i:4 * i + 4] = 1.0
    torch.manual_seed(0)
    rbm = RBM(12, 6)
    history = train_rbm(rbm, patterns.repeat(100, 1), CDSettings(lr=0.1, momentum=0.9, weight_decay=0.0001), 30,
                        batch_size=20, seed=0)
    with torch.no_grad():
        rebuilt = rbm.visible_mean(rbm.hidden_probs(patterns))
    assert torch.equal((rebuilt > 0.5).float(), patterns)
    assert history[-1].reconstruction_error < 0.5 * history[0].reconstruction_error
    assert history[-1].free_energy < history[0].free_energy


def test_gaussian_rbm_learns_real_valued_planted_modes() -> None:
    torch.manual_seed(0)
    modes = torch.tensor([[2.0, -1.0, 0.0, 1.0], [-1.0, 2.0, 1.0, -2.0]])
    data = modes.repeat(200, 1) + 0.1 * torch.randn(400, 4)
    rbm = RBM(4, 4, visible="gaussian")
    history = train_rbm(rbm, data, CDSettings(lr=0.01, momentum=0.9, weight_decay=0.0001), 40, batch_size=20)
    assert history[-1].reconstruction_error < 0.25 * history[0].reconstruction_error


def test_unknown_visible_units_are_refused() -> None:
    with pytest.raises(TrainingError, match="bernoulli, gaussian"):
        RBM(3, 2, visible="poisson")


def test_missing_ratings_are_not_visible_units() -> None:
    """A unit no vector rated gets no gradient at all (a zero rating would pull its bias towards 0)."""
    import scipy.sparse as sp

    csr = sp.csr_matrix((np.array([4.0, 2.0, 5.0], np.float32), np.array([0, 1, 0]), np.array([0, 2, 3])),
                        shape=(2, 3))
    torch.manual_seed(0)
    rbm = ObservedGaussianRBM(3, 4)
    grad_w, grad_b, _, _ = rbm.cd_gradients(sparse_rows(csr), steps=1)
    assert torch.all(grad_w[2] == 0) and grad_b[2] == 0
    assert torch.any(grad_w[:2] != 0)


def _deep_module(**overrides: object):  # type: ignore[no-untyped-def]
    planted = planted_low_rank(n_users=60, n_movies=40, density=0.3, seed=3)
    cfg = model_config("stacked", hidden=(16, 8, 16), pretrain="rbm", pretrain_epochs=2, cd_lr=0.01, **overrides)
    data = oriented_csr(planted.observed, "item")
    torch.manual_seed(0)
    module = build_model(cfg, data.shape[1], data.shape[1])
    return module, data


def test_unrolling_keeps_the_rbm_weights_with_decoder_equal_to_encoder_transposed() -> None:
    module, data = _deep_module()
    before = module.w_in.detach().clone()
    histories = pretrain_with_rbms(module, data, TrainConfig(batch_ratings=200), 2, torch.device("cpu"))
    assert len(histories) == 3 and all(len(h) == 2 for h in histories)
    assert not torch.allclose(module.w_in, before)
    assert torch.equal(module.w_out, module.w_in)
    n = len(module.encoder)
    for i, enc in enumerate(module.encoder):
        assert torch.equal(module.decoder[n - 1 - i].weight, enc.weight.t())
    # the unrolled encoder's first layer is the RBM's p(h | v) over the observed ratings
    rows = sparse_rows(data, np.arange(5))
    with torch.no_grad():
        expected = torch.sigmoid(rows.csr() @ module.w_in + module.b_in)
        assert torch.allclose(module.encode(rows).hidden[0], expected, atol=1e-6)


def test_rbm_pretraining_needs_sigmoid_units() -> None:
    with pytest.raises(TrainingError, match="sigmoid"):
        model_config("stacked", hidden=(8, 4, 8), activation="relu", pretrain="rbm", pretrain_epochs=1).validate()
    with pytest.raises(TrainingError, match="autoencoder or rbm"):
        model_config("stacked", pretrain="boltzmann").validate()
