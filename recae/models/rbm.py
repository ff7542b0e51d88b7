"""Restricted Boltzmann machines, and the RBM pretraining of a deep autoencoder (Hinton & Salakhutdinov 2006).

An RBM with visible v (n_visible,) and binary hidden h (n_hidden,) has the energy

    Bernoulli visibles:  E(v, h) = -b.v - c.h - v W h
    Gaussian visibles:   E(v, h) = sum_i (v_i - b_i)^2 / 2 - c.h - v W h        (unit variance: scale the data)

so ``p(h_j = 1 | v) = sigmoid(c_j + v W[:, j])`` and ``p(v | h)`` is ``sigmoid(b + W h)`` (Bernoulli) or
``N(b + W h, 1)`` (Gaussian). The free energy, ``p(v) = exp(-F(v)) / Z``, is

    F(v) = -b.v - sum_j softplus(c_j + v W[:, j])          (Bernoulli; Gaussian: sum_i (v_i - b_i)^2 / 2 - ...)

Training follows Hinton's practical guide (UTML TR 2010-003): CD-k (k Gibbs steps from the data; or persistent
chains, PCD, that carry on from the previous batch), the statistics ``<v h>_data - <v h>_k`` averaged over the
batch, momentum (0.5 for the first 5 epochs, then the configured one), L2 weight decay on W, hidden probabilities
(not samples) in the statistics and a mean-field last reconstruction. Each epoch logs the mean free energy of the
data and the reconstruction error.

Deep autoencoder (``recae train --model stacked --pretrain rbm``): layer 1 is a Gaussian RBM over the *observed*
ratings only (missing ratings are not visible units, as in the RBM for CF: an O(nnz * width) sparse product),
layers 2..L are Bernoulli RBMs on the hidden probabilities of the layer below. The stack is unrolled into the
autoencoder with decoder = encoder^T (``w_out = w_in``, ``decoder[l].weight = encoder[l]^T``, decoder biases =
the RBMs' visible biases), then fine-tuned with masked MSE by the ordinary training loop. Running all of that is
``recae.training.rbm.pretrain_with_rbms``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recae.errors import TrainingError
from recae.models.batches import SparseRows

if TYPE_CHECKING:
    from recae.models.autoencoders import ModelConfig

log = logging.getLogger(__name__)

VISIBLE = ("bernoulli", "gaussian")
#: Exact likelihoods enumerate 2^n_visible states: for tests and tiny models only.
MAX_EXACT_VISIBLE = 20


@dataclass(frozen=True)
class CDSettings:
    """How contrastive divergence updates the weights (Hinton's guide: sections 5, 9, 10)."""

    lr: float = 0.05  # step on the batch-averaged statistics
    momentum: float = 0.9  # after the first 5 epochs (0.5 before)
    weight_decay: float = 0.001  # dW -= lr * weight_decay * W
    steps: int = 1  # k of CD-k
    persistent: bool = False  # PCD: negative chains carry on across batches instead of restarting at the data

    @classmethod
    def of(cls, config: ModelConfig) -> CDSettings:
        return cls(lr=config.cd_lr, momentum=config.cd_momentum, weight_decay=config.cd_weight_decay,
                   steps=config.cd_steps, persistent=config.persistent_cd)

    def momentum_at(self, epoch: int) -> float:
        """0.5 while the weights are far from a solution (first 5 epochs), then ``momentum``."""
        return 0.5 if epoch <= 5 else self.momentum


@dataclass(frozen=True)
class EpochStats:
    """What one RBM epoch did: the mean free energy of the data and the reconstruction error (mean squared)."""

    epoch: int
    free_energy: float
    reconstruction_error: float


class RBM(nn.Module):
    """A dense RBM with Bernoulli or unit-variance Gaussian visible units and Bernoulli hidden units."""

    def __init__(self, n_visible: int, n_hidden: int, visible: str = "bernoulli") -> None:
        super().__init__()
        if visible not in VISIBLE:
            raise TrainingError(f"unknown visible units {visible!r}; choose one of {', '.join(VISIBLE)}")
        self.visible = visible
        self.weight = nn.Parameter(torch.randn(n_visible, n_hidden) * 0.01)  # (n_visible, n_hidden)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))

    def hidden_probs(self, v: Tensor) -> Tensor:
        """(batch, n_hidden) p(h = 1 | v)."""
        return torch.sigmoid(v @ self.weight + self.hidden_bias)

    def visible_mean(self, h: Tensor) -> Tensor:
        """(batch, n_visible) E[v | h]: sigmoid(b + W h) or b + W h."""
        z = h @ self.weight.t() + self.visible_bias
        return torch.sigmoid(z) if self.visible == "bernoulli" else z

    def sample_visible(self, h: Tensor) -> Tensor:
        mean = self.visible_mean(h)
        return torch.bernoulli(mean) if self.visible == "bernoulli" else mean + torch.randn_like(mean)

    def free_energy(self, v: Tensor) -> Tensor:
        """(batch,) F(v), so that p(v) is proportional to exp(-F(v))."""
        hidden = F.softplus(v @ self.weight + self.hidden_bias).sum(1)
        if self.visible == "bernoulli":
            return -(v @ self.visible_bias) - hidden
        return 0.5 * ((v - self.visible_bias) ** 2).sum(1) - hidden

    def reconstruction_error(self, v: Tensor) -> Tensor:
        """Mean squared error of the one-step mean-field reconstruction E[v | p(h | v)]."""
        return torch.mean((self.visible_mean(self.hidden_probs(v)) - v) ** 2)

    @torch.no_grad()
    def cd_gradients(self, v: Tensor, steps: int = 1, chain: Tensor | None = None,
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """CD-``steps`` (or PCD from ``chain``) estimates of the log-likelihood gradient, batch-averaged.

        Returns (dW, db, dc, chain): ``dW = (v^T p(h|v) - v_k^T p(h|v_k)) / batch`` and the new chain state (the
        last sampled visible states) for persistent CD.
        """
        n = max(v.shape[0], 1)
        h_data = self.hidden_probs(v)
        h = h_data if chain is None else self.hidden_probs(chain)
        negative = sampled = v if chain is None else chain
        for step in range(steps):
            h_sample = torch.bernoulli(h)
            sampled = self.sample_visible(h_sample)
            # intermediate steps sample; the last reconstruction is mean-field (less noise in the statistics)
            negative = sampled if step < steps - 1 else self.visible_mean(h_sample)
            h = self.hidden_probs(negative)
        chain_out = sampled
        grad_w = (v.t() @ h_data - negative.t() @ h) / n
        grad_b = (v - negative).sum(0) / n
        grad_c = (h_data - h).sum(0) / n
        return grad_w, grad_b, grad_c, chain_out


def momentum_step(params: list[Tensor], velocity: list[Tensor], grads: list[Tensor], settings: CDSettings,
                   momentum: float, decayed: Tensor) -> None:
    """``v <- momentum v + lr (grad - decay W)``; ``param += v`` (gradient ascent on the log-likelihood)."""
    with torch.no_grad():
        for param, speed, grad in zip(params, velocity, grads, strict=True):
            decay = settings.weight_decay * param if param is decayed else 0.0
            speed.mul_(momentum).add_(settings.lr * (grad - decay))
            param.add_(speed)


def train_rbm(rbm: RBM, data: Tensor, settings: CDSettings, epochs: int, *, batch_size: int = 100, seed: int = 0,
              on_epoch: Callable[[EpochStats], None] | None = None) -> list[EpochStats]:
    """Train a dense RBM on ``data`` (n, n_visible) by CD-k or PCD; returns each epoch's statistics."""
    generator = np.random.default_rng(seed)
    velocity = [torch.zeros_like(p) for p in (rbm.weight, rbm.visible_bias, rbm.hidden_bias)]
    chain = data[: min(batch_size, data.shape[0])].clone() if settings.persistent else None
    history = []
    for epoch in range(1, epochs + 1):
        order = torch.from_numpy(generator.permutation(data.shape[0]))
        for start in range(0, data.shape[0], batch_size):
            batch = data[order[start:start + batch_size]]
            if chain is not None and chain.shape[0] != batch.shape[0]:
                chain = chain[: batch.shape[0]] if chain.shape[0] > batch.shape[0] else batch.clone()
            grad_w, grad_b, grad_c, new_chain = rbm.cd_gradients(batch, settings.steps, chain)
            chain = new_chain if settings.persistent else None
            momentum_step([rbm.weight, rbm.visible_bias, rbm.hidden_bias], velocity, [grad_w, grad_b, grad_c],
                           settings, settings.momentum_at(epoch), rbm.weight)
        with torch.no_grad():
            stats = EpochStats(epoch, float(rbm.free_energy(data).mean()), float(rbm.reconstruction_error(data)))
        log.info("rbm epoch %d: free energy %.4f, reconstruction error %.4f", epoch, stats.free_energy,
                 stats.reconstruction_error)
        history.append(stats)
        if on_epoch:
            on_epoch(stats)
    return history


# --- exact quantities of tiny RBMs (tests) ---------------------------------------------------------------------


def _all_states(n: int) -> Tensor:
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=n)), dtype=torch.float64)  # (2^n, n)


