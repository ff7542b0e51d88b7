"""Nightly retraining: lock -> ingest the inbox -> train a challenger -> compare with the champion -> publish or keep.

One run (``recae retrain``, from cron or a systemd timer):

1. takes ``locks/retrain.lock`` without waiting (a second run raises LockHeldError, exit 75);
2. ingests every new ratings file of the inbox (a file already ingested is recognised by its sha256), moving it to
   ``inbox/processed/``; a bad file goes to ``inbox/rejected/`` with ``FILE.reason.txt`` and the others go on;
3. stops with decision ``unchanged`` when the store's data fingerprint is one the champion was trained or already
   challenged on;
4. otherwise fine-tunes a challenger from the champion (warm start, same configuration; rows of new users or movies
   start at zero; the ranker is refitted, lambda chosen on a validation carve), scores both on the same fixed
   holdout, and publishes the challenger only when its RMSE is lower by at least ``margin`` and its NDCG@10 is not
   lower than the champion's by more than ``ndcg_margin``: weights and meta first, then the precomputed
   recommendations and the champion pointer in one transaction (``pipeline.promote``). Versions beyond the newest
   ``keep`` (never the champion) are pruned;
5. records the run in ``retrain_runs`` and returns its summary (the CLI prints it as one JSON line).

With no champion yet, the first run trains one with the default (or ``--config``) configuration and publishes it.

The fixed holdout. MovieLens-style random splits are positional: rebuilding the champion's split on grown data
would move ratings the champion trained on into the test set. So the holdout is a set of (user, movie) pairs
recorded beside each version (``holdout.safetensors``) and inherited: a rating the champion held out stays held
out; a rating the champion trained on stays in training; a new rating (in neither) goes to the holdout when
``u(seed, user_id, movie_id) < test_fraction``, with ``u`` a fixed hash to [0, 1) (splitmix64) and the seed and
fraction of the champion's split spec. Neither model ever trained on a holdout rating, and tomorrow's holdout
contains tonight's. A champion published by ``recae train`` has no record yet: its holdout is taken, before the
inbox is ingested, as every stored rating it did not train on (its test split when the store has not changed since
it was trained; ratings ingested by hand since then count as held out, never as training) and recorded.
Both models are compared on the holdout pairs whose user and movie the champion knows. Early stopping of the
warm start needs validation ratings the champion never fitted (else epoch 0 always looks best), so validation
pairs are inherited the same way: the champion's stay validation, and a new training rating validates when
``u(seed + 1, user_id, movie_id) < val_fraction``. A version killed between publish and promotion (not the
champion, no recommendations) is removed by the next run; the champion always stays loadable.

Test-only hook: ``RECAE_TEST_PAUSE_AT=train|publish`` makes the run write ``locks/paused-at-<point>`` and sleep
(``RECAE_TEST_PAUSE_SECONDS``, default 600) after the first training epoch, or inside the publish transaction
after the first batch of recommendations, so a test can SIGKILL it at that exact point.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recae.errors import DataError, ModelNotFoundError, RecaeError, TrainingError
from recae.retrain.warm_start import fine_tune, first_configs, warm_start_module

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from recae.models.autoencoders import AutoEncoder, ModelConfig
    from recae.serving.artifacts import TrainedModel
    from recae.store.matrix import RatingMatrix
    from recae.training.config import TrainConfig

log = logging.getLogger(__name__)

LOCK_FILE = "retrain.lock"
HOLDOUT_FILE = "holdout.safetensors"
DEFAULT_MARGIN = 0.002
#: NDCG@10 a challenger may give up and still be published: about two standard errors of a mean NDCG@10 over
#: ml-1m's users (per-user sd 0.21 over 5,683 users of a 10% validation carve of the 90/10 training part: 0.0028)
DEFAULT_NDCG_MARGIN = 0.005
DEFAULT_KEEP = 5
DEFAULT_WARM_EPOCHS = 10
#: Fine-tuning learning rate = this x training's: a fresh Adam at the full rate knocks a converged model off its
#: optimum (ml-100k, default model: validation RMSE 0.892 -> 0.961 after one epoch at 1x; 0.891 at 0.02x).
DEFAULT_WARM_LR_SCALE = 0.02
DEFAULT_WARM_PATIENCE = 3
DEFAULT_TEST_FRACTION = 0.1
PROCESSED_DIR = "processed"
REJECTED_DIR = "rejected"
REASON_SUFFIX = ".reason.txt"
#: Inbox files still being written (by convention) are left for the next run.
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial")
PAUSE_ENV = "RECAE_TEST_PAUSE_AT"
PAUSE_SECONDS_ENV = "RECAE_TEST_PAUSE_SECONDS"
#: Parameters with one row per output/input unit (users in item orientation, movies in user orientation).

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class RetrainOptions:
    """Settings of one run; the defaults are what ``recae retrain`` uses without flags."""

    inbox: Path  # new ratings files (plain CSV user_id,movie_id,rating[,timestamp])
    margin: float = DEFAULT_MARGIN  # publish only when RMSE(champion) - RMSE(challenger) >= margin
    ndcg_margin: float = DEFAULT_NDCG_MARGIN  # ... and NDCG@10(champion) - NDCG@10(challenger) <= ndcg_margin
    keep: int = DEFAULT_KEEP  # published versions kept (the champion always is)
    warm_epochs: int = DEFAULT_WARM_EPOCHS  # most fine-tuning epochs of a warm start (early stopping still applies)
    warm_lr_scale: float = DEFAULT_WARM_LR_SCALE  # fine-tuning learning rate as a multiple of the champion's
    warm_patience: int = DEFAULT_WARM_PATIENCE  # stop fine-tuning after this many epochs without improvement
    cold: bool = False  # train the challenger from scratch with the champion's configuration
    scale: tuple[float, float] = (0.5, 5.0)  # allowed ratings in inbox files
    step: float | None = 0.5  # allowed increment above scale[0] (None: any value)
    model_config: ModelConfig | None = None  # configuration of a first champion (default: the shipped one)
    train_config: TrainConfig | None = None


@dataclass(frozen=True)
class InboxFile:
    """What happened to one inbox file: ``ingested``, ``already`` (same sha256 seen before) or ``rejected``."""

    file: str
    status: str
    rows_loaded: int = 0
    reason: str | None = None


@dataclass(frozen=True)
class Comparison:
    """Champion and challenger scored on the same held-out ratings: ``rmse = sqrt(mean((clip(rhat) - r)^2))`` and
    the NDCG@10 of each one's served ranking (held-out ratings >= 4 relevant; NaN when no user has one)."""

    champion_rmse: float
    challenger_rmse: float
    n_compared: int  # holdout ratings whose user and movie both models know
    n_holdout: int  # the whole fixed holdout (the challenger's own test_rmse covers all of it)
    champion_ndcg: float = float("nan")
    challenger_ndcg: float = float("nan")

    @property
    def improvement(self) -> float:
        return self.champion_rmse - self.challenger_rmse

    @property
    def ndcg_loss(self) -> float:
        """How much NDCG@10 the challenger gives up (negative: it ranks better); 0 when either is unmeasured."""
        loss = self.champion_ndcg - self.challenger_ndcg
        return 0.0 if math.isnan(loss) else loss


