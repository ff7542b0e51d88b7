"""The published networks' forward passes in numpy (float32): serving runs a model without importing torch.

A published model file holds the torch modules' state dicts (``model/`` and ``partner/`` in weights.safetensors).
:func:`network_from_arrays` reads the same tensor names into a numpy twin of the module that wrote them, and every
twin answers the :class:`Network` contract that ``recae.artifacts.trained_model.TrainedModel`` scores with. The
torch modules answer it too, through ``recae.artifacts.torch_network.TorchNetwork``, so training and serving share
one scorer, and ``tests/artifacts/test_inference.py`` checks that both forms agree to 1e-5.

- :class:`AutoEncoderNet` (stacked, sparse, denoising, contractive: they differ only in training)::

      h_1 = act(x W_in + b_in)   h_l = act(h_{l-1} W_l^T + b_l)   g_l = act(g_{l+1} V_l^T + c_l)
      rhat_u = out_act(g_1 . W_out[u] + b_out[u])

  a local kernel left in a file (``kernels.*``) is folded into its weight at load, as ``bake_kernels`` does.
- :class:`RbmNet` (the RBM for CF): ``h = sigmoid(c + sum_u W[r_u, u] (+ D . r))``, then the expected rating under
  the visible softmax ``sum_k level_k softmax_k(b[k, u] + h . W[k, u])``.

Cost per scored vector: one sparse product (nnz x h_1) and dense products of the layers' sizes; the sparse input
product is scipy's, the dense ones BLAS (numpy's threads). Mult-VAE models are not published (``recae vae`` writes
a folder of its own), so they have no twin here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from recae.models.model_config import ModelConfig
from recae.models.ridge import ridge_closed_form, ridge_iterative_numpy

_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805
#: float32 values gathered at once when predicting at (vector, unit) entries: bounds the temporaries (16 MB).
_GATHER = 1 << 22


def _sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-z) overflows to inf for very negative z: 1 / inf is the right 0
        out = np.exp(-z)
    out += 1
    return np.reciprocal(out, out=out)


def _expm1_negative(z: np.ndarray) -> np.ndarray:
    return np.expm1(np.minimum(z, 0))  # only where z <= 0 is it used: no overflow for large z


ACTIVATIONS = {
    "sigmoid": _sigmoid,
    "relu": lambda z: np.maximum(z, 0),
    "elu": lambda z: np.where(z > 0, z, _expm1_negative(z)),
    "selu": lambda z: _SELU_SCALE * np.where(z > 0, z, _SELU_ALPHA * _expm1_negative(z)),
    "tanh": np.tanh,
    "identity": lambda z: z,
}
#: act'(z) from z and h = act(z) (the iterative fold-in's gradient).
SLOPES = {
    "sigmoid": lambda z, h: h * (1 - h),
    "relu": lambda z, h: (z > 0).astype(z.dtype),
    "elu": lambda z, h: np.where(z > 0, 1.0, h + 1),
    "selu": lambda z, h: np.where(z > 0, _SELU_SCALE, h + _SELU_SCALE * _SELU_ALPHA),
    "tanh": lambda z, h: 1 - h**2,
    "identity": lambda z, h: np.ones_like(z),
}


class Network(Protocol):
    """What a scorer needs of a network, numpy in and numpy out (float32). ``features`` are the decoder's last
    hidden layer (batch, h_1); a ``pattern`` is a CSR matrix whose rows are the feature rows and whose entries are
    the units to predict (``recae.models.vectors.pairs_csr``)."""

    config: ModelConfig

    @property
    def fallback(self) -> np.ndarray: ...  # (n_outputs,) prediction of a vector with no rating: the unit's mean

    def representation(self) -> np.ndarray: ...  # (n_outputs, width) each output unit's weights

    def code_of(self, block: sp.csr_matrix) -> np.ndarray: ...  # (batch, h_L) the encoder's code

    def features_of(self, block: sp.csr_matrix) -> np.ndarray: ...  # (batch, h_1)

    def output_at(self, feats: np.ndarray, pattern: sp.csr_matrix) -> np.ndarray: ...  # (nnz,)

    def output_dense(self, feats: np.ndarray) -> np.ndarray: ...  # (batch, n_outputs)

    def unit_scores(self, feats: np.ndarray, units: np.ndarray) -> np.ndarray: ...  # (len(units), n_vectors)

    def fold_in_unit(self, feats: np.ndarray, cols: np.ndarray, values: np.ndarray, prior: int | None,
                     ridge: float, bias_ridge: float) -> np.ndarray: ...  # (n_vectors,) a new output unit

    def arrays(self) -> dict[str, np.ndarray]: ...  # the state dict it was read from (names as in the file)


def _float32_block(block: sp.csr_matrix) -> sp.csr_matrix:
    return block if block.dtype == np.float32 else block.astype(np.float32)


def _entries(pattern: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(row_of, col) of every entry of ``pattern`` in CSR order."""
    row_of = np.repeat(np.arange(pattern.shape[0], dtype=np.int64), np.diff(pattern.indptr))
    return row_of, np.asarray(pattern.indices, dtype=np.int64)


