"""Autoencoders for rating vectors, behind one small contract, (their registry by name is ``recae.models.build``).

Every model reads a batch of sparse rating vectors ``x`` (a movie's ratings by every user in ``item`` orientation,
as in I-AutoRec; a user's ratings of every movie in ``user`` orientation) and reconstructs them:

    h_1 = act(x W_in + b_in)                       encoder, first layer: a sparse product, cost ~ nnz(x) * h_1
    h_l = act(h_{l-1} W_l + b_l)                   l = 2..L (``hidden`` = (h_1, ..., h_L))
    g_l = act(g_{l+1} V_l + c_l)                   mirrored decoder, g_L = h_L, down to g_1
    rhat_u = out_act(g_1 . W_out[u] + b_out[u])    output unit u, evaluated only where a rating is observed

The contract (:class:`AutoEncoder`): ``encode`` sparse inputs to codes, ``features`` the decoder's last hidden
layer, ``output_at`` the output units at given (vector, unit) entries, ``penalty`` the model's own regulariser.
In training the decoder is evaluated only at the observed entries (a sampled dense-dense product, SDDMM), which
is exactly what the masked MSE needs; so one epoch costs O(nnz * width), never O(rows * units).

Models:
    stacked      the plain stack above; optional greedy layer-wise pretraining (see recae.training.pretrain).
    sparse       one over-complete layer, plus ``beta * sum_j KL(rho || mean_batch h_j)`` (or ``beta * |h|_1``).
    denoising    the stack trained on corrupted inputs: each observed input rating is masked (set to 0) with
                 probability p and the survivors scaled by 1/(1-p); the loss still covers every observed rating.
    contractive  the stack plus ``gamma * ||dh_1/dx||_F^2 = gamma * sum_j act'(z_j)^2 ||W_in[:, j]||^2``
                 (for a sigmoid, act'(z_j) = h_j (1 - h_j)).

Local kernels (any model, ``kernel_dim = d > 0``; Muller et al. 2018 "Sparse FC", the local kernel of GLocal-K):
every weight matrix is used as ``W * K`` with ``K_ij = max(0, 1 - ||u_i - v_j||^2)`` for learned ``u_i, v_j`` in
R^d, one per input and output unit of the layer. K learns which connections to keep (a soft, sparse support),
regularised by ``kernel_weight / 2 * sum K^2``. It is a training-time reparameterisation: :func:`bake_kernels`
folds ``W * K`` into plain weights, so a published model is an ordinary autoencoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recae.models.batches import SparseRows
from recae.models.losses import contractive_penalty, kl_sparsity, l1_sparsity
from recae.models.model_config import ACTIVATION_NAMES, ModelConfig

__all__ = ["ACTIVATIONS", "AutoEncoder", "ModelConfig", "pairs_pattern"]  # ModelConfig lives in model_config

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "relu": F.relu,
    "elu": F.elu,
    "selu": F.selu,
    "tanh": torch.tanh,
    "identity": lambda z: z,
}
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES

_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805

#: act'(z) written with the activation h = act(z) where that is cheaper (for the contractive penalty).
DERIVATIVES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "sigmoid": lambda z, h: h * (1 - h),
    "relu": lambda z, h: (z > 0).to(z.dtype),
    "elu": lambda z, h: torch.where(z > 0, torch.ones_like(z), h + 1),
    "selu": lambda z, h: torch.where(z > 0, torch.full_like(z, _SELU_SCALE), h + _SELU_SCALE * _SELU_ALPHA),
    "tanh": lambda z, h: 1 - h**2,
    "identity": lambda z, h: torch.ones_like(z),
}


# --- sparse products with sparse gradients ---------------------------------------------------------------------


class _SparseInputMatmul(torch.autograd.Function):
    """``X @ W`` for sparse data X (no gradient) and dense W; the gradient ``X^T @ G`` is a sparse product too."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, rows: SparseRows) -> Tensor:  # (n_rows, n_cols) @ (n_cols, k)
        ctx.rows = rows
        return rows.csr() @ weight  # (n_rows, k)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.rows.csr_t() @ grad, None  # (n_cols, k)