@dataclass(frozen=True)
class RetrainReport:
    """One run's summary, as printed and stored in ``retrain_runs.summary``."""

    run: int
    started_at: str
    status: str  # succeeded | failed
    decision: str | None  # unchanged | published | kept | first
    message: str
    champion_before: str | None
    challenger: str | None
    champion_after: str | None
    files: tuple[InboxFile, ...]
    rows_loaded: int
    data_fingerprint: str | None
    metrics: dict[str, Any]
    pruned: tuple[str, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = [asdict(f) for f in self.files]
        data["pruned"] = list(self.pruned)
        data["metrics"] = {k: _finite(v) if isinstance(v, float) else v for k, v in self.metrics.items()}
        return data


# --- pure pieces -----------------------------------------------------------------------------------------------


def pair_keys(user_ids: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
    """One int64 per (user_id, movie_id): ``user_id * 2^32 + movie_id`` (MovieLens ids are < 2^31)."""
    return np.asarray(user_ids, dtype=np.int64) * (1 << 32) + np.asarray(movie_ids, dtype=np.int64)


def matrix_keys(matrix: RatingMatrix) -> np.ndarray:
    """(nnz,) pair keys of every rating, in CSR order."""
    rows, cols, _ = matrix.coo()
    return pair_keys(matrix.index.user_ids[rows], matrix.index.movie_ids[cols])


def seeded_uniform(user_ids: np.ndarray, movie_ids: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) per (seed, user_id, movie_id): splitmix64 of the pair, the same on any machine or night.

    ``x = (user_id << 32) ^ movie_id ^ (seed * phi)``; ``z = x + phi``; ``z = (z ^ z >> 30) * c1``;
    ``z = (z ^ z >> 27) * c2``; ``z ^= z >> 31``; ``u = (z >> 11) / 2^53`` (all mod 2^64).
    """
    phi, c1, c2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
    salt = np.uint64((int(seed) * phi) & _MASK64)
    x = (np.asarray(user_ids, dtype=np.int64).astype(np.uint64) << np.uint64(32)) ^ np.asarray(
        movie_ids, dtype=np.int64).astype(np.uint64) ^ salt
    with np.errstate(over="ignore"):
        z = x + np.uint64(phi)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(c1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(c2)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class Partition:
    """Which ratings of a matrix are held out (``test``) and which validate early stopping (``val``); both (nnz,)."""

    test: np.ndarray
    val: np.ndarray


def inherited_partition(matrix: RatingMatrix, read_keys: np.ndarray, held_keys: np.ndarray, val_keys: np.ndarray,
                        test_fraction: float, val_fraction: float, seed: int) -> Partition:
    """Split ``matrix`` the way the champion was split, extended to ratings it never saw (module docstring).

    ``read_keys`` are the ratings the champion read (its training ratings), ``held_keys`` its holdout, ``val_keys``
    its validation ratings (a subset of ``read_keys``). A held-out rating stays held out and a validation rating
    stays validation; a rating the champion never saw is held out when ``u(seed) < test_fraction``, else used for
    validation when ``u(seed + 1) < val_fraction``, else fitted.
    """
    keys = matrix_keys(matrix)
    held = np.isin(keys, held_keys)
    new = ~held & ~np.isin(keys, read_keys)
    test = held.copy()
    val = np.isin(keys, val_keys) & ~held
    if new.any():
        rows, cols, _ = matrix.coo()
        users, movies = matrix.index.user_ids[rows[new]], matrix.index.movie_ids[cols[new]]
        drawn_test = seeded_uniform(users, movies, seed) < test_fraction
        drawn_val = ~drawn_test & (seeded_uniform(users, movies, seed + 1) < val_fraction)
        test[new] = drawn_test
        val[new] = drawn_val
    return Partition(test=test, val=val)


# --- the test-only pause ---------------------------------------------------------------------------------------


def _pause_for_tests(point: str, marker_dir: Path) -> None:
    """With ``RECAE_TEST_PAUSE_AT=point``: write ``marker_dir/paused-at-<point>`` and sleep (tests SIGKILL here)."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    marker = marker_dir / f"paused-at-{point}"
    marker.write_text(f"{os.getpid()}\n", encoding="utf-8")
    log.warning("%s=%s: paused (pid %d); %s marks it", PAUSE_ENV, point, os.getpid(), marker)
    time.sleep(float(os.environ.get(PAUSE_SECONDS_ENV, "600")))


# --- inbox -----------------------------------------------------------------------------------------------------


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/name.1``, ``.2``, ... when taken (nothing is ever overwritten)."""
    target = folder / name
    n = 0
    while target.exists() or (folder / (target.name + REASON_SUFFIX)).exists():
        n += 1
        target = folder / f"{name}.{n}"
    return target


def inbox_files(inbox: Path) -> list[Path]:
    """Files waiting in the inbox, by name; dot-files and ``*.tmp``/``*.part`` (still being written) are skipped."""
    if not inbox.is_dir():
        return []
    return sorted(p for p in inbox.iterdir()
                  if p.is_file() and not p.name.startswith(".") and not p.name.endswith(IN_PROGRESS_SUFFIXES))


def ingest_inbox(engine: Engine, inbox: Path, *, scale: tuple[float, float] = (0.5, 5.0), step: float | None = 0.5,
                 on_progress: Callable[[str], None] | None = None) -> tuple[InboxFile, ...]:
    """Ingest every inbox file, each in its own transaction; move it to ``processed/`` or ``rejected/``.

    A rejected file gets ``rejected/FILE.reason.txt`` (one line) and does not stop the others. A file whose sha256
    was ingested before is moved to ``processed/`` without loading anything again.
    """
    from recae.store.ingest import ingest_ratings_file

    inbox.mkdir(parents=True, exist_ok=True)
    processed, rejected = inbox / PROCESSED_DIR, inbox / REJECTED_DIR
    outcomes: list[InboxFile] = []
    for path in inbox_files(inbox):
        if on_progress:
            on_progress(f"ingesting {path.name}")
        try:
            report = ingest_ratings_file(engine, path, scale=scale, step=step)
        except (DataError, OSError, ValueError, csv.Error) as err:  # any parse failure rejects only this file
            reason = str(err) if isinstance(err, DataError) else f"{path.name}: cannot read ({err})"
            rejected.mkdir(exist_ok=True)
            target = _free_name(rejected, path.name)
            target.with_name(target.name + REASON_SUFFIX).write_text(reason + "\n", encoding="utf-8")
            os.replace(path, target)
            log.warning("rejected %s: %s", path.name, reason)
            outcomes.append(InboxFile(file=path.name, status="rejected", reason=reason))
            continue
        processed.mkdir(exist_ok=True)
        os.replace(path, _free_name(processed, path.name))
        status = "already" if report.already_ingested else "ingested"
        outcomes.append(InboxFile(file=path.name, status=status, rows_loaded=int(report.rows_loaded)))
    return tuple(outcomes)


# --- holdout records -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldoutRecord:
    """A version's held-out and validation ratings as sorted int64 pair keys (see ``pair_keys``).

    ``store_fingerprint`` is the fingerprint of the whole store the version was trained from, when known.
    """

    test: np.ndarray
    val: np.ndarray
    store_fingerprint: str | None = None


def write_holdout(folder: Path, record: HoldoutRecord) -> None:
    """Record a version's held-out and validation pairs as ``folder/holdout.safetensors``, atomically."""
    import torch
    from safetensors.torch import save_file

    tmp = folder / f".{HOLDOUT_FILE}.{os.getpid()}.tmp"
    tensors = {name: torch.from_numpy(np.sort(np.asarray(keys, dtype=np.int64)))
               for name, keys in (("test_keys", record.test), ("val_keys", record.val))}
    metadata = {"store_fingerprint": record.store_fingerprint} if record.store_fingerprint else None
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, folder / HOLDOUT_FILE)


def read_holdout(folder: Path) -> HoldoutRecord | None:
    """A version's recorded held-out and validation pairs, or None when it has no (readable) record."""
    from safetensors import safe_open

    path = folder / HOLDOUT_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="np") as handle:
            return HoldoutRecord(test=np.asarray(handle.get_tensor("test_keys"), dtype=np.int64),
                                 val=np.asarray(handle.get_tensor("val_keys"), dtype=np.int64),
                                 store_fingerprint=(handle.metadata() or {}).get("store_fingerprint"))
    except Exception as err:  # noqa: BLE001 - a damaged record is rebuilt like a missing one
        log.warning("holdout record %s is unreadable (%s); rebuilding it", path, err)
        return None