def _gathered_dots(left: np.ndarray, right: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n,) ``left[rows[e]] . right[cols[e]]`` in float32, a bounded chunk of entries at a time."""
    out = np.empty(rows.size, np.float32)
    step = max(1, _GATHER // max(left.shape[1], 1))
    for start in range(0, rows.size, step):
        part = slice(start, start + step)
        out[part] = np.einsum("ij,ij->i", left[rows[part]], right[cols[part]])
    return out


def _softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    out = logits - logits.max(axis=axis, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


@dataclass(frozen=True, eq=False)
class AutoEncoderNet:
    """The stacked autoencoder's forward pass (every autoencoder kind that can be published)."""

    config: ModelConfig
    w_in: np.ndarray  # (n_inputs, h_1), the kernel folded in
    b_in: np.ndarray  # (h_1,)
    encoder: tuple[tuple[np.ndarray, np.ndarray], ...]  # (out, in) weight and (out,) bias per layer
    decoder: tuple[tuple[np.ndarray, np.ndarray], ...]
    w_out: np.ndarray  # (n_outputs, h_1)
    b_out: np.ndarray  # (n_outputs,)
    fallback: np.ndarray  # (n_outputs,)
    input_mean: np.float32
    state: dict[str, np.ndarray] = field(repr=False)

    def _act(self, z: np.ndarray) -> np.ndarray:
        return ACTIVATIONS[self.config.activation](z)

    def _out_act(self, z: np.ndarray) -> np.ndarray:
        return ACTIVATIONS[self.config.output_activation](z)

    def representation(self) -> np.ndarray:
        return self.w_out

    def arrays(self) -> dict[str, np.ndarray]:
        return self.state

    def code_of(self, block: sp.csr_matrix) -> np.ndarray:
        block = _float32_block(block)
        if self.config.center_inputs:
            block = sp.csr_matrix((block.data - self.input_mean, block.indices, block.indptr), shape=block.shape)
        h = self._act(np.asarray(block @ self.w_in) + self.b_in)  # (batch, h_1)
        for weight, bias in self.encoder:
            h = self._act(h @ weight.T + bias)
        return h

    def features(self, code: np.ndarray) -> np.ndarray:
        g = code
        for weight, bias in self.decoder:
            g = self._act(g @ weight.T + bias)
        return g

    def features_of(self, block: sp.csr_matrix) -> np.ndarray:
        return self.features(self.code_of(block))

    def output_at(self, feats: np.ndarray, pattern: sp.csr_matrix) -> np.ndarray:
        rows, cols = _entries(pattern)
        return self._out_act(_gathered_dots(feats, self.w_out, rows, cols) + self.b_out[cols])

    def output_dense(self, feats: np.ndarray) -> np.ndarray:
        return self._out_act(feats @ self.w_out.T + self.b_out)

    def unit_scores(self, feats: np.ndarray, units: np.ndarray) -> np.ndarray:
        units = np.asarray(units, dtype=np.int64)
        scores = self.w_out[units] @ feats.T  # (len(units), n_vectors), row-major
        scores += self.b_out[units][:, None]
        return self._out_act(scores)

    @cached_property
    def average_unit(self) -> tuple[np.ndarray, float]:
        """The average output unit's (h_1,) float64 row and bias: a new user's prior (computed once, not per
        request: it reads every unit's weights)."""
        return self.w_out.mean(0).astype(np.float64), float(self.b_out.mean())

    def fold_in_unit(self, feats: np.ndarray, cols: np.ndarray, values: np.ndarray, prior: int | None,
                     ridge: float, bias_ridge: float) -> np.ndarray:
        """A new output unit's decoder row and bias by ridge regression towards the prior (recae.models.ridge)."""
        if prior is None:
            w0, b0 = self.average_unit
        else:
            w0, b0 = self.w_out[prior].astype(np.float64), float(self.b_out[prior])
        w, b = w0, b0
        if cols.size:
            x = feats[np.asarray(cols, dtype=np.int64)].astype(np.float64)  # (n_rated, h_1)
            y = np.asarray(values, dtype=np.float64)
            name = self.config.output_activation
            if name == "identity":
                w, b = ridge_closed_form(x, y, w0, b0, ridge, bias_ridge)
            else:
                w, b = ridge_iterative_numpy(x, y, w0, b0, ridge, bias_ridge, ACTIVATIONS[name], SLOPES[name])
        return self._out_act(feats @ w.astype(np.float32) + np.float32(b))  # no float64 copy of every feature


