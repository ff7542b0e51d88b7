"""Training an autoencoder: the masked-MSE epoch step and validation RMSE, run by the one early-stopping loop.

``fit`` trains one autoencoder on the ``fit`` ratings and keeps the weights of the epoch with the best RMSE on
``val`` (ratings carved from the training part, never the test part). ``train_split`` wraps it for a named split:
carve validation, fit (ensemble and blend partner: recae.training.ensemble), then score the held-out test ratings.
Progress goes to an ``on_epoch`` callback; only the CLI prints. The loop, its NaN guard and patience:
recae.training.loop; resumable checkpoints of a ``run_dir``: recae.training.checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from recae.artifacts.train_config import AUTO_ONE_THREAD_BELOW, FULL_BATCH, TrainConfig
from recae.errors import TrainingError
from recae.models.autoencoders import AutoEncoder, ModelConfig
from recae.models.batches import SparseRows, batch_plan, make_batch, oriented_csr
from recae.models.build import bake_kernels, build_model
from recae.models.losses import l2_penalty, masked_mse
from recae.store.matrix import RatingMatrix
from recae.training import distributed
from recae.training.best_weights import best_keeper
from recae.training.checkpoint import CHECKPOINT_FILE, Checkpointer, resume_run, run_fingerprint
from recae.training.ensemble import (
    Carve,
    blend_carve,
    carves_blend,
    cross_carves,
    fit_blend_parts,
    fit_ensemble,
    partner_configs,
)
from recae.training.loop import (
    EpochReport,
    FitResult,
    check_finite,
    diverged_message,
    rmse_fit_result,
    rmse_report,
    rmse_stopping,
    run_epochs,
)
from recae.training.pretrain import pretrain_autoencoders
from recae.training.memory import check_memory, log_peak
from recae.training.ranking import run_ranker
from recae.training.validation import unit_means, validation_rmse

if TYPE_CHECKING:
    from recae.artifacts.trained_model import TrainedModel
    from recae.evaluation.splits import Split
    from recae.models.side_part import FilmGroups

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when torch sees a device, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --- the pieces of one run -------------------------------------------------------------------------------------


def make_optimizer(module: AutoEncoder, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names over ``module``'s parameters (adamw decays the weight matrices only)."""
    params = list(module.parameters())
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        weights = {id(w) for w in module.weight_matrices()}
        groups = [
            {"params": [p for p in params if id(p) in weights], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if id(p) not in weights], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "rprop":
        return torch.optim.Rprop(params, lr=cfg.lr)
    return torch.optim.LBFGS(params, lr=cfg.lr, max_iter=5, history_size=10, line_search_fn="strong_wolfe")


def batch_objective(module: AutoEncoder, inputs: SparseRows, targets: SparseRows, cfg: TrainConfig, n_observed: int,
                    runner: torch.nn.Module | None = None, share: float = 1.0) -> tuple[Tensor, Tensor]:
    """(masked MSE, full objective) of one batch: MSE + L2 (unless adamw decays) + the model's penalty.

    ``runner`` is the module's DistributedDataParallel wrapper in distributed training, and ``share`` this rank's
    weight of the batch's ratings (see recae.training.distributed.loss_scale).
    """
    predicted, penalty = (runner or module)(inputs, targets)  # (nnz,)
    mse = masked_mse(predicted, targets.values, module.loss_weights(inputs, targets))
    l2 = 0.0 if cfg.optimizer == "adamw" else l2_penalty(module.weight_matrices(), cfg.weight_decay, n_observed)
    return mse, share * mse + l2 + penalty + module.kernel_penalty(n_observed)


# --- fit -------------------------------------------------------------------------------------------------------


def fit(
    fit_ratings: RatingMatrix,
    val_ratings: RatingMatrix | None,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    stop_after: int | None = None,
) -> FitResult:
    """Train ``model_cfg`` on ``fit_ratings``; early stopping and the kept weights follow ``val_ratings``' RMSE.

    Args:
        fit_ratings: ratings the model reads and is trained to rebuild.
        val_ratings: held-out training ratings (same index); None trains all epochs and keeps the last weights.
        run_dir: folder for the per-epoch checkpoint; ``resume`` continues from it when it exists.
        stop_after: end after this many epochs of this session (simulates an interrupted run in tests).
    Raises:
        TrainingError: a non-finite loss, invalid settings, or a checkpoint that does not match this run.
    """
    return _run(lambda member: (fit_ratings, val_ratings), True, model_cfg, train_cfg, run_dir=run_dir,
                resume=resume, on_epoch=on_epoch, on_progress=on_progress, stop_after=stop_after)


def fit_cross_carved(
    train: RatingMatrix,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> FitResult:
    """Like :func:`fit` on ``train``, but ensemble member m carves its own validation (seed + m) from it.

    Each member still stops early on ratings it never trained on, yet together the members read every training
    rating (the development protocol in tests/benchmarks/README.md compares it with members sharing one carve,
    on a development carve).
    The reported validation RMSE is then the mean of the members' own best figures.
    """
    return _run(cross_carves(train, train_cfg), False, model_cfg, train_cfg, run_dir=run_dir, resume=resume,
                on_epoch=on_epoch, on_progress=on_progress, stop_after=None)


def _run(carve: Carve, shared_validation: bool, model_cfg: ModelConfig, train_cfg: TrainConfig, *,
         run_dir: Path | None, resume: bool, on_epoch: Callable[[EpochReport], None] | None,
         on_progress: Callable[[str], None] | None, stop_after: int | None) -> FitResult:
    model_cfg.validate()
    train_cfg.validate()
    device = resolve_device(train_cfg.device)
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    if train_cfg.threads > 0 or train_cfg.deterministic:
        torch.set_num_threads(train_cfg.threads or 1)  # deterministic: a fixed count, 1 unless told
    elif carve(0)[0].nnz < AUTO_ONE_THREAD_BELOW:
        torch.set_num_threads(1)
    if train_cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    if len(train_cfg.weight_decay_grid) == 1:
        train_cfg = replace(train_cfg, weight_decay=train_cfg.weight_decay_grid[0], weight_decay_grid=())
    if not train_cfg.is_sized:
        train_cfg = train_cfg.sized(carve(0)[0].nnz)
    try:
        if model_cfg.name == "rbm":  # the RBM for CF: its own CD epoch, early stopping on validation RMSE
            from recae.training.rbm import fit_rating_rbm, single_network

            return fit_rating_rbm(*carve(0), model_cfg, single_network(train_cfg), device, on_epoch, on_progress)
        if train_cfg.ensemble == 1 and not train_cfg.weight_decay_grid:
            return _fit(*carve(0), model_cfg, train_cfg, device, run_dir, resume, on_epoch, on_progress, stop_after)
        result = fit_ensemble(carve, model_cfg, train_cfg, device, run_dir, resume, on_epoch, on_progress,
                              stop_after, _fit)
        fit_ratings, val_ratings = carve(0)
        if shared_validation and val_ratings is not None and val_ratings.nnz:  # the merged network on the carve
            val_rmse = validation_rmse(result.module, oriented_csr(fit_ratings, model_cfg.orientation),
                                       oriented_csr(val_ratings, model_cfg.orientation), fit_ratings.rating_scale(),
                                       batch_ratings=train_cfg.resolved(fit_ratings.nnz).batch_ratings,
                                       device=device)
            result = replace(result, best_val_rmse=val_rmse)
        return result
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)


def _fit(fit_ratings: RatingMatrix, val_ratings: RatingMatrix | None, model_cfg: ModelConfig,
         train_cfg: TrainConfig, device: torch.device, run_dir: Path | None, resume: bool,
         on_epoch: Callable[[EpochReport], None] | None, on_progress: Callable[[str], None] | None,
         stop_after: int | None) -> FitResult:
    """One network: build, initialise (means, pretraining) or resume, then the loop on validation RMSE."""
    started = time.perf_counter()
    if fit_ratings.nnz == 0:
        raise TrainingError("no training ratings to fit")
    train_cfg = train_cfg.resolved(fit_ratings.nnz)
    data = oriented_csr(fit_ratings, model_cfg.orientation)  # (n_vectors, n_units)
    val = oriented_csr(val_ratings, model_cfg.orientation) if val_ratings is not None else None
    scale = fit_ratings.rating_scale()
    n_units = data.shape[1]
    torch.manual_seed(train_cfg.weights_seed)
    module = build_model(model_cfg, n_units, n_units)
    means = torch.from_numpy(unit_means(data, n_units))
    with torch.no_grad():
        module.b_out.copy_(means)
        module.fallback.copy_(means)
        module.input_mean.fill_(float(data.data.mean()))
    module.to(device)
    world = distributed.join(device)
    runner = _data_parallel(module, world, train_cfg)
    optimizer = make_optimizer(module, train_cfg)
    identity = run_fingerprint(model_cfg, train_cfg, fit_ratings.fingerprint())

    with best_keeper(module, run_dir, world.rank if world is not None else 0) as keeper:
        state, best = None, None
        resumed = (resume_run(run_dir, identity, module, optimizer, device) if run_dir is not None and resume
                   else None)
        if resumed is not None:
            state, best = resumed[0], keeper.adopt(resumed[1])
            log.info("resuming from epoch %d of %s", state.epoch, run_dir / CHECKPOINT_FILE)
            if on_progress:
                on_progress(f"resuming after epoch {state.epoch}")
        elif model_cfg.pretrain_epochs > 0 and model_cfg.pretrain == "rbm":
            from recae.training.rbm import pretrain_with_rbms

            pretrain_with_rbms(module, data, train_cfg, model_cfg.pretrain_epochs, device, on_progress)
        elif model_cfg.pretrain_epochs > 0:
            pretrain_autoencoders(module, data, train_cfg, model_cfg.pretrain_epochs, device, on_progress)
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)

        full_batch = make_batch(data, data).to(device) if train_cfg.optimizer in FULL_BATCH else None

        def one_epoch(epoch: int) -> float:
            module.train()
            return train_epoch(module, optimizer, data, full_batch, train_cfg, epoch, device, runner, world)

        def score() -> float | None:
            if val is None or not val.nnz:
                return None
            value = validation_rmse(module, data, val, scale, batch_ratings=train_cfg.batch_ratings, device=device)
            return distributed.broadcast_value(value, world, device)  # every rank decides alike

        checkpoint = (Checkpointer(run_dir, identity, module, optimizer, primary=world is None or world.primary)
                      if run_dir is not None else None)
        offset = state.seconds if state is not None else 0.0  # time spent in earlier sessions of a resumed run
        outcome = run_epochs(
            rmse_stopping(train_cfg), one_epoch, score, keeper.snapshot, rmse_report(train_cfg.epochs),
            state=state, best=best, optimizer=optimizer,
            diverged=lambda epoch, value: diverged_message(value, epoch, train_cfg.lr), on_epoch=on_epoch,
            checkpoint=checkpoint, stop_after=stop_after, started=started)
        state, best = outcome.state, outcome.best
        del outcome, checkpoint
        optimizer.state.clear()  # its moments: as large as the weights, freed before the best is read back
        module.zero_grad(set_to_none=True)  # the last step's gradients: as large as the weights (0.4 GB at ML-25M)
        keeper.restore(best)
        del best
    module = bake_kernels(module).eval()  # local kernels folded into plain weights: serving needs no kernel code
    return rmse_fit_result(module, state, time.perf_counter() - started + offset)