def validation_keys(train: RatingMatrix, cfg: TrainConfig | None) -> np.ndarray:
    """Pair keys of the validation ratings ``recae.training.train.train_split`` carves from ``train`` with ``cfg``."""
    from recae.splits import holdout_validation
    from recae.training.config import TrainConfig

    cfg = cfg or TrainConfig()
    return matrix_keys(holdout_validation(train, cfg.val_fraction, cfg.seed)[1])


def _trained_on_this_store(engine: Engine, store: RatingMatrix, champion: TrainedModel, version: str) -> bool:
    """Whether the champion was trained on exactly this store: its recorded data fingerprint is the store's, or
    that of the training part of its split rebuilt on the store (``recae train`` records either)."""
    from sqlalchemy import select

    from recae.splits import SplitSpec, split_from_store
    from recae.store.db import ModelVersion

    with engine.connect() as conn:
        recorded = conn.execute(select(ModelVersion.data_fingerprint).where(ModelVersion.version == version)).scalar()
    if recorded == store.fingerprint():
        return True
    try:
        rebuilt = split_from_store(engine, store, SplitSpec.from_json(champion.split_spec or {}))
        return recorded == rebuilt.train.fingerprint()
    except (RecaeError, ValueError, KeyError):
        return False


def ensure_holdout(engine: Engine, folder: Path, champion: TrainedModel, version: str) -> HoldoutRecord:
    """The champion's holdout record; one is made (before ingest) for a champion without: every stored rating it
    did not read is held out; its validation ratings are rebuilt from its training ratings and train config, as
    training carved them; the store's fingerprint is kept when the champion was trained on exactly this store."""
    from recae.store.matrix import RatingMatrix

    recorded = read_holdout(folder)
    if recorded is not None:
        return recorded
    store = RatingMatrix.from_db(engine)
    stored = matrix_keys(store)
    held = stored[~np.isin(stored, matrix_keys(champion.inputs))]
    same = _trained_on_this_store(engine, store, champion, version)
    record = HoldoutRecord(test=held, val=validation_keys(champion.inputs, champion.train_config),
                           store_fingerprint=store.fingerprint() if same else None)
    write_holdout(folder, record)
    log.info("recorded %d held-out ratings of the champion in %s", held.size, folder / HOLDOUT_FILE)
    return record


