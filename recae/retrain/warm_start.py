"""The challenger's warm start: the champion's weights mapped onto today's users and movies, then fine-tuned.

Fine-tuning continues training's own objective from the champion's weights, so a night's challenger costs a few
epochs instead of a cold training run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from recae.models.names import Orientation

if TYPE_CHECKING:
    from recae.artifacts.train_config import TrainConfig
    from recae.artifacts.trained_model import TrainedModel
    from recae.models.autoencoders import AutoEncoder, ModelConfig
    from recae.store.matrix import RatingMatrix

UNIT_PARAMETERS = ("w_in", "w_out", "b_out", "fallback")


def warm_start_module(champion: TrainedModel, index: Any, unit_means: np.ndarray) -> AutoEncoder | None:
    """A module of the champion's configuration for ``index``'s users and movies, holding the champion's weights.

    Rows of units (users in item orientation, movies in user orientation) the champion knows are copied by id;
    a new unit starts with zero input and output weights and its mean rating as bias, so it predicts its mean and
    leaves every known vector's code unchanged. ``fallback`` becomes the current unit means. Returns None when
    the champion's other tensors do not fit (then train cold).
    """
    import torch

    from recae.models.build import build_model

    cfg = champion.model_config
    if cfg.name == "rbm":  # trained by contrastive divergence, not by the masked-MSE fine-tuning: retrain cold
        return None
    item = cfg.orientation is Orientation.ITEM
    new_ids = index.user_ids if item else index.movie_ids
    source = champion.index.lookup_users(new_ids) if item else champion.index.lookup_movies(new_ids)
    known = torch.from_numpy(source >= 0)
    picked = torch.from_numpy(source[source >= 0])
    module = build_model(cfg, new_ids.size, new_ids.size)
    old = champion.torch_module().state_dict()
    state = module.state_dict()
    means = torch.from_numpy(np.asarray(unit_means, dtype=np.float32))
    if set(old) != set(state):
        return None
    with torch.no_grad():
        for name, target in state.items():
            if name in UNIT_PARAMETERS:
                fresh = means.clone() if name in ("b_out", "fallback") else torch.zeros_like(target)
                if name != "fallback":
                    fresh[known] = old[name][picked].to(fresh.dtype)
                target.copy_(fresh)
            elif old[name].shape == target.shape:
                target.copy_(old[name])
            else:
                return None
    module.load_state_dict(state)
    return module


def first_configs(model_cfg: ModelConfig | None, train_cfg: TrainConfig | None) -> tuple[ModelConfig, TrainConfig]:
    """The configuration of a first champion: given ones, else the shipped defaults (as ``recae train``)."""
    from recae.artifacts.train_config import DEFAULT_MODEL, TrainConfig
    from recae.models.build import model_config

    return model_cfg or model_config(DEFAULT_MODEL), train_cfg or TrainConfig()


def fine_tune(module: AutoEncoder, fit_part: RatingMatrix, val_part: RatingMatrix, cfg: TrainConfig, epochs: int,
              on_epoch: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """Continue training ``module`` (in place) with ``cfg``'s optimizer on ``fit_part``; keep the best weights on
    ``val_part``.

    The objective and epoch step are training's own (masked MSE + L2 + the model's penalty,
    ``recae.training.train.train_epoch``), run by the same early-stopping loop; epoch 0 (the warm start as given)
    counts as a candidate, so fine-tuning never returns weights worse on validation than it got.
    Returns best_epoch, epochs, val_rmse, seconds.
    """
    import torch

    from recae.artifacts.train_config import FULL_BATCH
    from recae.models.batches import make_batch, oriented_csr
    from recae.training.best_weights import best_keeper
    from recae.training.memory import release_freed_memory
    from recae.training.loop import LoopState, Stopping, run_epochs
    from recae.training.train import make_optimizer, resolve_device, train_epoch
    from recae.training.validation import validation_rmse

    started = time.perf_counter()
    cfg = replace(cfg, ensemble=1, weight_decay_grid=()).resolved(fit_part.nnz)
    device = resolve_device(cfg.device)
    orientation = module.config.orientation
    data = oriented_csr(fit_part, orientation)  # (n_vectors, n_units)
    val = oriented_csr(val_part, orientation)
    scale = fit_part.rating_scale()
    previous_threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.weights_seed)
        module.to(device)
        optimizer = make_optimizer(module, cfg)
        full_batch = make_batch(data, data).to(device) if cfg.optimizer in FULL_BATCH else None

        def one_epoch(epoch: int) -> None:
            module.train()
            train_epoch(module, optimizer, data, full_batch, cfg, epoch, device)

        def score() -> float | None:
            if not val.nnz:
                return None
            return validation_rmse(module, data, val, scale, batch_ratings=cfg.batch_ratings, device=device)

        start = score()  # the warm start is epoch 0's candidate
        with best_keeper(module, None) as keeper:  # a file for networks too large to hold twice
            outcome = run_epochs(
                Stopping(epochs=epochs, patience=cfg.patience), one_epoch, score, keeper.snapshot,
                lambda done: done, state=LoopState(best_score=float("nan") if start is None else start),
                diverged=lambda epoch, _: f"fine-tuning diverged at epoch {epoch}; try a lower learning rate than "
                                          f"{cfg.lr:g}",
                on_epoch=(lambda done: on_epoch(done.epoch, done.score)) if on_epoch else None)
            optimizer.state.clear()  # Adam's moments and the gradients go before the best is read back
            module.zero_grad(set_to_none=True)
            keeper.restore(outcome.best)
        release_freed_memory()  # the next network's fine-tuning does not stack on this one's freed pages
        module.to("cpu").eval()
    finally:
        torch.set_num_threads(previous_threads)
    state = outcome.state
    return {"best_epoch": state.best_epoch, "epochs": state.epoch, "val_rmse": state.best_score,
            "seconds": round(time.perf_counter() - started, 3)}