def _data_parallel(module: AutoEncoder, world: distributed.World | None,
                   cfg: TrainConfig) -> torch.nn.Module | None:
    """The DistributedDataParallel wrapper of ``module`` when several processes train (minibatch optimisers only)."""
    if world is None or world.size == 1:
        return None
    if cfg.optimizer in FULL_BATCH:
        raise TrainingError(f"distributed training needs a minibatch optimizer (adam or adamw), not {cfg.optimizer}")
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module)  # broadcasts rank 0's weights and buffers, then averages gradients


def train_epoch(module: AutoEncoder, optimizer: torch.optim.Optimizer, data: sp.csr_matrix,
                full_batch: Any, cfg: TrainConfig, epoch: int, device: torch.device,
                runner: torch.nn.Module | None = None, world: distributed.World | None = None) -> float:
    """One pass over the fit ratings; returns their mean masked MSE as seen during the pass (this rank's share)."""
    if full_batch is not None:
        last: dict[str, float] = {}

        def closure() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            mse, loss = batch_objective(module, full_batch.inputs, full_batch.targets, cfg, data.nnz)
            check_finite(loss, epoch, cfg.lr)
            loss.backward()
            last["mse"] = float(mse.detach())
            return loss

        if isinstance(optimizer, torch.optim.LBFGS):
            optimizer.step(closure)
        else:
            closure()
            optimizer.step()
        return last["mse"]
    total, count = 0.0, 0
    row_ratings = np.diff(data.indptr)
    for group in batch_plan(row_ratings, cfg.batch_ratings, seed=cfg.weights_seed, epoch=epoch):
        batch = make_batch(data, data, distributed.shard(group, world)).to(device)
        optimizer.zero_grad(set_to_none=True)
        share = distributed.loss_scale(group, row_ratings, world)
        mse, loss = batch_objective(module, batch.inputs, batch.targets, cfg, data.nnz, runner, share)
        check_finite(loss, epoch, cfg.lr)
        loss.backward()
        optimizer.step()
        total += float(mse.detach()) * batch.targets.nnz
        count += batch.targets.nnz
    return total / max(count, 1)