# --- runs table ------------------------------------------------------------------------------------------------


def _start_run(engine: Engine, started_at: datetime) -> int:
    """Insert a ``running`` row; rows still ``running`` belong to killed runs (we hold the lock): interrupted."""
    from sqlalchemy import insert, update

    from recae.store.db import RetrainRun

    with engine.begin() as conn:
        conn.execute(update(RetrainRun).where(RetrainRun.status == "running")
                     .values(status="interrupted", message="the run was killed before it finished"))
        result = conn.execute(insert(RetrainRun).values(
            started_at=started_at, status="running", files_ingested=0, files_rejected=0, rows_loaded=0,
            summary="{}"))
        return int(result.inserted_primary_key[0])


def _finish_run(engine: Engine, report: RetrainReport) -> None:
    from sqlalchemy import update

    from recae.store.db import RetrainRun, utcnow

    metrics = report.metrics
    with engine.begin() as conn:
        conn.execute(update(RetrainRun).where(RetrainRun.id == report.run).values(
            finished_at=utcnow(), status=report.status, decision=report.decision,
            champion_before=report.champion_before, challenger=report.challenger,
            champion_after=report.champion_after, data_fingerprint=report.data_fingerprint,
            files_ingested=sum(f.status == "ingested" for f in report.files),
            files_rejected=sum(f.status == "rejected" for f in report.files), rows_loaded=report.rows_loaded,
            champion_rmse=_finite(metrics.get("champion_rmse")),
            challenger_rmse=_finite(metrics.get("challenger_rmse")),
            seconds=report.seconds, message=report.message, summary=json.dumps(report.to_json()),
        ))


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _known_fingerprints(engine: Engine, champion: str) -> set[str]:
    """Data the champion was trained on, or was already challenged on by a finished run."""
    from sqlalchemy import select

    from recae.store.db import ModelVersion, RetrainRun

    with engine.connect() as conn:
        own = conn.execute(select(ModelVersion.data_fingerprint).where(ModelVersion.version == champion)).scalar()
        seen = conn.execute(select(RetrainRun.data_fingerprint).where(
            RetrainRun.status == "succeeded", RetrainRun.champion_after == champion,
            RetrainRun.data_fingerprint.is_not(None))).scalars().all()
    return {fp for fp in [own, *seen] if fp}


