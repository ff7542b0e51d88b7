"""Ensembles and blends: members with consecutive seeds merged into one network, their validation carves, the
partner of the other orientation, and the blend carve on which the two are mixed (the maths: recae.training.blend).

A member's own training is the caller's (``fit_member``: the single-network fit of recae.training.train), so
this module never imports the trainer.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from recae.artifacts.train_config import TrainConfig
from recae.models.autoencoders import AutoEncoder, ModelConfig
from recae.models.build import build_model, merge_loaded
from recae.store.matrix import RatingMatrix
from recae.training import distributed
from recae.training.loop import EpochReport, FitResult

if TYPE_CHECKING:
    from recae.artifacts.trained_model import TrainedModel
    from recae.models.side_part import FilmGroups

log = logging.getLogger(__name__)

BLEND_CARVE_SEED = 104_729  # offsets the blend carve's seed from the members' carves (seed + m)
MEMBER_FILE = "member.safetensors"

#: Member m's (fit ratings, validation ratings).
Carve = Callable[[int], "tuple[RatingMatrix, RatingMatrix | None]"]
#: Trains one network: (fit, val, model_cfg, train_cfg, device, run_dir, resume, on_epoch, on_progress, stop_after).
FitMember = Callable[..., FitResult]


def cross_carves(train: RatingMatrix, cfg: TrainConfig) -> Carve:
    """Member m's carve of ``train``: its own validation (seed + m), so each member stops early on ratings it never
    trained on, yet together the members read every training rating."""
    from recae.evaluation.splits import holdout_validation

    @functools.lru_cache(maxsize=1)  # carve m is asked for several times in a row; keep one copy, not all
    def carve(member: int) -> tuple[RatingMatrix, RatingMatrix]:
        return holdout_validation(train, cfg.val_fraction, cfg.seed + member)

    return carve


def fit_ensemble(carve: Carve, model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device,
                 run_dir: Path | None, resume: bool, on_epoch: Callable[[EpochReport], None] | None,
                 on_progress: Callable[[str], None] | None, stop_after: int | None,
                 fit_member: FitMember) -> FitResult:
    """Choose lambda on validation, train ``ensemble`` members with consecutive seeds, then merge them.

    Each lambda of ``weight_decay_grid`` trains one member with the base seed; the one with the best validation
    RMSE wins and becomes member 0, so choosing costs one extra member per losing candidate. Member m trains on
    ``carve(m)`` (the same ratings for every member unless the validation is cross-carved). The reported
    validation RMSE is the mean of the members' own best figures.
    """
    train_cfg = train_cfg.resolved(carve(0)[0].nnz)  # carves are not held here: each is 1.5 x the ratings' bytes
    grid = train_cfg.weight_decay_grid or (train_cfg.weight_decay,)
    base = replace(train_cfg, ensemble=1, weight_decay_grid=())

    def member(seed_offset: int, weight_decay: float, name: str, label: str) -> FitResult:
        if on_progress:
            on_progress(label)
        result = fit_member(*carve(seed_offset), model_cfg,
                            replace(base, seed=train_cfg.seed + seed_offset, weight_decay=weight_decay,
                                    init_seed=None if train_cfg.init_seed is None
                                    else train_cfg.init_seed + seed_offset),
                            device,
                            run_dir / name if run_dir is not None else None, resume, on_epoch, on_progress,
                            stop_after)
        log.info("%s (%s): best epoch %d of %d, validation RMSE %.4f", label, model_cfg.orientation,
                 result.best_epoch, result.epochs_run, result.best_val_rmse)
        return park(result, run_dir / name if run_dir is not None else None)

    candidates = {wd: member(0, wd, f"member0-wd{wd:g}", f"lambda {wd:g}, member 1 of {train_cfg.ensemble}")
                  for wd in grid}
    chosen = min(candidates, key=lambda wd: candidates[wd].best_val_rmse) if len(grid) > 1 else grid[0]
    members = [candidates[chosen]] + [
        member(m, chosen, f"member{m}-wd{chosen:g}", f"lambda {chosen:g}, member {m + 1} of {train_cfg.ensemble}")
        for m in range(1, train_cfg.ensemble)
    ]
    losers = [r for wd, r in candidates.items() if wd != chosen]
    merged = merge_loaded(len(members), lambda m: unpark(members[m], model_cfg)).eval()
    log.info("merged %d %s members into one network of width %s", len(members), model_cfg.orientation,
             merged.config.hidden)
    # Keep the members' figures, not their networks: at ML-25M scale each holds ~0.4 GB beside the merged one.
    members = [replace(r, module=None) for r in members]  # type: ignore[arg-type]
    return FitResult(
        module=merged, best_epoch=max(r.best_epoch for r in members),
        best_val_rmse=float(np.mean([r.best_val_rmse for r in members])),
        epochs_run=sum(r.epochs_run for r in members + losers),
        seconds=sum(r.seconds for r in members + losers),
        seconds_to_best=sum(r.seconds_to_best for r in members) + sum(r.seconds for r in losers),
        history=[h for r in members for h in r.history], members=members, weight_decay=chosen,
    )


def park(result: FitResult, folder: Path | None) -> FitResult:
    """A finished ensemble member waits for the merge in its run folder, not in memory (0.4 GB each at ML-25M);
    without a folder it stays in memory."""
    if folder is None:
        return result
    from safetensors.torch import save_file

    from recae.artifacts.model_files import standalone

    world = distributed.current()
    path = folder / (MEMBER_FILE if world is None else f"rank{world.rank}-{MEMBER_FILE}")  # ranks share the folder
    save_file({k: standalone(v) for k, v in result.module.state_dict().items()}, str(path))
    return replace(result, module=None, module_file=path)  # type: ignore[arg-type]


def unpark(result: FitResult, model_cfg: ModelConfig) -> AutoEncoder:
    """The member's network, from memory or from the file it was parked in."""
    if result.module_file is None:
        return result.module
    from safetensors.torch import load_file

    state = load_file(str(result.module_file))
    plain = replace(model_cfg, kernel_dim=0, kernel_weight=0.0)  # members are parked baked
    module = build_model(plain, state["w_in"].shape[0], state["w_out"].shape[0])
    module.load_state_dict(state)
    return module.eval()