@dataclass(frozen=True, eq=False)
class RbmNet:
    """The RBM for CF's scoring passes (recae.models.rbm_cf.RatingRBM)."""

    config: ModelConfig
    weight: np.ndarray  # (K, n_units, F)
    visible_bias: np.ndarray  # (K, n_units)
    hidden_bias: np.ndarray  # (F,)
    cond_weight: np.ndarray | None  # (n_units, F), the conditional RBM's D
    levels: np.ndarray  # (K,) float32
    fallback: np.ndarray  # (n_units,)
    state: dict[str, np.ndarray] = field(repr=False)

    def level_index(self, values: np.ndarray) -> np.ndarray:
        """Index of the nearest rating level of each value (torch.bucketize on the midpoints)."""
        midpoints = (self.levels[1:] + self.levels[:-1]) / 2
        return np.searchsorted(midpoints, np.asarray(values, dtype=np.float32), side="left")

    def representation(self) -> np.ndarray:
        return self.weight.transpose(1, 0, 2).reshape(self.weight.shape[1], -1)

    def arrays(self) -> dict[str, np.ndarray]:
        return self.state

    def code_of(self, block: sp.csr_matrix) -> np.ndarray:
        """p(h | V, r) with r the vectors' own rated units: ``c + sum_u W[r_u, u] (+ D . r)``."""
        k, n, f = self.weight.shape
        flat_index = self.level_index(block.data) * n + block.indices
        picks = sp.csr_matrix((np.ones(block.nnz, np.float32), flat_index, block.indptr), shape=(block.shape[0], k * n))
        z = np.asarray(picks @ self.weight.reshape(k * n, f)) + self.hidden_bias  # (batch, F)
        if self.cond_weight is not None:
            rated = sp.csr_matrix((np.ones(block.nnz, np.float32), block.indices, block.indptr), shape=block.shape)
            z += np.asarray(rated @ self.cond_weight)
        return _sigmoid(z)

    def features_of(self, block: sp.csr_matrix) -> np.ndarray:
        return self.code_of(block)

    def output_at(self, feats: np.ndarray, pattern: sp.csr_matrix) -> np.ndarray:
        rows, cols = _entries(pattern)
        logits = np.stack([_gathered_dots(feats, self.weight[k], rows, cols) + self.visible_bias[k, cols]
                           for k in range(self.weight.shape[0])], axis=1)  # (nnz, K)
        return _softmax(logits, 1) @ self.levels

    def output_dense(self, feats: np.ndarray) -> np.ndarray:
        logits = np.stack([feats @ self.weight[k].T + self.visible_bias[k] for k in range(self.weight.shape[0])],
                          axis=1)  # (batch, K, n_units)
        return np.einsum("bku,k->bu", _softmax(logits, 1), self.levels)

    def unit_scores(self, feats: np.ndarray, units: np.ndarray) -> np.ndarray:
        units = np.asarray(units, dtype=np.int64)
        logits = np.stack([self.weight[k, units] @ feats.T + self.visible_bias[k, units][:, None]
                           for k in range(self.weight.shape[0])])  # (K, len(units), n_vectors)
        return np.einsum("kum,k->um", _softmax(logits, 0), self.levels)

    @cached_property
    def average_unit(self) -> tuple[np.ndarray, np.ndarray]:
        """The average unit's (K, F) weights and (K,) biases: a new unit's prior (computed once)."""
        return self.weight.mean(1), self.visible_bias.mean(1)

    def fold_in_unit(self, feats: np.ndarray, cols: np.ndarray, values: np.ndarray, prior: int | None,
                     ridge: float, bias_ridge: float = 0.0) -> np.ndarray:
        """A new unit's (K, F) weights and (K,) biases by softmax regression on the rated vectors' codes, pulled
        towards the prior (its own row when known, else the average unit's) with ``ridge``, as RatingRBM does."""
        if prior is None:
            w0, b0 = self.average_unit
        else:
            w0, b0 = self.weight[:, prior], self.visible_bias[:, prior]
        w, b = w0, b0
        if np.asarray(cols).size:
            w, b = _softmax_ridge(feats[np.asarray(cols, dtype=np.int64)], self.level_index(values), w0, b0, ridge)
        return _softmax((feats @ w.T + b).astype(np.float32), 1) @ self.levels


