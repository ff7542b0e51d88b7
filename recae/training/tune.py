"""`recae train --tune`: choose the autoencoder's and the ranker's settings on carves of the training part only.

Defaults chosen on MovieLens need not fit a 3,000 x 3,000 catalogue, a half-star scale or a very sparse or dense
matrix, so ``--tune`` searches them again on the data at hand, within a time budget that covers the search *and*
the final training.

Protocol (test ratings are never passed in):
    outer carve   ``TUNE_VAL_FRACTION`` of the training ratings (``holdout_validation``, seed ``seed + 7919``):
                  every trial is scored by its RMSE there; no trial trains or stops early on it
    rest          the other training ratings: a trial trains ONE member (no ensemble, partner or ranker) on them,
                  stopping early on an inner carve of the rest (``val_fraction``, seed ``seed``), as
                  ``fit_cross_carved``'s member 0 does, and reads all of the rest as its inputs when scored
    ranker        EASE's lambda is chosen on its own carve by ``rankers.search_ease_lambda`` (NDCG@10) for the
                  ``value`` input and, when the budget allows, the ``binary`` one; the better input wins

Search: greedy coordinate search, cheap first. Trials stop early with patience ``TRIAL_PATIENCE`` (the final
training keeps its own). The first trial is the given configuration; then each coordinate in turn walks away from
the best setting in one direction while the outer RMSE improves (else tries the other direction; lambda tries both
neighbours first and walks on from the better), on coarse steps
first (lambda x10, hidden units x2, noise +-0.25, learning rate x2), then fine ones (lambda x sqrt(10), hidden
units x sqrt(2)), pass after pass until a pass moves nothing. The space follows the data: lambda starts from the
given one scaled by sqrt(ratings per unit / 100) (the penalty on a unit's weights weighs against that unit's
ratings; the MovieLens defaults held at 85 to 165 per unit) and walks as far as the carve rewards it; hidden
units stay between ``MIN_HIDDEN`` and the number of units a vector has.

Budget: after each trial the final training's cost is estimated from the best trial (seconds per epoch x the
final's share of ratings x (best epoch + the final's patience) x (members + partner members), plus the ranker and
a margin). A trial runs only while it and that estimate still fit; when even the first trial leaves too little
time for the default number of members, fewer are trained (a partner kept before a further member) and the
record says so. Members are
otherwise not searched: more members of one setting only average more noise away (see ``fit_cross_carved``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from recae.artifacts.train_config import TrainConfig
from recae.errors import TrainingError
from recae.models.autoencoders import ModelConfig
from recae.models.names import Orientation
from recae.store.matrix import RatingMatrix
from recae.training.loop import FitResult
from recae.training.train import fit

log = logging.getLogger(__name__)

DEFAULT_BUDGET_MINUTES = 10.0
TUNE_VAL_FRACTION = 0.1  # share of the training ratings every trial is scored on
OUTER_SEED_OFFSET = 7919  # the outer carve's seed is seed + this: drawn apart from the members' own carves
TRIAL_PATIENCE = 8  # cheap trials: stop after this many epochs without progress (the final keeps its patience)
MAX_TRIALS = 30
MIN_HIDDEN = 8
REFERENCE_RATINGS_PER_UNIT = 100.0
NOISE_STEP = 0.25
MAX_NOISE = 0.9
MARGIN_SHARE = 0.08  # of the budget kept for reading the store, publishing and precomputing lists
MARGIN_MIN_S = 2.0


@dataclass(frozen=True)
class Setting:
    """One point of the search space."""

    weight_decay: float  # AutoRec's lambda
    hidden: tuple[int, ...]  # encoder widths
    noise: float  # input_dropout (denoising) or dropout (the other autoencoders)
    lr: float

    def key(self) -> tuple[float, tuple[int, ...], float, float]:
        return (float(f"{self.weight_decay:.6g}"), self.hidden, round(self.noise, 4), float(f"{self.lr:.6g}"))

    def to_json(self, noise_name: str) -> dict[str, Any]:
        return {"weight_decay": float(f"{self.weight_decay:.6g}"), "hidden": list(self.hidden),
                noise_name: round(self.noise, 4), "lr": float(f"{self.lr:.6g}")}


@dataclass(frozen=True)
class Trial:
    """One setting trained on the rest and scored on the outer carve."""

    number: int
    stage: str  # "start", "coarse" or "fine"
    setting: Setting
    val_rmse: float
    seconds: float
    epochs: int
    best_epoch: int
    n_fit: int  # ratings the trial trained on


@dataclass(frozen=True)
class TuneResult:
    """The chosen configuration and the search record stored in the model's meta.json (``tune``)."""

    model_config: ModelConfig
    train_config: TrainConfig
    record: dict[str, Any]