# --- a named split, end to end ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrainResult:
    """A trained model ready to publish, with its validation and test figures."""

    trained: TrainedModel
    fit: FitResult
    metrics: dict[str, float]  # val_rmse, test_rmse, test_mae, best_epoch, epochs, seconds, seconds_to_best


def train_split(
    split: Split,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    groups: FilmGroups | None = None,
) -> TrainResult:
    """Carve validation from ``split.train``, fit, and score ``split.test`` (never used before this point).

    The returned model reads every training rating (fit + validation) as its inputs; test ratings never are.
    ``groups`` (the films' genres and eras in column order, ``recae.models.side_part``) feed the stacked side part.
    """
    from recae.artifacts.trained_model import TrainedModel, with_metrics

    if model_cfg.name == "rbm":
        from recae.training.rbm import single_network

        train_cfg = single_network(train_cfg)
    train_cfg = train_cfg.sized(split.train.nnz)  # meta.json records the members and epochs this data got
    check_memory(split.train, model_cfg, train_cfg)  # before hours of training, not after them
    parked = run_ranker(split.train, train_cfg, run_dir, resume, on_progress)  # first: see recae.training.ranking
    log_peak("ranker")
    fit_part, blend_part = blend_carve(split.train, train_cfg) if carves_blend(train_cfg) else (split.train, None)
    result = fit_cross_carved(fit_part, model_cfg, train_cfg, run_dir=run_dir, resume=resume, on_epoch=on_epoch,
                              on_progress=on_progress)
    log_peak("autoencoder")
    chosen = result.weight_decay if result.weight_decay is not None else train_cfg.weight_decay
    train_cfg = replace(train_cfg, weight_decay=chosen, weight_decay_grid=())
    trained = TrainedModel.from_fit(result.module, split.train, train_config=train_cfg,
                                    split_spec=split.spec.to_json(), history=[asdict(h) for h in result.history])
    metrics: dict[str, float] = {"val_rmse": result.best_val_rmse, "weight_decay": chosen}
    fits = [result]
    if blend_part is not None and train_cfg.partner_members:
        partner = _fit_partner(fit_part, model_cfg, train_cfg, run_dir=run_dir, resume=resume,
                               on_epoch=on_epoch, on_progress=on_progress)
        trained = replace(trained, partner=TrainedModel.from_fit(partner.module, split.train))
        fits.append(partner)
        log_peak("partner")
    if blend_part is not None:
        trained, blend_metrics = fit_blend_parts(trained, fit_part, blend_part, train_cfg, on_progress, groups)
        metrics.update(blend_metrics)
        log_peak("blend")
    del fit_part, blend_part  # carves of the training part (half a GB at ML-32M shape): done with
    ranker_seconds = 0.0
    if parked is not None:
        ranker, ranker_seconds = parked.load(), parked.seconds
        trained = replace(trained, ranker=ranker, ranker_search=parked.search)
        metrics.update(ranker_lambda=ranker.lam, ranker_seconds=round(ranker_seconds, 3))
    metrics.update({
        "best_epoch": result.best_epoch,
        "epochs": sum(f.epochs_run for f in fits),
        "seconds": round(sum(f.seconds for f in fits) + ranker_seconds + metrics.get("svd_seconds", 0.0), 3),
        "seconds_to_best": round(sum(f.seconds_to_best for f in fits), 3),
        "n_train": split.train.nnz,
        "n_test": split.test.nnz,
    })
    log.info("scoring %d test ratings", split.test.nnz)
    metrics.update(test_metrics(trained, split.test))
    log_peak("test metrics")
    return TrainResult(trained=with_metrics(trained, metrics), fit=result, metrics=metrics)