class _ObservedDot(torch.autograd.Function):
    """``out_e = <h[row_e], W[col_e]>`` for the entries e of a sparse pattern: a sampled product (SDDMM).

    Backward: with G the sparse matrix of incoming gradients on the pattern, ``dh = G @ W`` and ``dW = G^T @ h``.
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, pattern: SparseRows) -> Tensor:
        ctx.save_for_backward(h, weight)
        ctx.pattern = pattern
        if pattern.nnz == 0:
            return h.new_zeros(0)
        mask = pattern.csr(torch.zeros(pattern.nnz, dtype=h.dtype, device=h.device))
        return torch.sparse.sampled_addmm(mask, h, weight.t(), beta=0.0).values().clone()  # (nnz,)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        h, weight = ctx.saved_tensors
        pattern: SparseRows = ctx.pattern
        grad = grad.contiguous()
        grad_h = pattern.csr(grad) @ weight if ctx.needs_input_grad[0] else None  # (n_rows, k)
        grad_w = pattern.csr_t(grad) @ h if ctx.needs_input_grad[1] else None  # (n_cols, k)
        return grad_h, grad_w, None


def sparse_input_matmul(rows: SparseRows, weight: Tensor) -> Tensor:
    """(n_rows, n_cols) sparse @ (n_cols, k) dense -> (n_rows, k), differentiable in ``weight``."""
    if rows.nnz == 0:
        return weight.new_zeros(rows.n_rows, weight.shape[1]) + 0.0 * weight.sum()
    return _SparseInputMatmul.apply(weight, rows)


def observed_dot(h: Tensor, weight: Tensor, pattern: SparseRows) -> Tensor:
    """(nnz,) ``<h[row_e], weight[col_e]>`` at the pattern's entries, differentiable in ``h`` and ``weight``."""
    return _ObservedDot.apply(h, weight, pattern)


# --- the contract ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Encoded:
    """The encoder's activations for one batch."""

    hidden: list[Tensor]  # [(batch, h_1), ..., (batch, h_L)]
    first_pre: Tensor  # (batch, h_1) pre-activation z of the first layer

    @property
    def code(self) -> Tensor:
        return self.hidden[-1]