#: ``on_step(message, elapsed seconds, best validation RMSE so far or None)``: every epoch and every trial.
StepCallback = Callable[[str, float, "float | None"], None]


def noise_name(model_cfg: ModelConfig) -> str:
    """The noise setting the search moves: the denoising model's input masking, else hidden dropout."""
    return "input_dropout" if model_cfg.name == "denoising" else "dropout"


def start_setting(train: RatingMatrix, model_cfg: ModelConfig, train_cfg: TrainConfig) -> Setting:
    """The given configuration moved into the data's range: lambda scaled by ratings per unit, widths bounded."""
    n_units = _n_units(train, model_cfg)
    per_unit = train.nnz / max(n_units, 1)
    scale = math.sqrt(per_unit / REFERENCE_RATINGS_PER_UNIT)
    weight_decay = float(f"{max(train_cfg.weight_decay, 1e-3) * scale:.2g}")
    hidden = tuple(_bounded_width(h, n_units) for h in model_cfg.hidden)
    return Setting(weight_decay, hidden, getattr(model_cfg, noise_name(model_cfg)), train_cfg.lr)


def _n_units(train: RatingMatrix, model_cfg: ModelConfig) -> int:
    """Length of the vectors the autoencoder reads: users for item vectors, films for user vectors."""
    n_users, n_movies = train.shape
    return n_users if model_cfg.orientation is Orientation.ITEM else n_movies


def _bounded_width(width: float, n_units: int) -> int:
    return int(min(max(round(width), MIN_HIDDEN), max(n_units, MIN_HIDDEN)))


def _moves(stage: str, n_units: int) -> list[tuple[str, Callable[[Setting, int], Setting | None]]]:
    """(coordinate, step(setting, direction)) in the order searched; a step outside the space gives None."""
    lam_factor, width_factor = (10.0, 2.0) if stage == "coarse" else (math.sqrt(10.0), math.sqrt(2.0))

    def lam(s: Setting, d: int) -> Setting | None:
        value = s.weight_decay * lam_factor**d
        return replace(s, weight_decay=float(f"{value:.3g}")) if 1e-4 <= value <= 1e7 else None

    def hidden(s: Setting, d: int) -> Setting | None:
        widths = tuple(_bounded_width(h * width_factor**d, n_units) for h in s.hidden)
        return None if widths == s.hidden else replace(s, hidden=widths)

    def noise(s: Setting, d: int) -> Setting | None:
        value = round(s.noise + d * NOISE_STEP, 4)
        return replace(s, noise=value) if 0.0 <= value <= MAX_NOISE else None

    def lr(s: Setting, d: int) -> Setting | None:
        value = s.lr * 2.0**d
        return replace(s, lr=float(f"{value:.3g}")) if 1e-4 <= value <= 0.05 else None

    if stage == "coarse":
        return [("weight_decay", lam), ("hidden", hidden), ("noise", noise), ("lr", lr)]
    return [("weight_decay", lam), ("hidden", hidden)]


def apply_setting(setting: Setting, model_cfg: ModelConfig, train_cfg: TrainConfig) -> tuple[ModelConfig, TrainConfig]:
    """The configurations with ``setting``'s values (the rest as given)."""
    model_cfg = replace(model_cfg, hidden=setting.hidden, **{noise_name(model_cfg): setting.noise})
    return model_cfg, replace(train_cfg, weight_decay=setting.weight_decay, weight_decay_grid=(), lr=setting.lr)