@dataclass(frozen=True)
class RunRecord:
    """One row of ``recae models history``."""

    run: int
    started_at: str
    status: str
    decision: str | None
    files_ingested: int
    files_rejected: int
    rows_loaded: int
    champion_rmse: float | None
    challenger_rmse: float | None
    champion_after: str | None
    seconds: float | None
    message: str | None
    summary: dict[str, Any] = field(default_factory=dict, repr=False)

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("summary")
        return data


def run_history(engine: Engine, limit: int = 20) -> list[RunRecord]:
    """The newest ``limit`` retrain runs, newest first."""
    from sqlalchemy import select

    from recae.store.db import RetrainRun

    with engine.connect() as conn:
        rows = conn.execute(select(RetrainRun).order_by(RetrainRun.id.desc()).limit(limit)).all()
    return [RunRecord(
        run=r.id, started_at=r.started_at.isoformat(timespec="seconds"), status=r.status, decision=r.decision,
        files_ingested=r.files_ingested, files_rejected=r.files_rejected, rows_loaded=r.rows_loaded,
        champion_rmse=r.champion_rmse, challenger_rmse=r.challenger_rmse, champion_after=r.champion_after,
        seconds=r.seconds, message=r.message, summary=json.loads(r.summary or "{}"),
    ) for r in rows]


# --- pruning ---------------------------------------------------------------------------------------------------


def prune_versions(engine: Engine, models_dir: Path, keep: int) -> tuple[str, ...]:
    """Delete all but the newest ``keep`` versions (never the champion): rows, recommendations, then folders.

    Folders are removed only inside ``models_dir``; leftover ``.tmp-*`` folders of dead publishers go too.
    """
    from sqlalchemy import delete, select

    from recae.serving.registry import current_champion, version_folder
    from recae.store.db import ModelVersion, Recommendation

    with engine.begin() as conn:
        champion = current_champion(conn)
        rows = conn.execute(select(ModelVersion.version, ModelVersion.path)
                            .order_by(ModelVersion.created_at.desc(), ModelVersion.version.desc())).all()
        doomed = [(v, p) for v, p in rows[max(keep, 0):] if v != champion]
        names = [v for v, _ in doomed]
        if names:
            conn.execute(delete(Recommendation).where(Recommendation.version.in_(names)))
            conn.execute(delete(ModelVersion).where(ModelVersion.version.in_(names)))
    root = models_dir.resolve()
    for version, path in doomed:
        folder = version_folder(path, models_dir).resolve()
        if folder.parent == root and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        log.info("pruned model version %s", version)
    for temp in root.glob(".tmp-*") if root.is_dir() else []:
        pid = temp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(temp, ignore_errors=True)
    return tuple(names)


def remove_unfinished(engine: Engine, models_dir: Path) -> tuple[str, ...]:
    """Delete versions a killed retrain published but never promoted: not the champion, no recommendations.

    Only versions made by this job (their split names ``holdout_of``) are touched, and only under the job's lock,
    so no such publish can be in flight.
    """
    from sqlalchemy import delete, select

    from recae.serving.registry import current_champion, version_folder
    from recae.store.db import ModelVersion, Recommendation

    with engine.begin() as conn:
        champion = current_champion(conn)
        with_recs = set(conn.execute(select(Recommendation.version).distinct()).scalars())
        rows = conn.execute(select(ModelVersion.version, ModelVersion.path, ModelVersion.config)).all()
        doomed = [(v, p) for v, p, config in rows if v != champion and v not in with_recs
                  and "holdout_of" in (json.loads(config or "{}").get("split") or {})]
        if doomed:
            conn.execute(delete(ModelVersion).where(ModelVersion.version.in_([v for v, _ in doomed])))
    for version, path in doomed:
        folder = version_folder(path, models_dir).resolve()
        if folder.parent == models_dir.resolve():  # never another home's folder (an old absolute path)
            shutil.rmtree(folder, ignore_errors=True)
        log.warning("removed %s: a killed retrain published it but never made it the champion", version)
    return tuple(v for v, _ in doomed)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def compare(champion: TrainedModel, challenger: TrainedModel, holdout: RatingMatrix) -> Comparison:
    """Both models' RMSE on the holdout ratings whose user and movie the champion knows (``holdout`` is on the
    challenger's index); the champion never read any of them."""
    from recae.evaluate import held_out_for_model
    from recae.metrics import ranking_metrics, rating_metrics

    rows, cols, _ = holdout.coo()
    known = (champion.index.lookup_users(holdout.index.user_ids[rows]) >= 0) & (
        champion.index.lookup_movies(holdout.index.movie_ids[cols]) >= 0)
    common = holdout.subset(known)
    if common.nnz == 0:
        return Comparison(float("nan"), float("nan"), 0, holdout.nnz)
    on_champion, dropped = held_out_for_model(common, champion.inputs)
    if dropped:
        raise TrainingError(f"{dropped} holdout ratings were read by the champion; the holdout record is inconsistent")
    champion_rmse = rating_metrics(champion, on_champion).rmse
    challenger_rmse = rating_metrics(challenger, common).rmse
    champion_ndcg = ranking_metrics(champion, champion.inputs, on_champion, k=10).ndcg
    challenger_ndcg = ranking_metrics(challenger, challenger.inputs, common, k=10).ndcg
    return Comparison(float(champion_rmse), float(challenger_rmse), common.nnz, holdout.nnz, float(champion_ndcg),
                      float(challenger_ndcg))