def exact_log_likelihood(rbm: RBM, data: Tensor) -> float:
    """Mean log p(v) of ``data`` under a Bernoulli RBM, with Z summed over every visible state."""
    if rbm.visible != "bernoulli" or rbm.weight.shape[0] > MAX_EXACT_VISIBLE:
        raise TrainingError(f"exact likelihoods need Bernoulli visibles and at most {MAX_EXACT_VISIBLE} of them")
    with torch.no_grad():
        double = _as_double(rbm)
        log_z = torch.logsumexp(-double.free_energy(_all_states(rbm.weight.shape[0])), dim=0)
        return float((-double.free_energy(data.double()) - log_z).mean())


def exact_gradient(rbm: RBM, data: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """d mean log p(data) / d(W, b, c) = <.>_data - <.>_model, the model expectation by enumeration."""
    with torch.no_grad():
        double = _as_double(rbm)
        states = _all_states(rbm.weight.shape[0])
        p = torch.softmax(-double.free_energy(states), dim=0)  # (2^n,) p(v)
        h_states = double.hidden_probs(states)
        v = data.double()
        h_data = double.hidden_probs(v)
        grad_w = v.t() @ h_data / v.shape[0] - (states * p[:, None]).t() @ h_states
        grad_b = v.mean(0) - p @ states
        grad_c = h_data.mean(0) - p @ h_states
        return grad_w, grad_b, grad_c


def _as_double(rbm: RBM) -> RBM:
    copy = RBM(rbm.weight.shape[0], rbm.weight.shape[1], rbm.visible).double()
    copy.load_state_dict({k: v.double() for k, v in rbm.state_dict().items()})
    return copy


# --- the sparse first layer and the deep autoencoder -----------------------------------------------------------


class ObservedGaussianRBM(nn.Module):
    """Gaussian-visible RBM whose visible units are only a vector's observed ratings (sparse: O(nnz * F))."""

    def __init__(self, n_visible: int, n_hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_visible, n_hidden) * 0.01)  # (n_units, F)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))

    def hidden_probs(self, rows: SparseRows) -> Tensor:
        return torch.sigmoid(rows.csr() @ self.weight + self.hidden_bias)  # (batch, F)

    def visible_mean_at(self, h: Tensor, rows: SparseRows) -> Tensor:
        """(nnz,) E[v | h] = b + W h at the observed entries only (a sampled product)."""
        mask = rows.csr(torch.zeros(rows.nnz, dtype=h.dtype, device=h.device))
        return torch.sparse.sampled_addmm(mask, h, self.weight.t(), beta=0.0).values() + self.visible_bias[rows.col]

    def free_energy(self, rows: SparseRows) -> Tensor:
        """(batch,) ``sum_{i observed} (v_i - b_i)^2 / 2 - sum_j softplus(c_j + v W[:, j])``."""
        quadratic = torch.zeros(rows.n_rows, dtype=rows.values.dtype, device=rows.values.device)
        quadratic.index_add_(0, rows.row_of, 0.5 * (rows.values - self.visible_bias[rows.col]) ** 2)
        return quadratic - F.softplus(rows.csr() @ self.weight + self.hidden_bias).sum(1)

    @torch.no_grad()
    def cd_gradients(self, rows: SparseRows, steps: int) -> tuple[Tensor, Tensor, Tensor, float]:
        """CD-k statistics over observed entries, batch-averaged, and the reconstruction's squared error (sum)."""
        n = max(rows.n_rows, 1)
        h_data = self.hidden_probs(rows)
        h, recon = h_data, rows.values
        for step in range(steps):
            mean = self.visible_mean_at(torch.bernoulli(h), rows)
            recon = mean if step == steps - 1 else mean + torch.randn_like(mean)
            h = self.hidden_probs(rows.with_values(recon))
        grad_w = rows.csr_t() @ h_data - rows.csr_t(recon) @ h
        grad_b = torch.zeros_like(self.visible_bias).index_add_(0, rows.col, rows.values - recon)
        grad_c = (h_data - h).sum(0)
        return grad_w / n, grad_b / n, grad_c / n, float(((recon - rows.values) ** 2).sum())
