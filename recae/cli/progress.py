"""A progress bar on stderr for training commands: epoch, loss and a validation metric; a time budget for tuning.

Silent when stderr is not a terminal, so logs and pipes get no control characters.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def rmse_fields(report: Any) -> tuple[str, str, str]:
    """The (loss, validation, best) texts of an autoencoder's epoch report."""
    return f"{report.train_loss:.4f}", f"{report.val_rmse:.4f}", f"{report.best_val_rmse:.4f}@{report.best_epoch}"


class TrainProgress:
    """A rich progress bar on stderr (epoch, loss, validation metric); silent when stderr is not a terminal.

    Used as ``with TrainProgress(epochs) as (on_epoch, on_progress):``; ``fields(report)`` gives the (loss,
    validation, best) texts of one epoch's report.
    """

    def __init__(self, epochs: int, quiet: bool = False, metric: str = "val RMSE",
                 fields: Callable[..., tuple[str, str, str]] = rmse_fields, label: str = "training") -> None:
        self.epochs, self.quiet, self.metric, self.fields, self.label = epochs, quiet, metric, fields, label

    def __enter__(self) -> tuple[Callable[[Any], None], Callable[[str], None]]:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.fields[unit]} {task.completed:.0f}/{task.total:.0f}"),
            TextColumn(f"loss {{task.fields[loss]}}  {self.metric} {{task.fields[val]}}  best {{task.fields[best]}}"),
            TimeElapsedColumn(), console=Console(stderr=True), disable=self.quiet or not sys.stderr.isatty(),
            transient=False,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task(self.label, total=self.epochs, loss="-", val="-", best="-", unit="epoch")

        def on_epoch(report: Any) -> None:
            loss, val, best = self.fields(report)
            self.progress.update(self.task, completed=report.epoch, total=getattr(report, "epochs", None) or None,
                                 loss=loss, val=val, best=best)

        def on_progress(message: str) -> None:
            self.progress.update(self.task, description=message, completed=0)

        return on_epoch, on_progress

    def budget_bar(self, budget_s: float) -> Callable[[str, float, float | None], None]:
        """A bar over a time budget (``train --tune``): ``on_step(message, elapsed seconds, best val RMSE)``."""
        task = self.progress.add_task("tuning", total=budget_s, loss="-", val="-", best="-", unit="s")

        def on_step(message: str, elapsed_s: float, best: float | None) -> None:
            self.progress.update(task, description=message, completed=min(elapsed_s, budget_s),
                                 best="-" if best is None else f"{best:.4f}")

        return on_step

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]