def verdict(result: Comparison, margin: float, ndcg_margin: float) -> str | None:
    """None when the challenger may be published, else why not: its RMSE must be lower by ``margin`` and its
    NDCG@10 no lower than the champion's by more than ``ndcg_margin`` (it must lose neither prediction nor list)."""
    if result.n_compared == 0:
        return "no held-out rating both models can score"
    if result.improvement < margin:
        return (f"challenger RMSE {result.challenger_rmse:.4f} vs champion {result.champion_rmse:.4f} on "
                f"{result.n_compared} held-out ratings: not better by the margin {margin:g}")
    if result.ndcg_loss > ndcg_margin:
        return (f"challenger NDCG@10 {result.challenger_ndcg:.4f} vs champion {result.champion_ndcg:.4f}: it ranks "
                f"worse by more than the margin {ndcg_margin:g}")
    return None


# --- the run ---------------------------------------------------------------------------------------------------


@dataclass
class _State:
    """What a run has learned so far (mutable while it runs; frozen into a RetrainReport at the end)."""

    run: int
    started_at: datetime
    champion_before: str | None = None
    challenger: str | None = None
    champion_after: str | None = None
    decision: str | None = None
    message: str = ""
    files: tuple[InboxFile, ...] = ()
    fingerprint: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    pruned: tuple[str, ...] = ()


def run_retrain(engine: Engine, models_dir: Path, locks_dir: Path, options: RetrainOptions, *,
                on_progress: Callable[[str], None] | None = None,
                on_report: Callable[[RetrainReport], None] | None = None) -> RetrainReport:
    """One nightly run (see the module docstring). ``on_report`` also gets the summary of a failed run.

    Raises:
        LockHeldError: another run holds ``locks_dir/retrain.lock`` (nothing is recorded).
        RecaeError: the run failed (recorded as ``failed``; the champion is untouched).
    """
    from recae.retrain.lock import job_lock
    from recae.store.db import utcnow

    with job_lock(locks_dir / LOCK_FILE, "recae retrain"):
        clock = time.perf_counter()
        started_at = utcnow()
        state = _State(run=_start_run(engine, started_at), started_at=started_at)
        status = "failed"
        try:
            _run_locked(engine, models_dir, locks_dir, options, state, on_progress or (lambda _m: None))
            status = "succeeded"
        except RecaeError as err:
            state.message = str(err)
            raise
        except BaseException as err:
            state.message = f"{type(err).__name__}: {err}"
            raise
        finally:
            report = RetrainReport(
                run=state.run, started_at=started_at.isoformat(timespec="seconds"), status=status,
                decision=state.decision, message=state.message, champion_before=state.champion_before,
                challenger=state.challenger, champion_after=state.champion_after or state.champion_before,
                files=state.files, rows_loaded=sum(f.rows_loaded for f in state.files),
                data_fingerprint=state.fingerprint, metrics=state.metrics, pruned=state.pruned,
                seconds=round(time.perf_counter() - clock, 3),
            )
            try:
                _finish_run(engine, report)
            finally:
                if on_report is not None:
                    on_report(report)
    return report