def _fit_partner(train: RatingMatrix, model_cfg: ModelConfig, train_cfg: TrainConfig, *, run_dir: Path | None,
                 resume: bool, on_epoch: Callable[[EpochReport], None] | None,
                 on_progress: Callable[[str], None] | None) -> FitResult:
    """``partner_members`` autoencoders of the other orientation, cross-carved from the main ensemble's fit part."""
    partner_model, partner_train = partner_configs(model_cfg, train_cfg)
    if on_progress:
        on_progress(f"{partner_model.orientation}-based partner for the blend ({train_cfg.partner_members} member(s))")
    return fit_cross_carved(train, partner_model, partner_train,
                            run_dir=run_dir / "partner" if run_dir is not None else None, resume=resume,
                            on_epoch=on_epoch, on_progress=on_progress)


def test_metrics(trained: TrainedModel, test: RatingMatrix) -> dict[str, float]:
    """``test_rmse = sqrt(mean((rhat - r)^2))``, ``test_mae = mean(|rhat - r|)`` over the test ratings, and the
    served ranking's ``test_precision@10``, ``test_recall@10``, ``test_ndcg@10`` (held-out ratings relevant from
    ``relevant_from``, see ``recae.artifacts.trained_model.model_relevance``)."""
    from recae.artifacts.trained_model import model_relevance
    from recae.evaluation.metrics import ranking_metrics

    if test.nnz == 0:
        return {}
    rows, cols, values = test.coo()
    predicted = trained.predict(rows, cols).astype(np.float64)
    error = predicted - values
    out = {"test_rmse": float(np.sqrt(np.mean(error**2))), "test_mae": float(np.mean(np.abs(error)))}
    ranking = ranking_metrics(trained, trained.inputs, test, k=10, threshold=model_relevance(trained))
    if ranking.n_users:
        out.update({"test_precision@10": ranking.precision, "test_recall@10": ranking.recall,
                    "test_ndcg@10": ranking.ndcg, "test_ranking_users": ranking.n_users})
        if ranking.of_users:  # a seeded sample of the test users (recae.evaluation.metrics.RANKING_USERS)
            out["test_ranking_users_of"] = ranking.of_users
    return out


test_metrics.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite its name

