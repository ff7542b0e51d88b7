"""Train on a named split of the store and publish: the steps `train` and `quickstart` share.

Publishing and promotion are the registry's (``recae.serving.registry.publish``, which the nightly job uses too);
this module adds what a training from the store needs around it: the split, the checkpoint folder, tuning, the
distributed ranks, and the recommendations a new champion serves from its first request.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy.engine import Connection, Engine

from recae.artifacts.train_config import TrainConfig
from recae.errors import STORE_BUSY, StoreBusyError
from recae.evaluation.splits import Split, SplitSpec, split_from_store
from recae.locks import job_lock
from recae.models.autoencoders import ModelConfig
from recae.models.side_part import groups_from_store
from recae.serving.recommend import precompute_recommendations
from recae.serving.registry import VersionInfo, publish, remove_orphans
from recae.store.db import is_lock_timeout
from recae.store.matrix import RatingMatrix
from recae.threads import blas_threads
from recae.training import distributed
from recae.training.checkpoint import run_fingerprint
from recae.training.loop import EpochReport
from recae.training.memory import log_peak
from recae.training.train import TrainResult, train_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingRun:
    """What one training produced: the published version, its metrics and the trained model."""

    published: VersionInfo
    result: TrainResult
    promoted: bool


def run_folder(models_dir: Path, spec: SplitSpec, model_cfg: ModelConfig, train_cfg: TrainConfig,
               matrix: RatingMatrix) -> Path:
    """Checkpoint folder of one training run: the same settings and data find the same folder (``--resume``)."""
    split = json.dumps(spec.to_json(), sort_keys=True)
    fingerprint = run_fingerprint(model_cfg, train_cfg, matrix.fingerprint(), split)
    return models_dir / ".runs" / fingerprint


def clear_run_folder(run_dir: Path, resume: bool) -> None:
    """Start a run that does not resume in an empty folder. Under torchrun only rank 0 clears it: a slower rank
    clearing it too would delete what rank 0 had already parked there (its ranker), and the run would fail."""
    if not resume and run_dir.exists() and not distributed.is_secondary_rank():
        shutil.rmtree(run_dir)


def train_and_publish(
    engine: Engine,
    models_dir: Path,
    spec: SplitSpec,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    make_champion: bool = True,
    run_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    on_split: Callable[[Split], None] | None = None,
    tune_budget_s: float | None = None,
    on_tune_step: Callable[[str, float, float | None], None] | None = None,
) -> TrainingRun | None:
    """Build the split from the store, train (checkpointing as it goes), publish and, by default, promote.

    Promotion happens in the publish transaction: the version row, its precomputed recommendations and the
    champion pointer commit together. The run's checkpoint folder is removed once the model is published; while
    it trains and publishes, the run holds the folder's lock (``run_lock``: a second run of the same settings and
    data raises LockHeldError, exit 75). Folders a killed publish left are removed first (``remove_orphans``).
    Under torchrun every rank trains its share; only rank 0 publishes, the others return None.
    With ``tune_budget_s``, the settings are first searched on carves of the training part (recae.training.tune) within
    that many seconds, counted from here and covering the final training; the search is stored with the model.
    """
    started = time.perf_counter()
    if not distributed.is_secondary_rank() and (orphans := remove_orphans(engine, models_dir)):
        log.warning("removed %s: a publish killed before it recorded the version left it", ", ".join(orphans))
    matrix = RatingMatrix.from_db(engine)
    split = split_from_store(engine, matrix, spec)
    if on_split is not None:
        on_split(split)
    with blas_threads(train_cfg.blas_threads(split.train.nnz)):  # one BLAS thread on small data
        tuned = None
        if tune_budget_s is not None:
            from recae.training.tune import tune

            # only the training part: the test ratings never reach the search
            tuned = tune(split.train, model_cfg, train_cfg, budget_s=tune_budget_s,
                         spent_s=time.perf_counter() - started, on_step=on_tune_step)
            model_cfg, train_cfg = tuned.model_config, tuned.train_config
        run_dir = run_dir or run_folder(models_dir, spec, model_cfg, train_cfg, matrix)
        with ExitStack() as held:
            if not distributed.is_secondary_rank():  # torchrun's ranks share rank 0's run; only it takes the lock
                held.enter_context(run_lock(models_dir, run_dir))
            clear_run_folder(run_dir, resume)
            final_started = time.perf_counter()
            result = train_split(split, model_cfg, train_cfg, run_dir=run_dir, resume=resume, on_epoch=on_epoch,
                                 on_progress=on_progress, groups=groups_from_store(engine, matrix.index))
            if tuned is not None:
                record = {**tuned.record, "final_seconds": round(time.perf_counter() - final_started, 1)}
                result = replace(result, trained=replace(result.trained, tune_search=record))
            world = distributed.current()
            if world is not None and not world.primary:
                return None
            if make_champion and on_progress is not None:
                on_progress("precomputing recommendations")

            def precompute(conn: Connection, version: str) -> int:
                # Films a user rated anywhere (train or test) are never recommended to them.
                written = precompute_recommendations(conn, version, result.trained, matrix)
                log_peak("precompute")
                return written

            try:
                published = publish(engine, models_dir, result.trained, data_fingerprint=split.train.fingerprint(),
                                    make_champion=make_champion, precompute=precompute if make_champion else None)
            except Exception as err:
                if not is_lock_timeout(err):
                    raise
                # The finished run's checkpoint stays in run_dir: a rerun with resume publishes it without training.
                raise StoreBusyError(f"{STORE_BUSY}; nothing was published, the trained model is kept in {run_dir}: "
                                     "run the same command with --resume when it finishes to publish it without "
                                     "retraining") from None
            shutil.rmtree(run_dir, ignore_errors=True)
            return TrainingRun(published=published, result=result, promoted=make_champion)


def run_lock(models_dir: Path, run_dir: Path) -> AbstractContextManager[Path]:
    """The lock of one checkpoint folder, held while a run trains into it and publishes it: a second run of the
    same settings and data would otherwise start afresh by deleting the first one's checkpoints (exit 75 instead).
    A killed run's lock dies with it, so ``--resume`` continues it."""
    what = "`recae train` of the same settings and data"
    return job_lock(models_dir / ".locks" / f"run-{run_dir.name}.lock", what,
                    advice=f"its checkpoints are in {run_dir}: wait for it to publish its model, or train other "
                           "settings (e.g. another --init-seed) beside it")