def _run_locked(engine: Engine, models_dir: Path, locks_dir: Path, options: RetrainOptions, state: _State,
                progress: Callable[[str], None]) -> None:
    from recae.serving.artifacts import load_model
    from recae.serving.registry import champion_of, get_version, version_folder
    from recae.store.matrix import RatingMatrix

    removed = remove_unfinished(engine, models_dir)
    champion_version = champion_of(engine)
    champion: TrainedModel | None = None
    champion_dir: Path | None = None
    known: set[str] = set()
    if champion_version is not None:
        state.champion_before = champion_version
        champion_dir = version_folder(get_version(engine, champion_version).path, models_dir)
        champion = load_model(champion_dir)
        record = ensure_holdout(engine, champion_dir, champion, champion_version)  # before tonight's ratings
        known.update([record.store_fingerprint] if record.store_fingerprint else [])

    state.files = ingest_inbox(engine, options.inbox, scale=options.scale, step=options.step, on_progress=progress)
    matrix = RatingMatrix.from_db(engine)
    state.fingerprint = matrix.fingerprint()
    if champion is not None and state.fingerprint in known | _known_fingerprints(engine, champion_version or ""):
        state.decision = "unchanged"
        state.message = f"no new ratings since {champion_version} was trained or last challenged; nothing trained"
        state.pruned = removed + prune_versions(engine, models_dir, options.keep)
        return

    if champion is None:
        _first_champion(engine, models_dir, locks_dir, options, matrix, state, progress)
    else:
        assert champion_dir is not None
        _challenge(engine, models_dir, locks_dir, options, matrix, champion, champion_dir, state, progress)
    state.pruned = removed + prune_versions(engine, models_dir, options.keep)


def _first_champion(engine: Engine, models_dir: Path, locks_dir: Path, options: RetrainOptions,
                    matrix: RatingMatrix, state: _State, progress: Callable[[str], None]) -> None:
    from recae.splits import SplitSpec, make_split
    from recae.training.train import train_split

    model_cfg, train_cfg = first_configs(options.model_config, options.train_config)
    spec = SplitSpec("random", DEFAULT_TEST_FRACTION, train_cfg.seed)
    split = make_split(matrix, spec)
    progress(f"no champion yet: training {model_cfg.name} ({model_cfg.orientation}) on {split.train.nnz} ratings")
    result = train_split(split, model_cfg, train_cfg, on_epoch=_pause_after_first_epoch(locks_dir))
    state.metrics = {k: v for k, v in result.metrics.items()}
    state.metrics["challenger_rmse"] = result.metrics.get("test_rmse")
    record = HoldoutRecord(test=matrix_keys(split.test), val=validation_keys(split.train, train_cfg),
                           store_fingerprint=matrix.fingerprint())
    _publish(engine, models_dir, locks_dir, result.trained, matrix, record, state, progress)
    state.decision = "first"
    state.message = f"no champion before; {state.challenger} now serves"


def _pause_after_first_epoch(locks_dir: Path) -> Callable[[Any], None]:
    def on_epoch(report: Any) -> None:
        epoch = report if isinstance(report, int) else getattr(report, "epoch", 1)
        if epoch == 1:
            _pause_for_tests("train", locks_dir)

    return on_epoch