def _softmax_ridge(x: np.ndarray, target: np.ndarray, w0: np.ndarray, b0: np.ndarray,
                   ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """``min sum_j CE(softmax(x_j W^T + b), target_j) + ridge (||W - W0||^2 + ||b - b0||^2)`` by L-BFGS."""
    from scipy.optimize import minimize

    x = np.asarray(x, dtype=np.float64)
    k, f = w0.shape
    onehot = np.zeros((target.size, k))
    onehot[np.arange(target.size), target] = 1.0
    start = np.concatenate([np.asarray(w0, np.float64).ravel(), np.asarray(b0, np.float64)])

    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = p[:k * f].reshape(k, f), p[k * f:]
        logits = x @ w.T + b  # (n_rated, K)
        top = logits.max(1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(1))
        delta_w, delta_b = w - w0, b - b0
        value = float((log_norm - logits[np.arange(target.size), target]).sum()
                      + ridge * ((delta_w**2).sum() + (delta_b**2).sum()))
        grad_logits = np.exp(logits - log_norm[:, None]) - onehot
        grad = np.concatenate([(grad_logits.T @ x + 2 * ridge * delta_w).ravel(), grad_logits.sum(0) + 2 * ridge * delta_b])
        return value, grad

    found = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 500, "gtol": 1e-10, "ftol": 1e-15})
    return found.x[:k * f].reshape(k, f), found.x[k * f:]


# --- reading a state dict ---------------------------------------------------------------------------------------


def expected_shapes(config: ModelConfig, n_units: int) -> dict[str, tuple[int, ...]]:
    """Every tensor a module of ``config`` over ``n_units`` units has in its state dict, with its shape (the
    modules' constructors in recae.models, written out: loading checks a file against it without building one)."""
    sizes = config.hidden
    if config.name == "rbm":
        k, f = len(config.rating_levels), sizes[0]
        shapes = {"weight": (k, n_units, f), "visible_bias": (k, n_units), "hidden_bias": (f,),
                  "levels": (k,), "fallback": (n_units,)}
        if config.conditional:
            shapes["cond_weight"] = (n_units, f)
        return shapes
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    encoder = [(b, a) for a, b in pairs]  # Linear(a, b): weight (b, a)
    decoder = [(a, b) for a, b in reversed(pairs)]  # Linear(b, a): weight (a, b)
    shapes: dict[str, tuple[int, ...]] = {"w_in": (n_units, sizes[0]), "b_in": (sizes[0],),
                                          "w_out": (n_units, sizes[0]), "b_out": (n_units,),
                                          "fallback": (n_units,), "input_mean": ()}
    for prefix, layers in (("encoder", encoder), ("decoder", decoder)):
        for i, (n_out, n_in) in enumerate(layers):
            shapes[f"{prefix}.{i}.weight"] = (n_out, n_in)
            shapes[f"{prefix}.{i}.bias"] = (n_out,)
    if config.kernel_dim > 0:
        layers_io = {"in": (n_units, sizes[0]), "out": (sizes[0], n_units),
                     **{f"enc{i}": (n_in, n_out) for i, (n_out, n_in) in enumerate(encoder)},
                     **{f"dec{i}": (n_in, n_out) for i, (n_out, n_in) in enumerate(decoder)}}
        for name, (n_in, n_out) in layers_io.items():
            shapes[f"kernels.{name}_u"] = (n_in, config.kernel_dim)
            shapes[f"kernels.{name}_v"] = (n_out, config.kernel_dim)
    return shapes


