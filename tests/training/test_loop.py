"""The one early-stopping loop on scripted scores, whose right decisions are known in advance."""

from __future__ import annotations

import math

import pytest
import torch

from recae.errors import TrainingError
from recae.training.loop import Epoch, LoopState, Stopping, run_epochs


class Scripted:
    """A 'family' whose weights are the epoch number and whose validation scores follow a script."""

    def __init__(self, scores: list[float | None]) -> None:
        self.scores, self.weights, self.trained, self.restored = scores, 0, [], None

    def train_epoch(self, epoch: int) -> str:
        self.trained.append(epoch)
        self.weights = epoch
        return f"figures {epoch}"

    def score(self) -> float | None:
        return self.scores[self.weights - 1]

    def restore(self, weights: int) -> None:
        self.restored = weights

    def run(self, stopping: Stopping, **kwargs):  # type: ignore[no-untyped-def]
        return run_epochs(stopping, self.train_epoch, self.score, lambda: self.weights, lambda done: done,
                          restore=self.restore, **kwargs)


def test_lower_is_better_keeps_the_best_epoch_and_stops_after_patience() -> None:
    family = Scripted([1.0, 0.8, 0.9, 0.8, 0.85, 0.7, 0.95])
    result = family.run(Stopping(epochs=7, patience=3))
    # 0.8 at epoch 4 only ties epoch 2's: not better; three epochs (3, 4, 5) without a better score end the run.
    assert family.trained == [1, 2, 3, 4, 5] and family.restored == 2 == result.best
    assert result.state.best_epoch == 2 and result.state.best_score == 0.8 and result.state.finished
    assert [h.best_epoch for h in result.state.history] == [1, 2, 2, 2, 2]
    assert result.state.history[2].figures == "figures 3" and result.state.history[2].score == 0.9


def test_higher_is_better_follows_the_score_up_and_patience_none_never_stops_early() -> None:
    family = Scripted([0.1, 0.3, 0.2, 0.2, 0.25, 0.29])
    result = family.run(Stopping(epochs=6, patience=None, higher_is_better=True))
    assert family.trained == [1, 2, 3, 4, 5, 6] and family.restored == 2
    assert result.state.best_score == 0.3 and result.state.stale == 4


def test_a_score_no_better_than_the_start_keeps_the_start() -> None:
    """A family with a candidate before training (fine-tuning's warm start) keeps it when no epoch beats it."""
    family = Scripted([0.9, 0.95])
    result = family.run(Stopping(epochs=2, patience=5), state=LoopState(best_score=0.85), best=0)
    assert family.restored == 0 and result.state.best_epoch == 0 and result.state.epoch == 2


def test_without_validation_every_epoch_is_the_best_and_the_last_weights_stay() -> None:
    family = Scripted([None, None, None])
    result = family.run(Stopping(epochs=3, patience=1))
    assert family.restored == 3 and result.state.best_epoch == 3 and result.state.best_score == math.inf
    assert all(math.isnan(h.score) for h in result.state.history)


def test_lr_decays_after_every_lr_decay_patience_stale_epochs() -> None:
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    seen: list[float] = []
    family = Scripted([1.0, 1.1, 1.2, 1.3, 1.4, 0.5, 0.6])
    family.run(Stopping(epochs=7, patience=10, lr_decay=0.5, lr_decay_patience=2), optimizer=optimizer,
               on_epoch=lambda done: seen.append(optimizer.param_groups[0]["lr"]))
    # stale 1, 2 (decay), 3, 4 (decay); an improvement resets the count; stale 1 after it: no decay
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25]


def test_a_non_finite_score_raises_the_familys_message_when_guarded() -> None:
    with pytest.raises(TrainingError, match="diverged at epoch 2"):
        Scripted([1.0, math.nan]).run(Stopping(epochs=3, patience=3),
                                      diverged=lambda epoch, value: f"diverged at epoch {epoch} ({value})")
    # unguarded (the RBM's validation): a NaN is simply no improvement
    result = Scripted([1.0, math.nan, 0.5]).run(Stopping(epochs=3, patience=3))
    assert result.state.best_epoch == 3


def test_a_resumed_state_takes_the_same_decisions_as_an_uninterrupted_run() -> None:
    scores = [1.0, 0.9, 0.95, 0.97, 0.85, 0.99, 1.2, 1.3]
    straight = Scripted(scores).run(Stopping(epochs=8, patience=3))
    saved: list[tuple[int, bool]] = []
    first = Scripted(scores)
    interrupted = first.run(Stopping(epochs=8, patience=3), stop_after=4,
                            checkpoint=lambda state, best, ends: saved.append((state.epoch, ends)))
    assert first.trained == [1, 2, 3, 4] and saved[-1] == (4, True) and not interrupted.state.finished
    second = Scripted(scores)
    second.weights = 4
    resumed = second.run(Stopping(epochs=8, patience=3), state=interrupted.state, best=interrupted.best)
    assert second.trained == [5, 6, 7, 8]
    assert [(h.epoch, h.best_epoch) for h in resumed.state.history] == [
        (h.epoch, h.best_epoch) for h in straight.state.history]
    assert resumed.best == straight.best == 5 and resumed.state.finished
    # a finished run trains nothing more
    third = Scripted(scores)
    again = third.run(Stopping(epochs=8, patience=3), state=resumed.state, best=resumed.best)
    assert third.trained == [] and again.best == 5


def test_the_report_sees_the_best_so_far_including_this_epoch() -> None:
    reports: list[Epoch[str]] = []
    Scripted([2.0, 1.0, 3.0]).run(Stopping(epochs=3, patience=5), on_epoch=reports.append)
    assert [(r.best_score, r.best_epoch) for r in reports] == [(2.0, 1), (1.0, 2), (1.0, 2)]