def _challenge(engine: Engine, models_dir: Path, locks_dir: Path, options: RetrainOptions, matrix: RatingMatrix,
               champion: TrainedModel, champion_dir: Path, state: _State, progress: Callable[[str], None]) -> None:
    from recae.serving.artifacts import TrainedModel, with_metrics
    from recae.splits import Split, SplitSpec
    from recae.training.config import TrainConfig
    from recae.training.train import fit_ranker, test_metrics, train_split, unit_means

    spec_json = dict(champion.split_spec or {})
    fraction = float(spec_json.get("test_fraction", DEFAULT_TEST_FRACTION))
    seed = int(spec_json.get("seed", 0))
    recorded = read_holdout(champion_dir)
    if recorded is None:
        raise ModelNotFoundError(f"champion {state.champion_before} has no holdout record in {champion_dir}")
    train_cfg = champion.train_config or TrainConfig()
    part = inherited_partition(matrix, matrix_keys(champion.inputs), recorded.test, recorded.val, fraction,
                               train_cfg.val_fraction, seed)
    train, holdout = matrix.subset(~part.test), matrix.subset(part.test)
    fit_part, val_part = matrix.subset(~part.test & ~part.val), matrix.subset(part.val)
    challenger_spec = {**SplitSpec.from_json(spec_json or {"name": "random"}).to_json(),
                       "holdout": "recorded", "holdout_of": state.champion_before}

    modules = None
    if not options.cold:
        from recae.models.batches import oriented_csr

        def warm(part: TrainedModel) -> AutoEncoder | None:
            oriented = oriented_csr(fit_part, part.orientation)
            return warm_start_module(part, matrix.index, unit_means(oriented, oriented.shape[1]))

        modules = [warm(part) for part in (champion, champion.partner) if part is not None]
        if any(m is None for m in modules):
            modules = None
            progress("the champion's weights do not fit a warm start; training from scratch")
    if modules is not None:
        progress(f"fine-tuning the champion on {train.nnz} ratings (at most {options.warm_epochs} epochs)")
        on_epoch = _pause_after_first_epoch(locks_dir)
        tune_cfg = replace(train_cfg, lr=train_cfg.lr * options.warm_lr_scale, patience=options.warm_patience)
        tuned = [fine_tune(m, fit_part, val_part, tune_cfg, options.warm_epochs,  # type: ignore[arg-type]
                           on_epoch=lambda epoch, _val: on_epoch(epoch)) for m in modules]
        fitted = tuned[0]
        trained = TrainedModel.from_fit(modules[0], train, train_config=train_cfg,  # type: ignore[arg-type]
                                        split_spec=challenger_spec)
        if len(modules) == 2:  # the partner is tuned alike and keeps the champion's blend weight
            trained = replace(trained, partner=TrainedModel.from_fit(modules[1], train),  # type: ignore[arg-type]
                              blend_weight=champion.blend_weight)
            fitted = {**fitted, "partner_val_rmse": tuned[1]["val_rmse"], "blend_weight": champion.blend_weight,
                      "seconds": round(sum(t["seconds"] for t in tuned), 3)}
        if train_cfg.ranker != "none":  # EASE has a closed form: refitted on the grown data, not fine-tuned
            progress("refitting the ranker (EASE)")
            ranker, search = fit_ranker(train, train_cfg)
            trained = replace(trained, ranker=ranker, ranker_search=search)
            fitted = {**fitted, "ranker_lambda": ranker.lam}
        metrics: dict[str, Any] = {**fitted, "warm_start": True, "n_train": train.nnz, "n_test": holdout.nnz,
                                   **test_metrics(trained, holdout)}
        trained = with_metrics(trained, metrics)
        record = HoldoutRecord(test=matrix_keys(holdout), val=matrix_keys(val_part),
                               store_fingerprint=state.fingerprint)
    else:
        model_cfg = champion.model_config
        if train_cfg.ensemble > 1 and all(h % train_cfg.ensemble == 0 for h in model_cfg.hidden):
            model_cfg = replace(model_cfg, hidden=tuple(h // train_cfg.ensemble for h in model_cfg.hidden))
        progress(f"training {model_cfg.name} from scratch on {train.nnz} ratings")
        split = Split(spec=SplitSpec.from_json(challenger_spec), train=train, test=holdout)
        result = train_split(split, model_cfg, train_cfg, on_epoch=_pause_after_first_epoch(locks_dir))
        metrics = {**result.metrics, "warm_start": False}
        trained = with_metrics(replace(result.trained, split_spec=challenger_spec, _cache=result.trained._cache),
                               metrics)
        record = HoldoutRecord(test=matrix_keys(holdout), val=validation_keys(train, train_cfg),
                               store_fingerprint=state.fingerprint)

    result_cmp = compare(champion, trained, holdout)
    state.metrics = {**metrics, "champion_rmse": result_cmp.champion_rmse,
                     "challenger_rmse": result_cmp.challenger_rmse, "improvement": result_cmp.improvement,
                     "champion_ndcg@10": result_cmp.champion_ndcg, "challenger_ndcg@10": result_cmp.challenger_ndcg,
                     "margin": options.margin, "ndcg_margin": options.ndcg_margin,
                     "n_compared": result_cmp.n_compared, "n_holdout": result_cmp.n_holdout}
    refusal = verdict(result_cmp, options.margin, options.ndcg_margin)
    if refusal is not None:
        state.decision = "kept"
        state.message = f"{refusal}; {state.champion_before} stays"
        return
    _publish(engine, models_dir, locks_dir, trained, matrix, record, state, progress)
    state.decision = "published"
    state.message = (f"challenger RMSE {result_cmp.challenger_rmse:.4f} beat champion {result_cmp.champion_rmse:.4f} "
                     f"on {result_cmp.n_compared} held-out ratings; {state.challenger} now serves "
                     f"(roll back: recae models use {state.champion_before})")


def _publish(engine: Engine, models_dir: Path, locks_dir: Path, trained: TrainedModel, matrix: RatingMatrix,
             record: HoldoutRecord, state: _State, progress: Callable[[str], None]) -> None:
    """Write weights, meta and holdout record; then recommendations + champion pointer in one transaction.

    If anything fails before the pointer switches, the new version is removed again and the champion is untouched.
    """
    from sqlalchemy import delete

    from recae.serving.artifacts import publish
    from recae.serving.publish import promote
    from recae.store.db import ModelVersion, Recommendation

    progress("publishing")
    published = publish(engine, models_dir, trained, data_fingerprint=matrix.fingerprint(), make_champion=False)
    state.challenger = published.version
    folder = models_dir / published.version
    try:
        write_holdout(folder, record)
        progress("precomputing recommendations and switching the champion")
        paused = {"done": False}

        def on_batch(_n: int) -> None:
            if not paused["done"]:
                paused["done"] = True
                _pause_for_tests("publish", locks_dir)

        promote(engine, published.version, trained, matrix, on_batch=on_batch)
    except BaseException:
        with engine.begin() as conn:
            conn.execute(delete(Recommendation).where(Recommendation.version == published.version))
            conn.execute(delete(ModelVersion).where(ModelVersion.version == published.version))
        shutil.rmtree(folder, ignore_errors=True)
        state.challenger = None
        raise
    state.champion_after = published.version
