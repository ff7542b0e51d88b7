"""Mult-VAE (Liang, Krishnan, Hoffman, Jebara, WWW 2018): a variational autoencoder for implicit top-N.

A user is the set of films they liked, x_u in {0, 1}^n_items. The model, read top to bottom:

    x~ = dropout_0.5(x / ||x||_2)                 input: L2-normalised clicks, half of them dropped in training
    h  = tanh(x~ W_1 + b_1)                       (batch, 600)   sparse product: cost ~ nnz(x) * 600
    [mu, logvar] = h W_2 + b_2                    (batch, 2 * 200)
    z  = mu + eps * exp(logvar / 2), eps ~ N(0, I) in training; z = mu when scoring
    g  = tanh(z W_3 + b_3)                        (batch, 600)
    pi = softmax(g W_4 + b_4)                     (batch, n_items): a multinomial over every item

Loss per user (the negative ELBO with an annealed KL weight), averaged over the batch:

    L_u = - sum_i x_ui log pi_ui  +  beta * KL( N(mu_u, diag exp(logvar_u)) || N(0, I) )
    KL  = 1/2 sum_k ( -logvar_k + exp(logvar_k) + mu_k^2 - 1 )
    beta = min(beta_cap, step / total_anneal_steps)     (step = gradient updates so far)

Cost: the first layer reads only the observed clicks (a sparse CSR product, as the autoencoders do), so the
encoder grows with the number of ratings. The decoder's output is dense over items, (batch, n_items): the
softmax needs every item's logit, which is inherent to Mult-VAE (memory is bounded by ``batch_users``, never
users x items). Training: Adam (lr 1e-3, no weight decay), user batches of 500, early stopping on the validation
users' NDCG@100 (``recae.training.multvae``; the weights of the best epoch are kept). Data and metrics:
``recae.evaluation.clicks``.

Files: ``recae.artifacts.multvae_files`` writes and reads a trained one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recae.errors import TrainingError, UnknownMovieError
from recae.models.autoencoders import sparse_input_matmul
from recae.models.batches import SparseRows, sparse_rows
from recae.settings import strict_settings

# --- configuration ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultVAEConfig:
    """The network's shape: [n_items -> hidden -> 2 * latent] encoder, [latent -> hidden -> n_items] decoder."""

    hidden: int = 600  # width of the encoder's and the decoder's hidden layer
    latent: int = 200  # dimension of z
    dropout: float = 0.5  # share of the input clicks dropped in training (survivors scaled by 1 / (1 - p))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MultVAEConfig:
        return cls(**strict_settings(cls, data, "Mult-VAE"))

    def validate(self) -> None:
        """Raise TrainingError naming the first bad setting and what is allowed."""
        for label, size in (("hidden", self.hidden), ("latent", self.latent)):
            if size < 1:
                raise TrainingError(f"{label} must be at least 1, got {size}")
        if not 0.0 <= self.dropout < 1.0:
            raise TrainingError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class MultVAETrainConfig:
    """How to train Mult-VAE; defaults are the reference code's, plus ``patience`` (it keeps the best of 200)."""

    epochs: int = 200  # most passes over the training users
    batch_users: int = 500  # users per gradient step (the last, partial batch is kept)
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam L2 weight decay (the paper's Mult-VAE uses none)
    beta_cap: float = 0.2  # largest KL weight
    total_anneal_steps: int = 200_000  # gradient steps over which beta grows linearly from 0 (0: beta_cap at once)
    patience: int = 30  # stop after this many epochs without a better validation NDCG (0: never stop early)
    eval_k: int = 100  # early stopping watches the validation users' NDCG@eval_k
    eval_batch_users: int = 2000  # users scored at once in evaluation (bounds memory)
    seed: int = 0  # seeds the weights, the shuffles, the dropout and the reparameterisation noise
    threads: int = 0  # CPU threads (0: torch's default)
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MultVAETrainConfig:
        return cls(**strict_settings(cls, data, "Mult-VAE training"))

    def validate(self) -> None:
        """Raise TrainingError naming the first bad setting and what is allowed."""
        for label, value in (("epochs", self.epochs), ("batch_users", self.batch_users), ("eval_k", self.eval_k),
                             ("eval_batch_users", self.eval_batch_users)):
            if value < 1:
                raise TrainingError(f"{label} must be at least 1, got {value}")
        for label, value in (("total_anneal_steps", self.total_anneal_steps), ("patience", self.patience),
                             ("threads", self.threads)):
            if value < 0:
                raise TrainingError(f"{label} must be at least 0, got {value}")
        if not self.lr > 0:
            raise TrainingError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or self.beta_cap < 0:
            raise TrainingError("weight_decay and beta_cap must be at least 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise TrainingError(f"unknown device {self.device!r}; choose auto, cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise TrainingError("--device cuda was asked for but torch sees no CUDA device; use auto or cpu")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


# --- the model -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class VAEOutput:
    """One forward pass over a batch of users."""

    logits: Tensor  # (batch, n_items) unnormalised log pi
    mu: Tensor  # (batch, latent)
    logvar: Tensor  # (batch, latent)


class MultVAE(nn.Module):
    """The network of the module docstring; ``forward`` takes a sparse batch of clicks (SparseRows)."""

    def __init__(self, n_items: int, config: MultVAEConfig | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config or MultVAEConfig()
        self.config.validate()
        self.n_items = int(n_items)
        hidden, latent = self.config.hidden, self.config.latent
        self.w_in = nn.Parameter(torch.empty(self.n_items, hidden))  # (n_items, hidden), read sparsely
        self.b_in = nn.Parameter(torch.empty(hidden))
        self.to_posterior = nn.Linear(hidden, 2 * latent)  # -> [mu, logvar]
        self.decoder_hidden = nn.Linear(latent, hidden)
        self.decoder_out = nn.Linear(hidden, self.n_items)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Glorot-uniform weights, biases ~ N(0, 0.001^2) truncated at 2 sd (the reference code's choice)."""
        weights = [self.w_in, self.to_posterior.weight, self.decoder_hidden.weight, self.decoder_out.weight]
        biases = [self.b_in, self.to_posterior.bias, self.decoder_hidden.bias, self.decoder_out.bias]
        for weight in weights:
            nn.init.xavier_uniform_(weight, generator=generator)  # fan-symmetric, so (in, out) or (out, in) alike
        for bias in biases:
            nn.init.trunc_normal_(bias, std=1e-3, a=-2e-3, b=2e-3, generator=generator)

    def normalised_input(self, clicks: SparseRows, generator: torch.Generator | None = None) -> SparseRows:
        """x / ||x||_2 per user, then (training only) dropout of clicks with survivors scaled by 1 / (1 - p)."""
        squares = torch.zeros(clicks.n_rows, dtype=clicks.values.dtype, device=clicks.values.device)
        squares.index_add_(0, clicks.row_of, clicks.values * clicks.values)
        values = clicks.values / squares.sqrt().clamp_min(1e-12)[clicks.row_of]  # (nnz,)
        p = self.config.dropout
        if self.training and p > 0 and clicks.nnz:
            keep = torch.rand(clicks.nnz, generator=generator, device=values.device) >= p
            values = values * keep.to(values.dtype) / (1.0 - p)
        return clicks.with_values(values)

    def encode(self, clicks: SparseRows, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Sparse clicks (batch, n_items) -> (mu, logvar), each (batch, latent)."""
        x = self.normalised_input(clicks, generator)
        h = torch.tanh(sparse_input_matmul(x, self.w_in) + self.b_in)  # (batch, hidden)
        stats = self.to_posterior(h)  # (batch, 2 * latent)
        return stats[:, : self.config.latent], stats[:, self.config.latent :]

    def encode_dense(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The same encoder (no dropout) on a dense (batch, n_items) click matrix: for tests and tiny data."""
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        stats = self.to_posterior(torch.tanh(x @ self.w_in + self.b_in))
        return stats[:, : self.config.latent], stats[:, self.config.latent :]

    def decode(self, z: Tensor) -> Tensor:
        """z (batch, latent) -> logits (batch, n_items); dense over items (the softmax needs them all)."""
        return self.decoder_out(torch.tanh(self.decoder_hidden(z)))

    def forward(self, clicks: SparseRows, generator: torch.Generator | None = None) -> VAEOutput:
        mu, logvar = self.encode(clicks, generator)
        if self.training:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)  # reparameterisation
        else:
            z = mu
        return VAEOutput(self.decode(z), mu, logvar)


# --- the loss (pure) -------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class VAELoss:
    """Batch means of the negative ELBO and its two parts."""

    total: Tensor  # neg_ll + beta * kl
    neg_ll: Tensor  # mean_u - sum_i x_ui log softmax(logits_u)_i
    kl: Tensor  # mean_u KL(q(z | x_u) || N(0, I))


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """(batch,) KL(N(mu, diag exp(logvar)) || N(0, I)) = 1/2 sum_k (-logvar_k + exp(logvar_k) + mu_k^2 - 1)."""
    return 0.5 * (-logvar + torch.exp(logvar) + mu.pow(2) - 1.0).sum(dim=1)


def multvae_loss(logits: Tensor, clicks: SparseRows, mu: Tensor, logvar: Tensor, beta: float) -> VAELoss:
    """Negative ELBO of Mult-VAE, averaged over the batch (see the module docstring for the formula).

    ``clicks`` are the users' observed clicks x (batch, n_items); only its entries enter the likelihood, so
    ``-sum_i x_ui log pi_ui`` is a gather of log pi at the clicks (the log-softmax itself is dense).
    """
    batch = logits.shape[0]
    log_pi = F.log_softmax(logits, dim=1)  # (batch, n_items)
    neg_ll = -(log_pi[clicks.row_of, clicks.col] * clicks.values).sum() / batch
    kl = gaussian_kl(mu, logvar).mean()
    return VAELoss(total=neg_ll + beta * kl, neg_ll=neg_ll, kl=kl)


def anneal_beta(step: int, total_anneal_steps: int, beta_cap: float) -> float:
    """KL weight after ``step`` updates: min(beta_cap, step / total_anneal_steps), or beta_cap when total is 0."""
    if total_anneal_steps <= 0:
        return beta_cap
    return min(beta_cap, step / total_anneal_steps)


# --- a trained model -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    movie_id: int
    score: float  # the item's logit (higher is better; softmax of the logits is pi)


@dataclass(frozen=True, eq=False)
class TrainedMultVAE:
    """A fitted Mult-VAE on CPU, with the external id of each item column."""

    module: MultVAE
    movie_ids: np.ndarray  # (n_items,) movie id of each output column
    train_config: MultVAETrainConfig | None = None
    split: dict[str, Any] | None = None  # how the data were split (recae.evaluation.clicks spec)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def config(self) -> MultVAEConfig:
        return self.module.config

    @property
    def n_items(self) -> int:
        return int(self.movie_ids.size)

    def score(self, fold_in: sp.csr_matrix, batch_users: int = 2000) -> np.ndarray:
        """Logits (batch, n_items) for users given by their clicks (batch, n_items); z = mu, no dropout."""
        return score_users(self.module, fold_in, batch_users)

    def recommend(self, liked_movie_ids: list[int], n: int = 10) -> list[Recommendation]:
        """Top ``n`` films for a new user who liked ``liked_movie_ids`` (films the model does not know are ignored;
        UnknownMovieError when none is known). The liked films themselves are never recommended."""
        cols = np.searchsorted(self.movie_ids, np.asarray(liked_movie_ids, dtype=np.int64))
        cols = np.minimum(cols, self.n_items - 1)
        known = np.unique(cols[self.movie_ids[cols] == np.asarray(liked_movie_ids, dtype=np.int64)])
        if known.size == 0:
            raise UnknownMovieError(f"none of the films {list(liked_movie_ids)[:10]} is among the model's "
                                    f"{self.n_items} films")
        fold_in = sp.csr_matrix((np.ones(known.size, np.float32), known, [0, known.size]), shape=(1, self.n_items))
        scores = self.score(fold_in)[0]
        scores[known] = -np.inf
        top = np.argsort(-scores, kind="stable")[: min(n, self.n_items - known.size)]
        return [Recommendation(int(self.movie_ids[c]), float(scores[c])) for c in top]


def score_users(module: MultVAE, fold_in: sp.csr_matrix, batch_users: int = 2000) -> np.ndarray:
    """(n, n_items) logits for the users whose clicks are ``fold_in`` (n, n_items), ``batch_users`` at a time."""
    device = next(module.parameters()).device
    fold_in = sp.csr_matrix(fold_in, dtype=np.float32)
    was_training = module.training
    module.eval()
    out = np.empty(fold_in.shape, dtype=np.float32)
    try:
        with torch.no_grad():
            for start in range(0, fold_in.shape[0], max(batch_users, 1)):
                rows = np.arange(start, min(start + batch_users, fold_in.shape[0]))
                block = sparse_rows(fold_in, rows).to(device)
                out[rows] = module(block).logits.float().cpu().numpy()
    finally:
        module.train(was_training)
    return out
