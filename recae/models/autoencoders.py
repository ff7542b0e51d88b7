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
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recae.errors import TrainingError
from recae.models.batches import SparseRows
from recae.models.losses import contractive_penalty, kl_sparsity, l1_sparsity
from recae.models.names import MODEL_NAMES, ORIENTATIONS, PRETRAINS, Orientation
from recae.settings import strict_settings

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "relu": F.relu,
    "elu": F.elu,
    "selu": F.selu,
    "tanh": torch.tanh,
    "identity": lambda z: z,
}

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


@dataclass(frozen=True)
class ModelConfig:
    """What model to build; every field can be set in the TOML config's ``[model]`` table."""

    name: str = "stacked"  # key in MODELS: stacked | sparse | denoising | contractive
    orientation: Orientation = Orientation.ITEM  # item: each movie's vector over users (I-AutoRec); user: a user's
    hidden: tuple[int, ...] = (500,)  # encoder layer sizes; the decoder mirrors them
    activation: str = "sigmoid"  # hidden activation: sigmoid | relu | elu | selu | tanh | identity
    output_activation: str = "identity"  # activation of the output units (identity suits ratings)
    dropout: float = 0.0  # dropout on every hidden layer's activations while training
    input_dropout: float = 0.0  # denoising: probability of masking each observed input rating while training
    sparsity: str = "kl"  # sparse model's penalty: kl (to sparsity_target; sigmoid only) | l1
    sparsity_target: float = 0.05  # rho: wished mean activation of each code unit
    sparsity_weight: float = 0.0  # beta: weight of the sparsity penalty (0 = off)
    contractive_weight: float = 0.0  # gamma: weight of the Jacobian penalty on the first layer (0 = off)
    pretrain_epochs: int = 0  # greedy layer-wise pretraining epochs per layer before fine-tuning (0 = off)
    center_inputs: bool = False  # feed r - mean(r): a missing input (0) then reads as an average rating
    kept_weight: float = 1.0  # denoising: loss weight of ratings the corruption kept (masked ones weigh 1)
    kernel_dim: int = 0  # d of the local kernel K_ij = max(0, 1 - ||u_i - v_j||^2) on every weight (0 = off)
    kernel_weight: float = 0.0  # lambda_s of the kernel's regulariser lambda_s / 2 * sum K^2
    pretrain: str = "autoencoder"  # what pretrain_epochs > 0 pretrains with: autoencoder | rbm (recae.models.rbm)
    rating_levels: tuple[float, ...] = ()  # rbm: the K values of the softmax visibles (empty: the training ratings')
    cd_steps: int = 1  # rbm and RBM pretraining: Gibbs steps T of contrastive divergence (CD-T)
    persistent_cd: bool = False  # RBM pretraining: persistent chains (PCD) instead of chains restarted at the data
    cd_lr: float = 0.05  # rbm and RBM pretraining: learning rate of the CD updates (per vector of a batch)
    cd_momentum: float = 0.9  # momentum after the first 5 epochs (0.5 before, as Hinton's guide advises)
    cd_weight_decay: float = 0.001  # L2 weight decay of the CD updates: dW -= cd_lr * cd_weight_decay * W
    conditional: bool = False  # rbm: hidden units also receive D . r, r = which units the vector has rated (ICML 2007)
    cd_steps_every: int = 0  # rbm: > 0 raises T every that many epochs along 1, 3, 5, 9 (ICML 2007), from cd_steps

    def __post_init__(self) -> None:
        if self.orientation in ORIENTATIONS:  # "item" from a file or a caller becomes Orientation.ITEM
            object.__setattr__(self, "orientation", Orientation(self.orientation))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["orientation"] = str(self.orientation)
        data["hidden"] = list(self.hidden)
        data["rating_levels"] = list(self.rating_levels)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        values = strict_settings(cls, data, "model")
        if "hidden" in values:
            hidden = values["hidden"]
            values["hidden"] = (int(hidden),) if isinstance(hidden, int) else tuple(int(h) for h in hidden)
        if "rating_levels" in values:
            values["rating_levels"] = tuple(float(v) for v in values["rating_levels"])
        return cls(**values)

    def validate(self) -> None:
        """Raise TrainingError naming the first bad setting and what is allowed."""
        if self.name not in MODEL_NAMES:
            raise TrainingError(f"unknown model {self.name!r}; choose one of {', '.join(MODEL_NAMES)}")
        if self.orientation not in ORIENTATIONS:
            raise TrainingError(f"unknown orientation {self.orientation!r}; choose one of {', '.join(ORIENTATIONS)}")
        for label, act in (("activation", self.activation), ("output_activation", self.output_activation)):
            if act not in ACTIVATIONS:
                raise TrainingError(f"unknown {label} {act!r}; choose one of {', '.join(ACTIVATIONS)}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise TrainingError(f"hidden sizes must be positive integers, got {list(self.hidden)}")
        for label, p in (("dropout", self.dropout), ("input_dropout", self.input_dropout)):
            if not 0.0 <= p < 1.0:
                raise TrainingError(f"{label} must be in [0, 1), got {p}")
        if self.sparsity not in ("kl", "l1"):
            raise TrainingError(f"unknown sparsity {self.sparsity!r}; choose kl or l1")
        if self.sparsity == "kl" and self.sparsity_weight > 0 and self.activation != "sigmoid":
            raise TrainingError("the KL sparsity penalty needs activation 'sigmoid'; use sparsity = 'l1' otherwise")
        if not 0.0 < self.sparsity_target < 1.0:
            raise TrainingError(f"sparsity_target must be in (0, 1), got {self.sparsity_target}")
        if self.kernel_dim < 0 or self.kernel_weight < 0:
            raise TrainingError("kernel_dim and kernel_weight must not be negative")
        if self.kernel_dim > 0 and self.pretrain_epochs > 0:
            raise TrainingError("greedy pretraining does not support local kernels; "
                                "set pretrain_epochs or kernel_dim to 0")
        if self.pretrain not in PRETRAINS:
            raise TrainingError(f"unknown pretrain {self.pretrain!r}; choose {' or '.join(PRETRAINS)}")
        if self.pretrain == "rbm" and self.pretrain_epochs > 0 and self.activation != "sigmoid":
            raise TrainingError("RBM pretraining gives sigmoid hidden units; set activation = 'sigmoid'")
        if self.cd_steps < 1 or self.cd_lr <= 0 or not 0.0 <= self.cd_momentum < 1.0 or self.cd_weight_decay < 0:
            raise TrainingError("cd_steps must be >= 1, cd_lr positive, cd_momentum in [0, 1), cd_weight_decay >= 0")
        if self.cd_steps_every < 0:
            raise TrainingError(f"cd_steps_every must be >= 0, got {self.cd_steps_every}")
        if self.conditional and self.name != "rbm":
            raise TrainingError(f"conditional applies to the rbm model only; set conditional = false for {self.name}")
        if self.name == "rbm" and (self.kernel_dim > 0 or self.pretrain_epochs > 0):
            raise TrainingError("the rbm model takes neither local kernels nor pretraining; set kernel_dim and "
                                "pretrain_epochs to 0")


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
                w, b = ridge_closed_form(x, y, w0, b0, ridge, bias_ridge)
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
    the distinct pairs in CSR order, and ``values_at_entries[inverse]`` answers the pairs as given.
    """
    import scipy.sparse as sp

    from recae.models.batches import sparse_rows

    vectors = np.asarray(vectors, dtype=np.int64)
    units = np.asarray(units, dtype=np.int64)
    unique_vectors, position = np.unique(vectors, return_inverse=True)
    keys, inverse = np.unique(position * n_units + units, return_inverse=True)
    entry_rows, entry_units = keys // n_units, keys % n_units
    indptr = np.zeros(unique_vectors.size + 1, dtype=np.int64)
    np.cumsum(np.bincount(entry_rows, minlength=unique_vectors.size), out=indptr[1:])
    csr = sp.csr_matrix(
        (np.ones(keys.size, np.float32), entry_units, indptr), shape=(unique_vectors.size, n_units)
    )
    return unique_vectors, sparse_rows(csr), inverse.reshape(-1)
