"""The one early-stopping loop: every model family and fine-tuning train through :func:`run_epochs`.

A family hands the loop callables: one epoch of training, the validation score, a snapshot of its state (the
weights to keep) and a restore of it. The loop owns the decisions they share: which epoch is the best (lower- or
higher-is-better scores), patience, the learning-rate decay on a plateau, the divergence guard on the score, the
progress callback and the checkpoint hook. A resumed run hands its saved :class:`LoopState` back in, so a resumed
deterministic run takes the same decisions as an uninterrupted one.

The rules every family follows:
- an epoch improves when its score beats the best so far strictly (``<`` for RMSE, ``>`` for NDCG); an epoch
  without validation (score None) always improves and leaves the best score alone (the last weights are kept);
- after an improving epoch ``stale`` is 0, after any other it grows by one; the run ends when ``stale`` reaches
  ``patience`` (None: never early) or at ``epochs``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch

if TYPE_CHECKING:
    from recae.models.autoencoders import AutoEncoder

#: What a family's epoch step returns (its training figures), what its snapshot holds, and its per-epoch report.
Figures = TypeVar("Figures")
Snapshot = TypeVar("Snapshot")
Report = TypeVar("Report")


@dataclass(frozen=True)
class EpochReport:
    """What one epoch of an RMSE-scored family did (autoencoders, RBMs), for progress display and the history."""

    epoch: int
    epochs: int
    train_loss: float  # masked MSE on the fit ratings seen this epoch (before the penalties)
    val_rmse: float
    best_val_rmse: float
    best_epoch: int
    seconds: float  # since training started (resumed runs include earlier sessions)


@dataclass(frozen=True, eq=False)
class FitResult:
    """A fitted module holding its best-validation weights, and how it got there."""

    module: AutoEncoder  # or a RatingRBM (the same scoring contract); None for an ensemble member's figures
    best_epoch: int
    best_val_rmse: float
    epochs_run: int
    seconds: float  # whole training time
    seconds_to_best: float  # time until the best epoch ended (ensembles: summed over members)
    history: list[EpochReport] = field(default_factory=list)
    members: list[FitResult] = field(default_factory=list)  # each member's figures (module None) when ensemble > 1
    weight_decay: float | None = None  # the lambda used (chosen on validation when a grid was given)
    module_file: Path | None = None  # where a finished ensemble member's weights wait for the merge


@dataclass(frozen=True)
class Stopping:
    """When to stop and how to judge a score."""

    epochs: int  # most epochs in all (a resumed run counts its earlier sessions)
    patience: int | None  # stop after this many epochs without improvement; None: never early
    higher_is_better: bool = False  # NDCG: True; RMSE: False
    lr_decay: float = 1.0  # multiply the optimizer's learning rates by this after each lr_decay_patience stale epochs
    lr_decay_patience: int = 1

    def worst(self) -> float:
        """The best score before any epoch: every real score beats it."""
        return -math.inf if self.higher_is_better else math.inf

    def beats(self, score: float, best: float) -> bool:
        return score > best if self.higher_is_better else score < best


@dataclass
class LoopState(Generic[Report]):
    """Where a run stands after ``epoch`` epochs; a checkpoint saves it and a resumed run hands it back."""

    best_score: float
    epoch: int = 0
    best_epoch: int = 0
    stale: int = 0
    seconds: float = 0.0  # training time so far, earlier sessions included
    seconds_to_best: float = 0.0
    finished: bool = False
    history: list[Report] = field(default_factory=list)


@dataclass(frozen=True)
class Epoch(Generic[Figures]):
    """One finished epoch as the loop saw it, for the family to turn into its report."""

    epoch: int
    figures: Figures  # what the epoch step returned
    score: float  # nan without validation
    best_score: float  # the best so far, this epoch included (+-inf before any)
    best_epoch: int
    seconds: float  # since training started


@dataclass(frozen=True)
class LoopResult(Generic[Snapshot, Report]):
    state: LoopState[Report]
    best: Snapshot  # the snapshot of the best epoch (already restored when a restore was given)


def run_epochs(
    stopping: Stopping,
    train_epoch: Callable[[int], Figures],
    score: Callable[[], float | None],
    snapshot: Callable[[], Snapshot],
    report: Callable[[Epoch[Figures]], Report],
    *,
    restore: Callable[[Snapshot], None] | None = None,
    state: LoopState[Report] | None = None,
    best: Snapshot | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    diverged: Callable[[int, float], str] | None = None,
    on_epoch: Callable[[Report], None] | None = None,
    checkpoint: Callable[[LoopState[Report], Snapshot, bool], None] | None = None,
    stop_after: int | None = None,
    started: float | None = None,
) -> LoopResult[Snapshot, Report]:
    """Train epoch after epoch, keep the snapshot of the best-scoring one, and stop on patience or ``epochs``.

    Args:
        train_epoch: trains epoch ``n`` (1-based) and returns the family's training figures.
        score: the validation score of the current weights; None when there is no validation.
        snapshot: a copy of the state to keep when an epoch improves; ``best`` is the one to start from (default:
            a snapshot now). ``restore`` puts the best snapshot back at the end.
        report: turns an :class:`Epoch` into the family's report (kept in ``state.history``, sent to ``on_epoch``).
        state: a resumed run's state (default: a fresh one); a state whose run finished trains nothing.
        optimizer: its learning rates are multiplied by ``stopping.lr_decay`` on a plateau.
        diverged: when given, a non-finite validation score raises TrainingError with ``diverged(epoch, score)``.
        checkpoint: called after every epoch with the state, the best snapshot and whether this session ends here.
        stop_after: end after this many epochs of this session (an interrupted run, in tests).
        started: ``time.perf_counter()`` when the fit started (default: now); ``state.seconds`` adds to it.
    """
    from recae.errors import TrainingError

    started = time.perf_counter() if started is None else started
    state = state if state is not None else LoopState(best_score=stopping.worst())
    best = snapshot() if best is None else best
    offset = state.seconds  # time spent in earlier sessions of a resumed run
    session_epochs = 0
    while (not state.finished and state.epoch < stopping.epochs
           and (stop_after is None or session_epochs < stop_after)):
        state.epoch += 1
        session_epochs += 1
        epoch = state.epoch
        figures = train_epoch(epoch)
        value = score()
        if value is not None and diverged is not None and not math.isfinite(value):
            raise TrainingError(diverged(epoch, value))
        improved = value is None or stopping.beats(value, state.best_score)
        elapsed = time.perf_counter() - started + offset
        if improved:
            if value is not None:
                state.best_score = value
            best = snapshot()
            state.best_epoch, state.stale, state.seconds_to_best = epoch, 0, elapsed
        else:
            state.stale += 1
            if (optimizer is not None and stopping.lr_decay < 1.0
                    and state.stale % stopping.lr_decay_patience == 0):
                for group in optimizer.param_groups:  # a plateau: smaller steps often find a better point
                    group["lr"] *= stopping.lr_decay
        done = Epoch(epoch, figures, float("nan") if value is None else value, state.best_score, state.best_epoch,
                     elapsed)
        out = report(done)
        state.history.append(out)
        state.seconds = elapsed
        if (stopping.patience is not None and state.stale >= stopping.patience) or epoch >= stopping.epochs:
            state.finished = True
        if checkpoint is not None:
            checkpoint(state, best, state.finished or (stop_after is not None and session_epochs >= stop_after))
        if on_epoch is not None:
            on_epoch(out)
    if restore is not None:
        restore(best)
    return LoopResult(state=state, best=best)


def diverged_message(value: float, epoch: int, lr: float) -> str:
    """The one-line error of a non-finite loss or validation score in gradient training."""
    return (f"training diverged: the loss became {value} at epoch {epoch}; "
            f"try a lower learning rate than {lr:g} or a larger weight_decay")


def check_finite(value: torch.Tensor | float, epoch: int, lr: float) -> None:
    """The divergence guard inside an epoch (each batch's loss): TrainingError when ``value`` is not finite."""
    from recae.errors import TrainingError

    value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(value):
        raise TrainingError(diverged_message(value, epoch, lr))


def state_dict_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module``'s state: the snapshot most families keep of their best epoch."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --- the RMSE-scored families (autoencoders, RBMs) -----------------------------------------------------------


def rmse_stopping(cfg: Any) -> Stopping:
    """Stopping of a TrainConfig: lower RMSE is better; lr decay on a plateau where the config asks for it."""
    return Stopping(epochs=cfg.epochs, patience=cfg.patience, lr_decay=cfg.lr_decay,
                    lr_decay_patience=cfg.lr_decay_patience)


def rmse_report(epochs: int) -> Callable[[Epoch[float]], EpochReport]:
    """The report of an epoch whose figures are its training loss (no best RMSE yet reads nan)."""
    def report(done: Epoch[float]) -> EpochReport:
        best = done.best_score if math.isfinite(done.best_score) else float("nan")
        return EpochReport(done.epoch, epochs, done.figures, done.score, best, done.best_epoch, done.seconds)

    return report


def rmse_fit_result(module: Any, state: LoopState[EpochReport], seconds: float) -> FitResult:
    """The FitResult of a finished single-network run."""
    best = state.best_score
    return FitResult(module=module, best_epoch=int(state.best_epoch),
                     best_val_rmse=float(best) if math.isfinite(best) else float("nan"), epochs_run=state.epoch,
                     seconds=seconds, seconds_to_best=float(state.seconds_to_best), history=state.history)