def _kernel(state: dict[str, np.ndarray], name: str) -> np.ndarray:
    """K (n_in, n_out) = max(0, 1 - ||u_i - v_j||^2) of layer ``name`` (AutoEncoder.kernel)."""
    u, v = state[f"kernels.{name}_u"], state[f"kernels.{name}_v"]
    squared = (u**2).sum(1, keepdims=True) + (v**2).sum(1) - 2.0 * (u @ v.T)
    return np.maximum(1.0 - squared, 0.0).astype(np.float32)


def network_from_arrays(config: ModelConfig, state: dict[str, np.ndarray], n_units: int, prefix: str = "") -> Network:
    """The numpy network of ``config`` from its module's state dict (names without ``prefix``, ``model/`` in a file).

    ValueError naming the first missing, unexpected, misshapen or non-float32 tensor: a file that does not fit its
    meta.json is refused here, as torch's ``load_state_dict(strict=True)`` would refuse it.
    """
    if config.name == "rbm" and len(config.hidden) != 1:  # what RatingRBM's constructor refuses, refused alike
        raise ValueError(f"the rbm model has one hidden layer; got hidden = {list(config.hidden)}")
    if config.name == "rbm" and not config.rating_levels:
        raise ValueError("the rbm model needs rating_levels (the trainer sets them from the training ratings)")
    shapes = expected_shapes(config, n_units)
    missing, unexpected = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    if missing or unexpected:
        found = [f"{what} {names}" for what, names in (("missing", missing), ("unexpected", unexpected)) if names]
        raise ValueError(f"{prefix}: tensors {' and '.join(found)} for a {config.name} model of hidden "
                         f"{list(config.hidden)}")
    for key, shape in shapes.items():
        array = state[key]
        if array.dtype != np.float32:
            raise ValueError(f"{prefix}{key} is {array.dtype}, expected float32")
        if tuple(array.shape) != shape:
            raise ValueError(f"{prefix}{key} has shape {tuple(array.shape)}, expected {shape}")
    if config.name == "rbm":
        return RbmNet(config=config, weight=state["weight"], visible_bias=state["visible_bias"],
                      hidden_bias=state["hidden_bias"], cond_weight=state.get("cond_weight"), levels=state["levels"],
                      fallback=state["fallback"], state=state)
    kernels = config.kernel_dim > 0

    def layer(prefix: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        weight = state[f"{prefix}.{i}.weight"]
        if kernels:
            weight = weight * _kernel(state, f"{prefix[:3]}{i}").T
        return weight, state[f"{prefix}.{i}.bias"]

    n_layers = len(config.hidden) - 1
    return AutoEncoderNet(
        config=config,
        w_in=state["w_in"] * _kernel(state, "in") if kernels else state["w_in"],
        b_in=state["b_in"],
        encoder=tuple(layer("encoder", i) for i in range(n_layers)),
        decoder=tuple(layer("decoder", i) for i in range(n_layers)),
        w_out=state["w_out"] * _kernel(state, "out").T if kernels else state["w_out"],
        b_out=state["b_out"], fallback=state["fallback"], input_mean=np.float32(state["input_mean"]), state=state)
