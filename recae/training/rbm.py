"""Training the RBMs: the RBM for CF by contrastive divergence, and the RBM pretraining of a deep autoencoder.

The networks and their CD statistics are ``recae.models.rbm_cf`` and ``recae.models.rbm``; what is here reads the
training configuration and runs the one early-stopping loop (``recae.training.loop``), so the models never import
training. The formulas are in those modules' docstrings.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from recae.artifacts.train_config import TrainConfig
from recae.errors import TrainingError
from recae.models.batches import batch_plan, iterate_batches, make_batch, oriented_csr, sparse_rows
from recae.models.rbm import RBM, CDSettings, EpochStats, ObservedGaussianRBM, momentum_step, train_rbm
from recae.models.rbm_cf import RatingRBM, cd_steps_at, init_visible_bias, rating_levels
from recae.training.loop import (
    Epoch,
    EpochReport,
    FitResult,
    rmse_fit_result,
    rmse_report,
    rmse_stopping,
    run_epochs,
    state_dict_copy,
)
from recae.training.validation import unit_means, validation_rmse

if TYPE_CHECKING:
    from recae.models.autoencoders import AutoEncoder, ModelConfig
    from recae.store.matrix import RatingMatrix

log = logging.getLogger(__name__)

#: Batch budget when ``batch_ratings`` is 0 (auto): the ratings of about AUTO_BATCH_VECTORS average vectors, but at
#: least AUTO_BATCHES_PER_EPOCH batches an epoch, within AUTO_BATCH_BOUNDS. Chosen on validation carves (RBM section of
#: tests/benchmarks/README.md): ml-1m's I-RBM at 8192 / 27k / 54k / 108k / 216k ratings a batch (116 / 34 / 17 / 8 / 4
#: batches an epoch; 108k ~ 440 films) reached 0.875 / 0.866 / 0.860 / 0.857 / 0.867 (still falling slowly at epoch 26);
#: its U-RBM at 8192 / 16k / 54k (~360 users) / 107k (~720 users) 0.887 / 0.884 / 0.877 / 0.893 (epoch 50, slow);
#: ml-100k u1 was flat from 10 to 5 batches an epoch and, at 4 or fewer, stopped early before it had learned.
AUTO_BATCH_VECTORS = 400
AUTO_BATCHES_PER_EPOCH = 8
AUTO_BATCH_BOUNDS = (8192, 131_072)  # the cap bounds the (batch ratings, F) temporaries of a CD step


def auto_batch_ratings(nnz: int, n_vectors: int) -> int:
    """The batch budget in ratings: min(400 vectors' worth, nnz / 8), within 8192..131072."""
    low, high = AUTO_BATCH_BOUNDS
    wanted = min(AUTO_BATCH_VECTORS * nnz / max(n_vectors, 1), nnz / AUTO_BATCHES_PER_EPOCH)
    return int(min(max(low, math.ceil(wanted)), high))


def fit_rating_rbm(fit_ratings: RatingMatrix, val_ratings: RatingMatrix | None, model_cfg: ModelConfig,
                   train_cfg: TrainConfig, device: torch.device,
                   on_epoch: Callable[[EpochReport], None] | None = None,
                   on_progress: Callable[[str], None] | None = None, *,
                   rated: RatingMatrix | None = None) -> FitResult:
    """Train a RatingRBM by CD with momentum and weight decay; keep the epoch with the best validation RMSE.

    ``train_cfg`` gives epochs, patience, seed and the batch budget in ratings; the CD settings (``cd_lr``,
    ``cd_momentum``, ``cd_weight_decay``, ``cd_steps``, ``cd_steps_every``, ``conditional``) come from ``model_cfg``.
    Momentum starts at 0.5 for the first 5 epochs, as the practical guide advises, then takes ``cd_momentum``.

    ``rated`` (conditional RBM only): pairs known to be rated whose values the model must not read (values
    ignored); r is then the fit pairs plus these, in training and in validation. Without it r is the fit pairs.
    """
    started = time.perf_counter()
    if fit_ratings.nnz == 0:
        raise TrainingError("no training ratings to fit")
    data = oriented_csr(fit_ratings, model_cfg.orientation)  # (n_vectors, n_units)
    with_ratings = int(np.count_nonzero(np.diff(data.indptr)))
    train_cfg = replace(train_cfg, batch_ratings=train_cfg.batch_ratings or auto_batch_ratings(data.nnz, with_ratings))
    val = oriented_csr(val_ratings, model_cfg.orientation) if val_ratings is not None else None
    if not model_cfg.rating_levels:
        model_cfg = replace(model_cfg, rating_levels=rating_levels(data.data))
    if rated is not None and not model_cfg.conditional:
        raise TrainingError("rated pairs need a conditional rbm (conditional = true)")
    pattern = None
    if rated is not None:  # r = fit pairs | rated pairs, as a 0/1 matrix in the oriented space
        pattern = (oriented_csr(rated, model_cfg.orientation) != 0).astype(np.float32) + (data != 0)
        pattern.data[:] = 1.0
    scale = fit_ratings.rating_scale()
    torch.manual_seed(train_cfg.weights_seed)
    module = RatingRBM(model_cfg, data.shape[1], data.shape[1])
    init_visible_bias(module, data)
    with torch.no_grad():
        module.fallback.copy_(torch.from_numpy(unit_means(data, data.shape[1])))
    module.to(device)
    params = module.cd_parameters()
    velocity = [torch.zeros_like(p) for p in params]
    row_ratings = np.diff(data.indptr)

    def cd_epoch(epoch: int) -> tuple[float, float]:
        """One CD pass with momentum and weight decay; (reconstruction RMSE, summed free energy)."""
        momentum = 0.5 if epoch <= 5 else model_cfg.cd_momentum
        steps = cd_steps_at(model_cfg, epoch)
        squared, count, free = 0.0, 0, 0.0
        for group in batch_plan(row_ratings, train_cfg.batch_ratings, seed=train_cfg.weights_seed, epoch=epoch):
            rows = make_batch(data, data, group).inputs.to(device)
            rated_rows = sparse_rows(pattern, group).to(device) if pattern is not None else None
            grads, error = module.cd_gradients(rows, steps, rated_rows)
            with torch.no_grad():
                for param, speed, grad in zip(params, velocity, grads, strict=True):
                    decayed = param is module.weight or (module.conditional and param is module.cond_weight)
                    decay = model_cfg.cd_weight_decay * param if decayed else 0.0
                    speed.mul_(momentum).add_(model_cfg.cd_lr * (grad - decay))
                    param.add_(speed)
                free += float(module.free_energy(rows, rated_rows).sum())
            squared += error
            count += rows.nnz
        train_rmse = math.sqrt(squared / max(count, 1))
        if not math.isfinite(train_rmse):  # the guard watches the reconstruction: validation is only compared
            raise TrainingError(f"rbm training diverged at epoch {epoch}; try a lower cd_lr than {model_cfg.cd_lr:g}")
        return train_rmse, free

    def score() -> float | None:
        if val is None or not val.nnz:
            return None
        if pattern is not None:
            return _rated_validation_rmse(module, data, val, pattern, scale, device)
        return validation_rmse(module, data, val, scale,  # type: ignore[arg-type]
                               batch_ratings=train_cfg.batch_ratings, device=device)

    as_report = rmse_report(train_cfg.epochs)

    def report(done: Epoch[tuple[float, float]]) -> EpochReport:
        train_rmse, free = done.figures
        log.info("rbm epoch %d: reconstruction RMSE %.4f, mean free energy %.3f, validation RMSE %.4f",
                 done.epoch, train_rmse, free / max(data.shape[0], 1), done.score)
        return as_report(Epoch(done.epoch, train_rmse**2, done.score, done.best_score, done.best_epoch,
                               done.seconds))

    stopping = replace(rmse_stopping(train_cfg), lr_decay=1.0)  # CD has no optimizer whose steps could shrink
    outcome = run_epochs(stopping, cd_epoch, score, lambda: state_dict_copy(module), report,
                         restore=module.load_state_dict, on_epoch=on_epoch, started=started)
    return rmse_fit_result(module.eval(), outcome.state, time.perf_counter() - started)


@torch.no_grad()
def _rated_validation_rmse(module: RatingRBM, inputs: sp.csr_matrix, targets: sp.csr_matrix, rated: sp.csr_matrix,
                           scale: tuple[float, float], device: torch.device) -> float:
    """Validation RMSE of clipped predictions when r is ``rated`` rather than the inputs' own pattern."""
    rows = np.flatnonzero(np.diff(targets.indptr))
    squared = 0.0
    for start in range(0, rows.size, 256):
        group = rows[start:start + 256]
        pattern = sparse_rows(targets, group).to(device)
        predicted = module.predict_at(sparse_rows(inputs, group).to(device), pattern,
                                      sparse_rows(rated, group).to(device))
        clipped = predicted.double().clamp(scale[0], scale[1])
        squared += float(((clipped - pattern.values.double()) ** 2).sum())
    return math.sqrt(squared / max(targets.nnz, 1))


def single_network(train_cfg: TrainConfig) -> TrainConfig:
    """The rbm model trains one network per orientation: ``ensemble`` is 1 (a partner of the other orientation
    may still be blended in)."""
    if train_cfg.ensemble <= 1:  # 0: auto, which means one network here
        return train_cfg
    log.warning("the rbm model trains one network; ensemble = %d is read as 1", train_cfg.ensemble)
    return replace(train_cfg, ensemble=1, partner_members=min(train_cfg.partner_members, 1))


def pretrain_with_rbms(module: AutoEncoder, data: sp.csr_matrix, cfg: TrainConfig, epochs: int,
                       device: torch.device, on_progress: Callable[[str], None] | None = None,
                       on_epoch: Callable[[int, EpochStats], None] | None = None) -> list[list[EpochStats]]:
    """Greedy layer-wise RBM pretraining of ``module``'s encoder, unrolled into its decoder (decoder = encoder^T).

    Layer 1: a Gaussian RBM over the observed inputs as the encoder reads them (``center_inputs`` respected);
    layers 2..L: Bernoulli RBMs on the layer below's hidden probabilities. Returns each layer's epoch statistics.
    """
    config = module.config
    if config.activation != "sigmoid":
        raise TrainingError("RBM pretraining gives sigmoid hidden units; set activation = 'sigmoid'")
    settings = CDSettings.of(config)
    sizes = config.hidden
    histories: list[list[EpochStats]] = []
    first = ObservedGaussianRBM(data.shape[1], sizes[0]).to(device)
    histories.append(_train_observed(first, module, data, cfg, settings, epochs, device, on_epoch))
    with torch.no_grad():
        module.w_in.copy_(first.weight)
        module.b_in.copy_(first.hidden_bias)
        module.w_out.copy_(first.weight)  # decoder = encoder^T
        shift = module.input_mean if config.center_inputs else 0.0
        module.b_out.copy_(first.visible_bias + shift)
    if on_progress:
        on_progress(f"RBM-pretrained layer 1 of {len(sizes)}")
    n_layers = len(sizes)
    for layer in range(1, n_layers):
        below = _codes(module, data, layer - 1, cfg, device)  # (n_vectors, h_{l-1}) hidden probabilities
        rbm = RBM(sizes[layer - 1], sizes[layer]).to(device)
        histories.append(train_rbm(rbm, below, settings, epochs, batch_size=100,
                                   seed=cfg.weights_seed + 7919 * layer,
                                   on_epoch=(lambda s, layer=layer: on_epoch(layer + 1, s)) if on_epoch else None))
        enc, dec = module.encoder[layer - 1], module.decoder[n_layers - 1 - layer]
        with torch.no_grad():
            enc.weight.copy_(rbm.weight.t())  # (h_l, h_{l-1})
            enc.bias.copy_(rbm.hidden_bias)
            dec.weight.copy_(rbm.weight)  # (h_{l-1}, h_l): decoder = encoder^T
            dec.bias.copy_(rbm.visible_bias)
        if on_progress:
            on_progress(f"RBM-pretrained layer {layer + 1} of {n_layers}")
    return histories


def _train_observed(rbm: ObservedGaussianRBM, module: AutoEncoder, data: sp.csr_matrix, cfg: TrainConfig,
                    settings: CDSettings, epochs: int, device: torch.device,
                    on_epoch: Callable[[int, EpochStats], None] | None) -> list[EpochStats]:
    if settings.persistent:
        log.info("persistent CD does not apply to the sparse first layer (its visible units differ per vector); "
                 "it uses CD-%d", settings.steps)
    velocity = [torch.zeros_like(p) for p in (rbm.weight, rbm.visible_bias, rbm.hidden_bias)]
    history = []
    was_training = module.training
    module.eval()  # the inputs exactly as the encoder reads them, without corruption noise
    with torch.no_grad():
        initial = torch.zeros(data.shape[1])
        counts = np.bincount(data.indices, minlength=data.shape[1])
        shift = float(module.input_mean) if module.config.center_inputs else 0.0
        sums = np.bincount(data.indices, weights=data.data - shift, minlength=data.shape[1])
        initial = torch.from_numpy(np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)).float()
        rbm.visible_bias.copy_(initial.to(device))  # Gaussian visibles start at each unit's mean input
    for epoch in range(1, epochs + 1):
        squared, count, free, n_vectors = 0.0, 0, 0.0, 0
        for batch in iterate_batches(data, data, cfg.batch_ratings, seed=cfg.weights_seed + 7919, epoch=epoch):
            rows = batch.inputs.to(device)
            rows = module.corrupt(rows)
            grad_w, grad_b, grad_c, error = rbm.cd_gradients(rows, settings.steps)
            momentum_step([rbm.weight, rbm.visible_bias, rbm.hidden_bias], velocity, [grad_w, grad_b, grad_c],
                           settings, settings.momentum_at(epoch), rbm.weight)
            with torch.no_grad():
                free += float(rbm.free_energy(rows).sum())
            squared, count, n_vectors = squared + error, count + rows.nnz, n_vectors + rows.n_rows
        stats = EpochStats(epoch, free / max(n_vectors, 1), squared / max(count, 1))
        if not np.isfinite(stats.reconstruction_error):
            raise TrainingError(f"RBM pretraining diverged at epoch {epoch}; try a lower cd_lr than {settings.lr:g}")
        log.info("rbm layer 1 epoch %d: free energy %.4f, reconstruction error %.4f", epoch, stats.free_energy,
                 stats.reconstruction_error)
        history.append(stats)
        if on_epoch:
            on_epoch(1, stats)
    module.train(was_training)
    return history


@torch.no_grad()
def _codes(module: AutoEncoder, data: sp.csr_matrix, layer: int, cfg: TrainConfig, device: torch.device) -> Tensor:
    """(n_vectors, h_layer) the pretrained encoder's hidden probabilities of every vector at ``layer``."""
    was_training = module.training
    module.eval()
    parts = [module.encode(batch.inputs.to(device)).hidden[layer]
             for batch in iterate_batches(data, data, cfg.batch_ratings, seed=0, epoch=0, shuffle=False)]
    module.train(was_training)
    return torch.cat(parts)
