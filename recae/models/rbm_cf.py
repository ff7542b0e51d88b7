"""The RBM for collaborative filtering (Salakhutdinov, Mnih & Hinton, ICML 2007), item- or user-based.

Each vector (a movie's ratings over users in ``item`` orientation: the I-RBM; a user's over movies in ``user``
orientation: the U-RBM) is one RBM. Its visible units are the units it has ratings for, each a softmax over the K
rating values; every RBM shares the weights ``W[k, u, f]`` of unit u at rating value k to hidden unit f, the visible
biases ``b[k, u]`` and the hidden biases ``c[f]``. Missing ratings are not visible units at all:

    p(h_f = 1 | V) = sigmoid(c_f + sum_{u observed} W[r_u, u, f])                    cost ~ nnz * F
    p(v_u = k | h) = exp(b[k, u] + h . W[k, u]) / sum_l exp(b[l, u] + h . W[l, u])  only at observed u

Training is contrastive divergence (CD-T) over observed ratings only, with momentum and L2 weight decay (Hinton,
UTML TR 2010-003): ``dW = lr * (<v h>_data - <v h>_T) / batch - lr * decay * W``. One epoch costs
O(nnz * K * F) plus one dense update of W per batch, never O(vectors * units).

Prediction (the paper's): the hidden probabilities p_hat = p(h | V) of a vector's observed ratings, then the
expected rating under the visible softmax, ``rhat_u = sum_k level_k * p(v_u = k | p_hat)``.

Conditional RBM (``conditional = true``, the paper's section 4): the hidden units also receive ``D . r``, where r
is the binary vector of the units the vector is known to have rated and D (n_units, F) is learned by CD as well,
``dD = lr * r^T (p(h | V, r)_data - p(h | V_T, r)_T) / batch``; r is conditioned on, never reconstructed. The
signal is new information only where r holds pairs whose values the visibles lack (the paper's Netflix
qualifying pairs). recae never reads test pairs, so the trainer's r is the vector's own training pairs: then
``W[k, u] + D[u]`` could absorb D and the conditional term acts as a weight shared by the K levels of a unit,
with its own decay. Callers that know more pairs (rated, value unknown) pass them as ``rated``.

The module honours the autoencoder scoring contract (``encode`` -> hidden probabilities, ``features`` = identity,
``output_at``/``output_dense``/``unit_scores``, ``fallback``), so TrainedModel, recommend, evaluate and fold-in
score it unchanged. Training it by CD, with early stopping on the validation RMSE only, is
``recae.training.rbm.fit_rating_rbm``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recae.errors import TrainingError
from recae.models.batches import (
    SparseRows,
)

if TYPE_CHECKING:
    from recae.models.autoencoders import Encoded, ModelConfig

log = logging.getLogger(__name__)

#: More distinct rating values than this is not a discrete scale a softmax should model.
MAX_LEVELS = 20
def rating_levels(values: np.ndarray) -> tuple[float, ...]:
    """The K distinct rating values of ``values``, sorted; TrainingError when the scale is not discrete."""
    levels = np.unique(np.round(np.asarray(values, dtype=np.float64), 6))
    if levels.size > MAX_LEVELS:
        raise TrainingError(f"the rbm model needs a discrete rating scale; the training ratings take {levels.size} "
                            f"distinct values (at most {MAX_LEVELS}); set rating_levels in [model]")
    return tuple(float(v) for v in levels)


class RatingRBM(nn.Module):
    """Softmax-visible RBM over observed ratings, with shared weights across vectors (I-RBM or U-RBM)."""

    #: chosen on ml-1m's validation carve (RBMs in tests/benchmarks/README.md): F = 250 learned faster per epoch
    #: than F = 100 and decay 0.003 sat between 0.001 (overfits after ~10 epochs) and 0.01 (slower, 0.897 at epoch
    #: 15, F = 100);
    #: conditional won on the validation carves of ml-100k u1 (0.903 vs 0.912) and ml-1m (0.866 vs 0.868, 27k batches)
    defaults: ClassVar[dict[str, Any]] = {"hidden": (250,), "cd_lr": 0.1, "cd_momentum": 0.9,
                                          "cd_weight_decay": 0.003, "cd_steps": 1, "conditional": True}

    def __init__(self, config: ModelConfig, n_inputs: int, n_outputs: int) -> None:
        super().__init__()
        config.validate()
        if len(config.hidden) != 1:
            raise TrainingError(f"the rbm model has one hidden layer; got hidden = {list(config.hidden)}")
        if not config.rating_levels:
            raise TrainingError("the rbm model needs rating_levels (the trainer sets them from the training ratings)")
        self.config = config
        self.n_inputs = self.n_outputs = self.n_units = int(n_inputs)
        k, f = len(config.rating_levels), config.hidden[0]
        self.weight = nn.Parameter(torch.randn(k, self.n_units, f) * 0.01)  # (K, n_units, F)
        self.visible_bias = nn.Parameter(torch.zeros(k, self.n_units))  # (K, n_units)
        self.hidden_bias = nn.Parameter(torch.zeros(f))  # (F,)
        if config.conditional:
            self.cond_weight = nn.Parameter(torch.zeros(self.n_units, f))  # (n_units, F): D of the conditional RBM
        self.register_buffer("levels", torch.tensor(config.rating_levels, dtype=torch.float32))  # (K,)
        self.register_buffer("fallback", torch.zeros(self.n_units))  # a vector with no rating: the unit's mean

    # -- the scoring contract --

    def level_index(self, values: Tensor) -> Tensor:
        """(nnz,) index of the nearest rating level of each value."""
        midpoints = (self.levels[1:] + self.levels[:-1]) / 2
        return torch.bucketize(values, midpoints)

    def one_hot_index(self, rows: SparseRows, levels: Tensor | None = None) -> Tensor:
        """(nnz,) position ``k * n_units + u`` of each observed rating in the flattened (K * n_units, F) weights."""
        k = self.level_index(rows.values) if levels is None else levels
        return k * self.n_units + rows.col

    @property
    def conditional(self) -> bool:
        return bool(self.config.conditional)

    def rated_input(self, rated: SparseRows) -> Tensor:
        """(batch, F) the conditional term ``c + D . r``: an embedding-bag sum of D over the rated units (``c``
        alone for a plain RBM)."""
        if not self.conditional:
            return self.hidden_bias.expand(rated.n_rows, -1)
        return F.embedding_bag(rated.col, self.cond_weight, rated.crow[:-1], mode="sum") + self.hidden_bias

    def hidden_input(self, rows: SparseRows, levels: Tensor | None = None, rated: SparseRows | None = None) -> Tensor:
        """(batch, F) ``c + sum_{u observed} W[r_u, u] (+ D . r)``: an embedding-bag sum over the vector's ratings;
        r is ``rated`` when given, else the rows' own pattern."""
        flat = self.weight.reshape(-1, self.weight.shape[-1])
        summed = F.embedding_bag(self.one_hot_index(rows, levels), flat, rows.crow[:-1], mode="sum",
                                 include_last_offset=False)
        return summed + self.rated_input(rows if rated is None else rated)

    def hidden_input_soft(self, rows: SparseRows, probs: Tensor, rated: SparseRows | None = None) -> Tensor:
        """(batch, F) hidden input from soft visible states ``probs`` (nnz, K) at the observed units."""
        flat = self.weight.reshape(-1, self.weight.shape[-1])
        k = self.weight.shape[0]
        index = (torch.arange(k, device=rows.col.device)[None, :] * self.n_units + rows.col[:, None]).reshape(-1)
        offsets = rows.crow[:-1] * k
        return F.embedding_bag(index, flat, offsets, mode="sum", per_sample_weights=probs.reshape(-1)) \
            + self.rated_input(rows if rated is None else rated)

    def encode(self, inputs: SparseRows, rated: SparseRows | None = None) -> Encoded:
        """Hidden probabilities p(h | V) (conditional: p(h | V, r)) of each vector's observed ratings (its code)."""
        from recae.models.autoencoders import Encoded

        z = self.hidden_input(inputs, rated=rated)
        return Encoded(hidden=[torch.sigmoid(z)], first_pre=z)

    def features(self, code: Tensor) -> Tensor:
        return code

    def visible_logits(self, h: Tensor, pattern: SparseRows) -> Tensor:
        """(nnz, K) softmax logits ``b[k, u] + h[row] . W[k, u]`` at the pattern's entries (sampled products)."""
        if pattern.nnz == 0:
            return h.new_zeros(0, self.weight.shape[0])
        mask = pattern.csr(torch.zeros(pattern.nnz, dtype=h.dtype, device=h.device))
        parts = [torch.sparse.sampled_addmm(mask, h, self.weight[k].t(), beta=0.0).values()
                 for k in range(self.weight.shape[0])]
        return torch.stack(parts, dim=1) + self.visible_bias[:, pattern.col].t()

    def output_at(self, feats: Tensor, pattern: SparseRows) -> Tensor:
        """(nnz,) expected rating under the visible softmax at the pattern's entries."""
        return torch.softmax(self.visible_logits(feats, pattern), dim=1) @ self.levels

    def output_dense(self, feats: Tensor) -> Tensor:
        """(batch, n_units) expected rating of every unit."""
        logits = torch.einsum("bf,kuf->bku", feats, self.weight) + self.visible_bias[None]
        return torch.einsum("bku,k->bu", torch.softmax(logits, dim=1), self.levels)

    def unit_scores(self, feats: Tensor, units: Tensor) -> Tensor:
        """(len(units), n_vectors) expected ratings of ``units`` for every vector of ``feats`` (item orientation:
        users ``units`` over all movies)."""
        logits = torch.einsum("kuf,mf->kum", self.weight[:, units], feats) + self.visible_bias[:, units, None]
        return torch.einsum("kum,k->um", torch.softmax(logits, dim=0), self.levels)

    def predict_at(self, inputs: SparseRows, pattern: SparseRows, rated: SparseRows | None = None) -> Tensor:
        """(nnz,) predictions at the pattern's entries; a vector with no input rating gets the units' means."""
        out = self.output_at(self.encode(inputs, rated).code, pattern)
        empty = (inputs.crow[1:] - inputs.crow[:-1]) == 0
        return torch.where(empty[pattern.row_of], self.fallback[pattern.col], out)

    @property
    def w_out(self) -> Tensor:
        """(n_units, K * F) each unit's weights: its representation (for ``similar`` and latent views)."""
        return self.weight.permute(1, 0, 2).reshape(self.n_units, -1)

    def fold_in_unit(self, feats: Tensor, cols: np.ndarray, values: np.ndarray, prior: int | None,
                     ridge: float, bias_ridge: float = 0.0) -> Tensor:
        """Expected ratings (n_vectors,) of a new unit with ``values`` at vectors ``cols``: its weights (K, F) and
        biases (K,) fitted by softmax regression on the vectors' hidden probabilities, pulled towards a prior (its
        own row when known, else the average unit's) with ``ridge`` (biases too: ``bias_ridge`` is the
        autoencoders'). A conditional RBM's vectors keep their codes:
        the new unit's D row would only enter them through r, and it is not learned here."""
        if prior is None:
            w0, b0 = self.weight.mean(1), self.visible_bias.mean(1)  # (K, F), (K,)
        else:
            w0, b0 = self.weight[:, prior], self.visible_bias[:, prior]
        w0, b0 = w0.detach().clone(), b0.detach().clone()
        if cols.size:
            x = feats[torch.from_numpy(cols)]  # (n_rated, F)
            target = self.level_index(torch.from_numpy(values))
            w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
            optimizer = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")

            def closure() -> Tensor:
                optimizer.zero_grad()
                loss = F.cross_entropy(x @ w.t() + b, target, reduction="sum") \
                    + ridge * (((w - w0) ** 2).sum() + ((b - b0) ** 2).sum())
                loss.backward()
                return loss

            with torch.enable_grad():
                optimizer.step(closure)
            w0, b0 = w.detach(), b.detach()
        return torch.softmax(feats @ w0.t() + b0, dim=1) @ self.levels

    # -- contrastive divergence --

    def cd_parameters(self) -> list[nn.Parameter]:
        """The parameters CD updates, in the order of :meth:`cd_gradients`' estimates."""
        return [self.weight, self.visible_bias, self.hidden_bias, *([self.cond_weight] if self.conditional else [])]

    def free_energy(self, rows: SparseRows, rated: SparseRows | None = None) -> Tensor:
        """(batch,) ``F(V) = -sum_u b[r_u, u] - sum_f softplus(c_f + sum_u W[r_u, u, f] (+ (D . r)_f))``."""
        index = self.one_hot_index(rows)
        visible = torch.zeros(rows.n_rows, dtype=self.weight.dtype, device=self.weight.device)
        visible.index_add_(0, rows.row_of, self.visible_bias.reshape(-1)[index])
        return -visible - F.softplus(self.hidden_input(rows, rated=rated)).sum(1)

    @torch.no_grad()
    def cd_gradients(self, rows: SparseRows, steps: int,
                     rated: SparseRows | None = None) -> tuple[list[Tensor], float]:
        """CD-``steps`` estimates of (dW, db, dc[, dD]) = <.>_data - <.>_T averaged over the batch's vectors (in
        :meth:`cd_parameters` order), and the squared error of the reconstruction's expected ratings (summed over
        the observed ratings). ``rated`` (default: the rows' pattern) is r of the conditional RBM."""
        n = max(rows.n_rows, 1)
        k_levels, f = self.weight.shape[0], self.weight.shape[2]
        data_index = self.one_hot_index(rows)
        fixed = self.rated_input(rows if rated is None else rated)  # (batch, F) c + D . r: r is conditioned on
        flat = self.weight.reshape(-1, f)
        h_data = torch.sigmoid(F.embedding_bag(data_index, flat, rows.crow[:-1], mode="sum") + fixed)  # (batch, F)
        h = h_data
        probs = None
        for step in range(steps):
            h_sample = torch.bernoulli(h)
            probs = torch.softmax(self.visible_logits(h_sample, rows), dim=1)  # (nnz, K)
            if step < steps - 1:
                sampled = self.one_hot_index(rows, torch.multinomial(probs, 1)[:, 0])
                h = torch.sigmoid(F.embedding_bag(sampled, flat, rows.crow[:-1], mode="sum") + fixed)
            else:  # the last reconstruction stays soft (less sampling noise in the statistics)
                h = torch.sigmoid(self.hidden_input_soft(rows, probs, rated))
        assert probs is not None
        grad_w = torch.zeros(k_levels * self.n_units, f, dtype=h.dtype, device=h.device)
        grad_w.index_add_(0, data_index, h_data[rows.row_of])  # <v h>_data: one row per observed rating
        grad_w = grad_w.view(k_levels, self.n_units, f)
        for k in range(k_levels):  # <v h>_T: a sparse product per level, no (nnz, K, F) temporary
            grad_w[k] -= rows.csr_t(probs[:, k].contiguous()) @ h
        model_index = (torch.arange(k_levels, device=h.device)[None, :] * self.n_units + rows.col[:, None])
        grad_b = torch.zeros(k_levels * self.n_units, dtype=h.dtype, device=h.device)
        grad_b.index_add_(0, data_index, torch.ones_like(rows.values))
        grad_b.index_add_(0, model_index.reshape(-1), -probs.reshape(-1))
        grad_c = h_data.sum(0) - h.sum(0)
        grads = [grad_w.div_(n), grad_b.view_as(self.visible_bias) / n, grad_c / n]
        if self.conditional:  # <r h>_data - <r h>_T: r is the same in both phases
            r = rows if rated is None else rated
            grad_d = torch.zeros_like(self.cond_weight)
            grad_d.index_add_(0, r.col, (h_data - h)[r.row_of])
            grads.append(grad_d.div_(n))
        error = float(((probs @ self.levels - rows.values) ** 2).sum())
        return grads, error