class _Search:
    """The state of one search: carves, trials so far, the clock and the budget."""

    def __init__(self, train: RatingMatrix, model_cfg: ModelConfig, train_cfg: TrainConfig, budget_s: float,
                 on_step: StepCallback | None, max_trials: int, spent_s: float) -> None:
        from recae.evaluation.splits import holdout_validation

        self.started = time.perf_counter() - spent_s
        self.model_cfg, self.train_cfg, self.budget_s = model_cfg, train_cfg, budget_s
        self.on_step, self.max_trials = on_step, max_trials
        self.rest, self.outer = holdout_validation(train, TUNE_VAL_FRACTION, train_cfg.seed + OUTER_SEED_OFFSET)
        self.inner_fit, self.inner_val = holdout_validation(self.rest, train_cfg.val_fraction, train_cfg.seed)
        self.n_final_fit = round(train.nnz * (1 - train_cfg.val_fraction))
        self.trials: list[Trial] = []
        self.cache: dict[tuple[Any, ...], Trial] = {}
        self.ranker_searches: list[dict[str, Any]] = []
        self.ranker_seconds = 0.0
        self.margin_s = max(MARGIN_MIN_S, MARGIN_SHARE * budget_s)
        self.stopped = "converged"

    # --- the clock ---------------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def best(self) -> Trial:
        return min(self.trials, key=lambda t: (t.val_rmse, t.number))

    def member_seconds(self, trial: Trial | None = None) -> float:
        """Estimated seconds of one final member with ``trial``'s setting (default: the best)."""
        trial = trial or self.best()
        per_epoch = trial.seconds / max(trial.epochs, 1)
        epochs = min(trial.best_epoch + self.train_cfg.patience, self.train_cfg.epochs)
        return per_epoch * self.n_final_fit / max(trial.n_fit, 1) * epochs

    def ranker_final_seconds(self) -> float:
        """One EASE fit on all training ratings: about one of the search's fits (each search fits a few lambdas)."""
        if self.train_cfg.ranker == "none":
            return 0.0
        if not self.ranker_searches:
            return 0.0
        fits = sum(len(s["trials"]) for s in self.ranker_searches)
        return 1.5 * self.ranker_seconds / max(fits, 1)

    def final_seconds(self, members: int, partners: int) -> float:
        return (members + partners) * self.member_seconds() + self.ranker_final_seconds()

    def fits(self, extra_s: float) -> bool:
        """Whether ``extra_s`` more of search still leaves time for the full final training."""
        full = self.final_seconds(self.train_cfg.ensemble, self.train_cfg.partner_members)
        return self.elapsed() + extra_s + full + self.margin_s <= self.budget_s

    def trial_estimate(self, setting: Setting) -> float:
        """Seconds a trial of ``setting`` may take: the mean trial, scaled by its first layer's width."""
        mean_s = float(np.mean([t.seconds for t in self.trials]))
        mean_width = float(np.mean([t.setting.hidden[0] for t in self.trials]))
        return mean_s * max(1.0, setting.hidden[0] / max(mean_width, 1.0))

    # --- trials ------------------------------------------------------------------------------------------------

    def run(self, setting: Setting, stage: str) -> Trial | None:
        """Train and score ``setting`` (cached); None when the budget or the trial cap says stop."""
        key = setting.key()
        if key in self.cache:
            return self.cache[key]
        if len(self.trials) >= self.max_trials:
            self.stopped = "max_trials"
            return None
        if self.trials and not self.fits(self.trial_estimate(setting)):
            self.stopped = "budget"
            return None
        number = len(self.trials) + 1
        label = f"tuning: trial {number} ({_describe(setting, noise_name(self.model_cfg))})"
        best_val = self.best().val_rmse if self.trials else None
        model_cfg, train_cfg = apply_setting(setting, self.model_cfg, self.train_cfg)
        train_cfg = replace(train_cfg, ensemble=1, partner_members=0, ranker="none",
                            patience=min(train_cfg.patience, TRIAL_PATIENCE))

        def on_epoch(_report: Any) -> None:
            if self.on_step is not None:
                self.on_step(label, self.elapsed(), best_val)

        started = time.perf_counter()
        try:
            result = fit(self.inner_fit, self.inner_val, model_cfg, train_cfg, on_epoch=on_epoch)
            val_rmse = self.outer_rmse(result)
        except TrainingError as err:  # a diverging corner of the space scores as the worst, the search goes on
            log.info("trial %d failed: %s", number, err)
            result, val_rmse = None, math.inf
        trial = Trial(number, stage, setting, val_rmse, time.perf_counter() - started,
                      result.epochs_run if result else 0, result.best_epoch if result else 0, self.inner_fit.nnz)
        self.trials.append(trial)
        self.cache[key] = trial
        log.info("tune trial %d (%s): %s -> validation RMSE %.4f (%.1f s, %d epochs, best %d)", number, stage,
                 _describe(setting, noise_name(self.model_cfg)), val_rmse, trial.seconds, trial.epochs,
                 trial.best_epoch)
        if self.on_step is not None:
            self.on_step(label, self.elapsed(), self.best().val_rmse)
        return trial

    def outer_rmse(self, result: FitResult) -> float:
        """``sqrt(mean((clip(rhat) - r)^2))`` on the outer carve, the model reading every rating of the rest."""
        from recae.artifacts.trained_model import TrainedModel

        rows, cols, values = self.outer.coo()
        predicted = TrainedModel.from_fit(result.module, self.rest).predict(rows, cols).astype(np.float64)
        return float(np.sqrt(np.mean((predicted - values) ** 2)))

    def walk(self, coordinate: Callable[[Setting, int], Setting | None], stage: str,
             bracket: bool = False) -> bool | None:
        """Line search on one coordinate from the best setting; True if it moved, None when told to stop.

        Walks one direction while the outer RMSE improves, else the other. With ``bracket`` both neighbours are
        tried first and the walk goes on from the better one: lambda's curve is flat far from its optimum, where a
        slight gain one way can hide a large one the other way (a planted low-noise matrix showed it).
        """
        start = self.best()
        directions = (1, -1)
        if bracket:
            neighbours = []
            for direction in directions:
                candidate = coordinate(start.setting, direction)
                trial = self.run(candidate, stage) if candidate is not None else None
                if candidate is not None and trial is None:
                    return None
                if trial is not None:
                    neighbours.append((trial.val_rmse, direction))
            if not neighbours or min(neighbours)[0] >= start.val_rmse:
                return False
            directions = (min(neighbours)[1],)
        for direction in directions:
            candidate = coordinate(self.best().setting if bracket else start.setting, direction)
            moved = bracket
            while candidate is not None:
                trial = self.run(candidate, stage)
                if trial is None:
                    return None
                if trial is not self.best():
                    break
                moved = True
                candidate = coordinate(candidate, direction)
            if moved:
                return True
        return False

    # --- the ranker --------------------------------------------------------------------------------------------

    def search_ranker(self, train: RatingMatrix, first: bool) -> None:
        """EASE's lambda for the ``value`` input (first) or the ``binary`` one (when time allows)."""
        from recae.models.rankers import search_ease_lambda
        from recae.models.sparse_ease import search_sparse_ease_lambda
        from recae.training.ranking import ranker_kind

        cfg = self.train_cfg
        sparse = ranker_kind(train, cfg) == "sparse-ease"
        inputs = [cfg.ranker_input] if first else [i for i in ("value", "binary") if i != cfg.ranker_input]
        for name in inputs:
            if not first and not self.fits(self.ranker_seconds):
                self.stopped = "budget"
                return
            started = time.perf_counter()
            if self.on_step is not None:
                self.on_step(f"tuning: ranker ({name} input)", self.elapsed(),
                             self.best().val_rmse if self.trials else None)
            if sparse:
                search = search_sparse_ease_lambda(train, input=name, head_items=cfg.ranker_head_items,
                                                   neighbours=cfg.ranker_neighbours,
                                                   val_fraction=cfg.ranker_val_fraction, seed=cfg.seed,
                                                   relevant_from=cfg.relevant_from)
            else:
                search = search_ease_lambda(train, input=name, max_items=cfg.ranker_max_items,
                                            val_fraction=cfg.ranker_val_fraction, seed=cfg.seed,
                                            relevant_from=cfg.relevant_from, time_window=cfg.ranker_time_window,
                                            time_weight=cfg.ranker_time_weight)
            seconds = time.perf_counter() - started
            self.ranker_seconds += seconds
            self.ranker_searches.append({**search, "seconds": round(seconds, 3)})
            log.info("tune ranker: EASE %s input, lambda %g, NDCG@10 %.4f (%.1f s)", name, search["lambda"],
                     search["ndcg@10"], seconds)