class AutoEncoder(nn.Module):
    """The stacked autoencoder; other models change only ``defaults``, the input corruption or ``penalty``."""

    #: the model's own defaults, applied over ModelConfig's by :func:`model_config`.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: ModelConfig, n_inputs: int, n_outputs: int) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.n_inputs, self.n_outputs = int(n_inputs), int(n_outputs)
        sizes = config.hidden
        self.act = ACTIVATIONS[config.activation]
        self.out_act = ACTIVATIONS[config.output_activation]
        self.w_in = nn.Parameter(torch.empty(n_inputs, sizes[0]))  # (n_inputs, h_1)
        self.b_in = nn.Parameter(torch.zeros(sizes[0]))
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.decoder = nn.ModuleList(
            nn.Linear(b, a) for a, b in reversed(list(zip(sizes[:-1], sizes[1:], strict=True)))
        )
        self.w_out = nn.Parameter(torch.empty(n_outputs, sizes[0]))  # (n_outputs, h_1)
        self.b_out = nn.Parameter(torch.zeros(n_outputs))
        # Prediction for a vector with no input rating at all (nothing to encode): the unit's mean rating.
        self.register_buffer("fallback", torch.zeros(n_outputs))
        # Mean training rating, subtracted from observed inputs when ``center_inputs`` (set by the trainer).
        self.register_buffer("input_mean", torch.zeros(()))
        # Local kernel embeddings: name -> (u: (n_in, d) per input unit, v: (n_out, d) per output unit).
        self.kernels = nn.ParameterDict()
        if config.kernel_dim > 0:
            shapes = {"in": (n_inputs, sizes[0]), "out": (sizes[0], n_outputs)}
            shapes.update({f"enc{i}": (layer.in_features, layer.out_features) for i, layer in enumerate(self.encoder)})
            shapes.update({f"dec{i}": (layer.in_features, layer.out_features) for i, layer in enumerate(self.decoder)})
            for name, (n_in, n_out) in shapes.items():
                self.kernels[f"{name}_u"] = nn.Parameter(torch.empty(n_in, config.kernel_dim))
                self.kernels[f"{name}_v"] = nn.Parameter(torch.empty(n_out, config.kernel_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weights, zero biases (the trainer sets ``b_out`` to the units' mean ratings)."""
        for weight in (self.w_in, self.w_out):
            bound = math.sqrt(6.0 / (weight.shape[0] + weight.shape[1]))
            nn.init.uniform_(weight, -bound, bound)
        for layer in [*self.encoder, *self.decoder]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        for embedding in self.kernels.values():  # near 0: K starts close to 1 everywhere (a dense layer)
            nn.init.normal_(embedding, 0.0, 1e-3)

    # -- local kernels --

    def kernel(self, name: str) -> Tensor:
        """K (n_in, n_out) of layer ``name``: ``max(0, 1 - ||u_i - v_j||^2)``, by one matmul, not (n_in, n_out, d)."""
        u, v = self.kernels[f"{name}_u"], self.kernels[f"{name}_v"]
        squared = (u**2).sum(1, keepdim=True) + (v**2).sum(1) - 2.0 * (u @ v.t())
        return torch.clamp(1.0 - squared, min=0.0)

    def input_weight(self) -> Tensor:
        """W_in as used: (n_inputs, h_1), times its kernel when local kernels are on."""
        return self.w_in * self.kernel("in") if self.kernels else self.w_in

    def output_weight(self) -> Tensor:
        """W_out as used: (n_outputs, h_1), times its kernel when local kernels are on."""
        return self.w_out * self.kernel("out").t() if self.kernels else self.w_out

    def _layer(self, layer: nn.Linear, name: str, x: Tensor) -> Tensor:
        weight = layer.weight * self.kernel(name).t() if self.kernels else layer.weight  # (out, in)
        return F.linear(x, weight, layer.bias)

    def kernel_penalty(self, n_observed: int) -> Tensor | float:
        """``kernel_weight / 2 * sum K^2`` over every layer, divided by |Omega| like the L2 term."""
        if not self.kernels or self.config.kernel_weight <= 0:
            return 0.0
        names = {key.rsplit("_", 1)[0] for key in self.kernels}
        total = sum((self.kernel(name) ** 2).sum() for name in names)
        return 0.5 * self.config.kernel_weight * total / max(n_observed, 1)

    # -- pieces of the contract --

    def corrupt(self, inputs: SparseRows) -> SparseRows:
        """Centre observed inputs when asked; masking noise on them while training (denoising)."""
        values = inputs.values - self.input_mean if self.config.center_inputs else inputs.values
        p = self.config.input_dropout
        self.last_kept: Tensor | None = None
        if self.training and p > 0.0 and inputs.nnz > 0:
            keep = (torch.rand(inputs.nnz, device=values.device) >= p).to(values.dtype)
            values = values * keep / (1.0 - p)
            self.last_kept = keep
        return inputs if values is inputs.values else inputs.with_values(values)

    def loss_weights(self, inputs: SparseRows, targets: SparseRows) -> Tensor | None:
        """Per-target weights of the last forward pass: ``kept_weight`` where the corruption kept the input rating.

        Only when targets are the inputs themselves (training); None means every rating weighs 1.
        """
        kept = getattr(self, "last_kept", None)
        if kept is None or self.config.kept_weight == 1.0 or targets is not inputs:
            return None
        return 1.0 + (self.config.kept_weight - 1.0) * kept

    def _hidden_dropout(self, h: Tensor) -> Tensor:
        return F.dropout(h, self.config.dropout, self.training) if self.config.dropout > 0 else h

    def encode(self, inputs: SparseRows) -> Encoded:
        """Sparse inputs (batch, n_inputs) -> every encoder layer's activations."""
        z = sparse_input_matmul(self.corrupt(inputs), self.input_weight()) + self.b_in  # (batch, h_1)
        return self._encode_rest(z)

    def _encode_rest(self, z: Tensor) -> Encoded:
        hidden = [self.act(z)]
        for i, layer in enumerate(self.encoder):
            hidden.append(self.act(self._layer(layer, f"enc{i}", self._hidden_dropout(hidden[-1]))))
        return Encoded(hidden=hidden, first_pre=z)

    def encode_dense(self, x: Tensor) -> Encoded:
        """The same encoder on a dense (batch, n_inputs) matrix with zeros for missing ratings (small data)."""
        if self.config.center_inputs:
            x = x - self.input_mean * (x != 0).to(x.dtype)
        return self._encode_rest(x @ self.input_weight() + self.b_in)

    def features(self, code: Tensor) -> Tensor:
        """Code (batch, h_L) -> the decoder's last hidden layer g_1 (batch, h_1)."""
        g = self._hidden_dropout(code)
        for i, layer in enumerate(self.decoder):
            g = self._hidden_dropout(self.act(self._layer(layer, f"dec{i}", g)))
        return g

    def output_at(self, feats: Tensor, pattern: SparseRows) -> Tensor:
        """(nnz,) output units at the pattern's (vector, unit) entries only."""
        return self.out_act(observed_dot(feats, self.output_weight(), pattern) + self.b_out[pattern.col])

    def output_dense(self, feats: Tensor) -> Tensor:
        """(batch, n_outputs) every output unit: the dense path, for small data and tests."""
        return self.out_act(feats @ self.output_weight().t() + self.b_out)

    def fold_in_unit(self, feats: Tensor, cols: np.ndarray, values: np.ndarray, prior: int | None, ridge: float,
                     bias_ridge: float) -> Tensor:
        """(n_vectors,) predictions of a new output unit rated ``values`` at vectors ``cols`` (item orientation: a
        new user over every movie): its decoder row and bias by ridge regression on ``feats`` (n_vectors, h_1),
        pulled towards a prior, the unit's own row when known, else the average unit's (``recae.models.ridge``)."""
        from recae.models.ridge import ridge_closed_form, ridge_iterative

        if prior is None:
            w0, b0 = self.w_out.mean(0).double(), self.b_out.mean().double()
        else:
            w0, b0 = self.w_out[prior].double(), self.b_out[prior].double()
        if cols.size:
            x = feats[torch.from_numpy(cols)].double()  # (n_rated, h_1): only the rated films in float64
            y = torch.from_numpy(values).double()  # (n_rated,)
            if self.config.output_activation == "identity":
                w, b = (torch.from_numpy(np.asarray(p)) for p in
                        ridge_closed_form(*(t.detach().numpy() for t in (x, y, w0, b0)), ridge, bias_ridge))
            else:
                w, b = ridge_iterative(x, y, w0, b0, ridge, bias_ridge, self.out_act)
        else:
            w, b = w0, b0
        return self.out_act(feats @ w.float() + b.float())  # no float64 copy of every film's features

    def unit_scores(self, feats: Tensor, units: Tensor) -> Tensor:
        """(len(units), n_vectors) output units ``units`` for every vector of ``feats`` (item orientation: those
        users over all movies), by one addmm, row-major, with no transposed copies. The RBM for CF has its own."""
        return self.out_act(torch.addmm(self.b_out[units][:, None], self.output_weight()[units], feats.t()))

    def penalty(self, encoded: Encoded) -> Tensor | float:
        """The model's own regulariser on this batch (0 for the plain stack)."""
        return 0.0

    def weight_matrices(self) -> list[Tensor]:
        """Weights under L2 decay (not biases)."""
        return [self.w_in, self.w_out, *(layer.weight for layer in [*self.encoder, *self.decoder])]

    def forward(self, inputs: SparseRows, targets: SparseRows) -> tuple[Tensor, Tensor | float]:
        """Predictions at the targets' observed entries (nnz,), and the penalty."""
        encoded = self.encode(inputs)
        return self.output_at(self.features(encoded.code), targets), self.penalty(encoded)

    def predict_at(self, inputs: SparseRows, pattern: SparseRows) -> Tensor:
        """(nnz,) predictions at the pattern's entries; a vector with no input rating gets the units' means."""
        out = self.output_at(self.features(self.encode(inputs).code), pattern)
        empty = (inputs.crow[1:] - inputs.crow[:-1]) == 0  # (batch,)
        return torch.where(empty[pattern.row_of], self.fallback[pattern.col], out)

    def forward_dense(self, x: Tensor) -> tuple[Tensor, Tensor | float]:
        """Dense path: every output unit (batch, n_outputs), and the penalty."""
        encoded = self.encode_dense(x)
        return self.output_dense(self.features(encoded.code)), self.penalty(encoded)


class StackedAutoEncoder(AutoEncoder):
    """Plain stacked autoencoder (one hidden layer of 500 sigmoid units = I-AutoRec in item orientation)."""


class SparseAutoEncoder(AutoEncoder):
    """Over-complete code with a sparsity penalty: ``beta * sum_j KL(rho || rho_hat_j)`` or ``beta * |h|_1``."""

    defaults: ClassVar[dict[str, Any]] = {"hidden": (1000,), "sparsity_weight": 0.01, "sparsity_target": 0.05}

    def penalty(self, encoded: Encoded) -> Tensor | float:
        beta = self.config.sparsity_weight
        if beta <= 0:
            return 0.0
        code = encoded.code
        if self.config.sparsity == "kl":
            return beta * kl_sparsity(code, self.config.sparsity_target)
        return beta * l1_sparsity(code)


class DenoisingAutoEncoder(AutoEncoder):
    """Stack trained to rebuild every observed rating from inputs with a fraction masked out."""

    defaults: ClassVar[dict[str, Any]] = {"input_dropout": 0.5, "kept_weight": 0.3, "hidden": (300,)}


class ContractiveAutoEncoder(AutoEncoder):
    """Stack plus ``gamma * ||J||_F^2`` of the first encoder layer (closed form, no double backprop)."""

    defaults: ClassVar[dict[str, Any]] = {"contractive_weight": 0.01}

    def penalty(self, encoded: Encoded) -> Tensor | float:
        gamma = self.config.contractive_weight
        if gamma <= 0:
            return 0.0
        derivative = DERIVATIVES[self.config.activation](encoded.first_pre, encoded.hidden[0])
        return gamma * contractive_penalty(derivative, self.input_weight())


def pairs_pattern(vectors: np.ndarray, units: np.ndarray, n_units: int) -> tuple[np.ndarray, SparseRows, np.ndarray]:
    """A SparseRows pattern covering (vector, unit) pairs, for predicting at arbitrary positions.

    Returns (unique_vectors, pattern, inverse): the pattern's rows are ``unique_vectors`` in order, its entries
    the distinct pairs in CSR order, and ``values_at_entries[inverse]`` answers the pairs as given
    (``recae.models.vectors.pairs_csr`` in torch form).
    """
    from recae.models.batches import sparse_rows
    from recae.models.vectors import pairs_csr

    unique_vectors, csr, inverse = pairs_csr(vectors, units, n_units)
    return unique_vectors, sparse_rows(csr), inverse
