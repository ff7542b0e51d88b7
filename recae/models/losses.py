"""Training objective: masked MSE over observed ratings, L2 weight decay, and the models' penalties.

Pure tensor functions. The whole objective one model minimises is

    L(theta) = 1/|Omega| * [ sum_{(i,j) in Omega} (r_ij - rhat_ij)^2  +  lambda/2 * sum_W ||W||_F^2 ]
               + penalty(theta)

where ``Omega`` is the set of observed (training) ratings and ``rhat`` the decoder output at those entries.

Normalisation: we divide by |Omega| (a mean, not AutoRec's sum) so the gradient scale - and hence a good
learning rate - does not depend on the size of the dataset or of the minibatch. The L2 term is divided by the
same |Omega|, so the minimiser is exactly AutoRec's ``sum + lambda/2 ||W||^2`` objective and ``lambda`` keeps the
paper's meaning (a fixed prior on the weights, independent of how many ratings there are). In a minibatch the
squared errors are averaged over the batch's observed ratings and the L2 term uses the epoch's |Omega|, an
unbiased estimate of the same objective.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def masked_mse(predicted: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error over observed entries only, given both at those entries.

    ``L = sum_{(i,j) in Omega} (r_ij - rhat_ij)^2 / |Omega|``; with weights
    ``L = sum w_ij (r_ij - rhat_ij)^2 / sum w_ij`` (emphasised denoising weighs masked inputs more).

    Args:
        predicted: (nnz,) decoder outputs at the observed entries.
        target: (nnz,) observed ratings, in the same order.
        weight: optional (nnz,) non-negative weights.
    Returns:
        Scalar; 0 when there is no observed entry.
    """
    if target.numel() == 0:
        return predicted.sum() * 0.0
    if weight is None:
        return ((predicted - target) ** 2).mean()
    return (weight * (predicted - target) ** 2).sum() / weight.sum().clamp_min(1e-12)


def dense_masked_mse(predicted: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """The same masked MSE on dense matrices: ``sum(mask * (r - rhat)^2) / sum(mask)``.

    Args:
        predicted: (batch, n_units) decoder outputs everywhere.
        target: (batch, n_units) ratings, any value where unobserved.
        mask: (batch, n_units) 1.0 where a rating is observed, else 0.0.
    """
    count = mask.sum()
    if count == 0:
        return predicted.sum() * 0.0
    return (mask * (predicted - target) ** 2).sum() / count


def l2_penalty(weights: Iterable[Tensor], weight_decay: float, n_observed: int) -> Tensor | float:
    """AutoRec's ``lambda/2 * sum ||W||_F^2``, divided by |Omega| to match :func:`masked_mse`'s mean.

    Biases are not decayed (pass weight matrices only).
    """
    if weight_decay <= 0.0:
        return 0.0
    total = sum((w**2).sum() for w in weights)
    return 0.5 * weight_decay * total / max(n_observed, 1)


def kl_sparsity(hidden: Tensor, target_rate: float) -> Tensor:
    """Sparsity penalty ``sum_j KL(rho || rho_hat_j)`` of sigmoid activations.

    ``rho_hat_j = mean over the batch of h_j``;
    ``KL(rho || rho_hat) = rho log(rho / rho_hat) + (1 - rho) log((1 - rho) / (1 - rho_hat))``.

    Args:
        hidden: (batch, n_hidden) activations in (0, 1).
        target_rate: rho, the wished mean activation of every unit (0 < rho < 1).
    """
    rho = torch.as_tensor(target_rate, dtype=hidden.dtype, device=hidden.device)
    rho_hat = hidden.mean(dim=0).clamp(1e-6, 1.0 - 1e-6)  # (n_hidden,)
    kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
    return kl.sum()


def l1_sparsity(hidden: Tensor) -> Tensor:
    """Sparsity penalty ``mean over the batch of sum_j |h_j|`` (any activation)."""
    return hidden.abs().sum(dim=1).mean()


def contractive_penalty(act_derivative: Tensor, weight_in: Tensor) -> Tensor:
    """Squared Frobenius norm of the encoder's Jacobian dh/dx, averaged over the batch.

    For ``h = act(x W + b)`` with ``W`` of shape (n_inputs, n_hidden),
    ``||J||_F^2 = sum_j act'(z_j)^2 * ||W_{:,j}||^2``; for a sigmoid ``act'(z_j) = h_j (1 - h_j)``,
    the closed form of the contractive autoencoder (Rifai et al., 2011).

    Args:
        act_derivative: (batch, n_hidden) ``act'(z)`` at the batch's pre-activations.
        weight_in: (n_inputs, n_hidden) the first encoder layer's weights.
    """
    column_norms = (weight_in**2).sum(dim=0)  # (n_hidden,)
    return ((act_derivative**2) * column_norms).sum(dim=1).mean()