def _describe(setting: Setting, noise: str) -> str:
    widths = "x".join(str(h) for h in setting.hidden)
    return f"lambda {setting.weight_decay:g}, hidden {widths}, {noise} {setting.noise:g}, lr {setting.lr:g}"


def tune(train: RatingMatrix, model_cfg: ModelConfig, train_cfg: TrainConfig, *, budget_s: float,
         spent_s: float = 0.0, on_step: StepCallback | None = None, max_trials: int | None = None) -> TuneResult:
    """Search settings on carves of ``train`` (the training part: never pass test ratings) within ``budget_s``.

    ``budget_s`` covers this search and the final training of the returned configuration (estimated), ``spent_s``
    of it already gone (reading the store); see the module docstring for the protocol. Raises TrainingError for a
    model the search does not cover.
    """
    if model_cfg.name == "rbm":
        raise TrainingError("--tune searches the autoencoders' settings; --model rbm is trained by contrastive "
                            "divergence and is not covered: drop --tune or pick an autoencoder")
    if budget_s <= 0:
        raise TrainingError(f"the tuning budget must be positive, got {budget_s:g} s")
    model_cfg.validate()
    train_cfg.validate()
    train_cfg = train_cfg.sized(train.nnz)
    search = _Search(train, model_cfg, train_cfg, budget_s, on_step, max_trials or MAX_TRIALS, spent_s)
    search.run(start_setting(train, model_cfg, train_cfg), "start")
    tune_ranker = train_cfg.ranker != "none" and train_cfg.ranker_lambda <= 0
    if tune_ranker:
        search.search_ranker(train, first=True)
    n_units = _n_units(train, model_cfg)
    stages = ["coarse", "fine"]
    while stages and search.stopped == "converged":
        stage = stages.pop(0)
        moved_any = False
        for name, coordinate in _moves(stage, n_units):
            moved = search.walk(coordinate, stage, bracket=name == "weight_decay")
            if moved is None:
                break
            moved_any |= moved
        if moved_any and not stages and search.stopped == "converged":
            stages.append("fine")  # a move changes the neighbourhood: look around the new best once more
    if tune_ranker and search.stopped == "converged":
        search.search_ranker(train, first=False)
    return _result(search, train_cfg, model_cfg)