#: The paper's schedule of Gibbs steps: T = 1 at first, then raised gradually to 3, 5 and 9.
STEP_SCHEDULE = (1, 3, 5, 9)


def cd_steps_at(config: ModelConfig, epoch: int) -> int:
    """Gibbs steps T at ``epoch`` (1-based): ``cd_steps``, raised every ``cd_steps_every`` epochs along 1, 3, 5, 9."""
    if config.cd_steps_every <= 0:
        return config.cd_steps
    schedule = [config.cd_steps, *(t for t in STEP_SCHEDULE if t > config.cd_steps)]
    stage = (epoch - 1) // config.cd_steps_every
    return schedule[min(stage, len(schedule) - 1)]


def init_visible_bias(module: RatingRBM, data: sp.csr_matrix) -> None:
    """Visible biases = log of each unit's smoothed share of ratings at each level (Hinton's guide, sec. 8)."""
    k = len(module.config.rating_levels)
    level = module.level_index(torch.from_numpy(data.data.astype(np.float32))).numpy()
    counts = np.zeros((k, data.shape[1]))
    np.add.at(counts, (level, data.indices), 1.0)
    share = (counts + 1.0) / (counts.sum(0, keepdims=True) + k)
    with torch.no_grad():
        module.visible_bias.copy_(torch.from_numpy(np.log(share)).float())