def partner_configs(model_cfg: ModelConfig, train_cfg: TrainConfig) -> tuple[ModelConfig, TrainConfig]:
    """The partner's settings: the other orientation, ``partner_members`` members."""
    other = model_cfg.orientation.other
    return replace(model_cfg, orientation=other), replace(train_cfg, ensemble=train_cfg.partner_members)


def carves_blend(cfg: TrainConfig) -> bool:
    """Whether training keeps a blend carve: there is a partner or an SVD part to mix in."""
    return cfg.partner_members > 0 or cfg.blend_svd


def blend_carve(train: RatingMatrix, cfg: TrainConfig) -> tuple[RatingMatrix, RatingMatrix]:
    """(fit part, blend part): ``blend_fraction`` of the training ratings kept from every member and the partner.

    The shipped ensemble and partner predict the blend part out of fold, so the blend weight is fitted for the
    model that ships (not for one member) and its validation RMSE is measured on ratings nothing else was fitted on.
    """
    from recae.evaluation.splits import holdout_validation

    return holdout_validation(train, cfg.blend_fraction, cfg.seed + BLEND_CARVE_SEED)


def fit_blend_parts(trained: TrainedModel, fit_part: RatingMatrix, blend_part: RatingMatrix, cfg: TrainConfig,
                    on_progress: Callable[[str], None] | None = None, groups: FilmGroups | None = None,
                    ) -> tuple[TrainedModel, dict[str, float]]:
    """``trained`` with its blend fitted on ``blend_part``, which neither its network nor its partner fitted (both
    read ``fit_part`` as inputs here): the pair's weight (recae.training.blend.fit_blend) when it has a partner, and
    with ``cfg.blend_svd`` a Soft-Impute SVD fitted on ``fit_part`` (never the blend carve) stacked in by weights
    and an intercept (recae.training.blend.fit_mix), then with ``cfg.blend_side`` and ``groups`` that place any
    film the films' genres and eras (recae.models.side_part, also fitted on ``fit_part``). All read one set of
    blend-part predictions. Returns the model and its figures: each part's and the cross-fitted blend's RMSE on
    the carve, the weights (``pair_val_rmse`` keeps the pair's figure when the stack replaces it as ``val_rmse``).
    Training and the nightly warm start both blend here."""
    from recae.models.side_part import fit_side_part
    from recae.models.svd_part import fit_svd_part
    from recae.training.blend import fit_blend, fit_mix, mix_figures

    partner = trained.partner
    modules = [trained.module] if partner is None else [trained.module, partner.module]
    predictions, values = _blend_part_predictions(modules, fit_part, blend_part)
    metrics: dict[str, float] = {"n_blend": blend_part.nnz}
    if partner is not None:
        pair = fit_blend(predictions[0], predictions[1], values, seed=cfg.seed)
        trained = replace(trained, blend_weight=pair.weight)
        metrics.update(main_val_rmse=pair.main_rmse, partner_val_rmse=pair.partner_rmse,
                       val_rmse=pair.cross_fitted_rmse, blend_weight=round(pair.weight, 6))
    if cfg.blend_svd:
        if on_progress:
            on_progress("Soft-Impute SVD for the blend")
        started = time.perf_counter()
        svd = fit_svd_part(fit_part, seed=cfg.seed)
        side = (fit_side_part(fit_part, groups, svd.biases, svd.bias_ridge)
                if cfg.blend_side and groups is not None and groups.any else None)
        rows, cols, _ = blend_part.coo()
        stacked_parts = [part.predict(rows, cols) for part in (svd, side) if part is not None]
        stacked = fit_mix([*predictions, *stacked_parts], values, fit_part.rating_scale(), seed=cfg.seed)
        trained = replace(trained, svd=svd, side=side, mix_weights=stacked.weights)
        if partner is not None:
            metrics["pair_val_rmse"] = metrics["val_rmse"]
        metrics.update(mix_figures(stacked, partner is not None, side is not None),
                       svd_seconds=round(time.perf_counter() - started, 3))
    return trained, metrics


def _blend_part_predictions(modules: list[AutoEncoder], fit_part: RatingMatrix, blend_part: RatingMatrix,
                            ) -> tuple[list[np.ndarray], np.ndarray]:
    """(each module's predictions, true ratings) on the blend part, every module reading the fit part as inputs."""
    from recae.artifacts.trained_model import TrainedModel

    rows, cols, values = blend_part.coo()
    return [TrainedModel.from_fit(module, fit_part).predict(rows, cols) for module in modules], values