def _result(search: _Search, train_cfg: TrainConfig, model_cfg: ModelConfig) -> TuneResult:
    """The chosen configuration (members fitted to the time left) and the record for meta.json."""
    best = search.best()
    if not math.isfinite(best.val_rmse):
        raise TrainingError("every tuning trial diverged; try a lower learning rate or a larger weight_decay")
    chosen_model, chosen_train = apply_setting(best.setting, model_cfg, train_cfg)
    members, partners, reason = _members_that_fit(search)
    chosen_train = replace(chosen_train, ensemble=members, partner_members=partners)
    ranker: dict[str, Any] = {}
    if search.ranker_searches:
        winner = max(search.ranker_searches, key=lambda s: s["ndcg@10"])
        chosen_train = replace(chosen_train, ranker_input=winner["input"], ranker_lambda=float(winner["lambda"]))
        ranker = {"ranker_input": winner["input"], "ranker_lambda": winner["lambda"]}
    noise = noise_name(model_cfg)
    record = {
        "budget_s": round(search.budget_s, 1), "metric": "rmse", "val_fraction": TUNE_VAL_FRACTION,
        "seed": train_cfg.seed + OUTER_SEED_OFFSET, "trial_patience": min(train_cfg.patience, TRIAL_PATIENCE),
        "n_outer": search.outer.nnz, "n_fit": search.inner_fit.nnz,
        "trials": [{"trial": t.number, "stage": t.stage, **t.setting.to_json(noise),
                    "val_rmse": round(t.val_rmse, 6) if math.isfinite(t.val_rmse) else None,
                    "seconds": round(t.seconds, 2), "epochs": t.epochs, "best_epoch": t.best_epoch}
                   for t in search.trials],
        "ranker_trials": search.ranker_searches,
        "chosen": {"trial": best.number, **best.setting.to_json(noise), "val_rmse": round(best.val_rmse, 6),
                   "ensemble": members, "partner_members": partners, **ranker},
        "members": reason,
        "stopped": search.stopped,
        "search_seconds": round(search.elapsed(), 2),
        "estimated_final_seconds": round(search.final_seconds(members, partners), 1),
    }
    log.info("tune: chose trial %d (%s), validation RMSE %.4f after %d trials in %.0f s (%s); %s", best.number,
             _describe(best.setting, noise), best.val_rmse, len(search.trials), search.elapsed(), search.stopped,
             reason)
    return TuneResult(chosen_model, chosen_train, record)


def _members_that_fit(search: _Search) -> tuple[int, int, str]:
    """(members, partner members, why): the configured counts, or the most the time left holds (a partner before
    a further member of the same orientation: it adds more), at least one member."""
    cfg = search.train_cfg
    left = search.budget_s - search.elapsed() - search.margin_s
    if search.final_seconds(cfg.ensemble, cfg.partner_members) <= left:
        return cfg.ensemble, cfg.partner_members, f"{cfg.ensemble} + {cfg.partner_members} partner as configured"
    options = sorted(((m, p) for m in range(1, cfg.ensemble + 1) for p in range(min(cfg.partner_members, m) + 1)),
                     key=lambda mp: (mp[0] + mp[1], mp[1]), reverse=True)
    members, partners = next((mp for mp in options if search.final_seconds(*mp) <= left), (1, 0))
    return members, partners, (f"{members} + {partners} partner: the budget cannot hold the configured "
                               f"{cfg.ensemble} + {cfg.partner_members}")
