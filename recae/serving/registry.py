"""The version lifecycle: publish, load, promote, prune, and the champion pointer (list, show, switch back).

Every trained model becomes a version through ``publish`` (``recae train``, ``quickstart`` and the nightly job
alike): its folder is written atomically (``recae.artifacts.model_files``), then its ``model_versions`` row, its
precomputed recommendations and the ``champion`` pointer commit together, so a reader sees either the old champion
with its list or the new one with its, and a failed or killed publish leaves the champion loadable. No torch at
import: the serving read path (``recommend``, ``http``) reads the pointer here; loading and publishing import the
model files when called. What a champion-to-be precomputes is the caller's (``recae.serving.recommend``), handed in
as a callback, so this module needs nothing from the read path that needs it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine

from recae.errors import LockHeldError, ModelNotFoundError
from recae.locks import try_lock
from recae.paths import models_dir_of
from recae.store.db import Champion, ModelVersion, Recommendation, utcnow
from recae.store.identity import check_model_catalogue

if TYPE_CHECKING:
    from recae.artifacts.trained_model import TrainedModel

log = logging.getLogger(__name__)

#: ``precompute(conn, version)`` writes a version's recommendations inside the caller's transaction and returns
#: how many rows it wrote (``recae.serving.recommend.precompute_recommendations`` with the model and its ratings).
Precompute = Callable[[Connection, str], int]


@dataclass(frozen=True)
class VersionInfo:
    """One published model as the store records it."""

    version: str
    model: str
    orientation: str
    split: str
    seed: int
    path: str
    data_fingerprint: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    created_at: datetime
    is_champion: bool

    def summary(self) -> dict[str, Any]:
        """Flat record for tables: the headline metrics beside the identity."""
        return {
            "version": self.version,
            "champion": "*" if self.is_champion else "",
            "model": self.model,
            "orientation": self.orientation,
            "split": self.split,
            "test_rmse": self.metrics.get("test_rmse"),
            "val_rmse": self.metrics.get("val_rmse"),
            "created_at": self.created_at.isoformat(timespec="seconds") if self.created_at else None,
        }


def stored_path(version: str) -> str:
    """What ``model_versions.path`` records for a version: its folder relative to the models folder, so that a
    home can be moved, restored from a backup or copied, and each copy reads its own weights."""
    return version


def version_folder(path: str, models_dir: str | Path) -> Path:
    """The folder of a version whose recorded path is ``path``, inside ``models_dir``.

    Rows written before paths were relative hold an absolute path: the folder of that name in ``models_dir`` wins
    (a moved or copied home), and the recorded one is used only when ``models_dir`` has none.
    """
    recorded = Path(path)
    if not recorded.is_absolute():
        return Path(models_dir) / recorded
    here = Path(models_dir) / recorded.name
    return here if here.exists() or not recorded.exists() else recorded


def _info(row: ModelVersion, champion: str | None) -> VersionInfo:
    return VersionInfo(
        version=row.version, model=row.model, orientation=row.orientation, split=row.split, seed=row.seed,
        path=row.path, data_fingerprint=row.data_fingerprint, metrics=json.loads(row.metrics or "{}"),
        config=json.loads(row.config or "{}"), created_at=row.created_at, is_champion=row.version == champion,
    )


def current_champion(conn: Connection) -> str | None:
    """The serving version, read inside the caller's transaction; None before the first publish."""
    return conn.execute(select(Champion.version).where(Champion.id == 1)).scalar()


def set_champion(conn: Connection, version: str, at: datetime | None = None) -> None:
    """Point the champion at ``version`` inside the caller's transaction: the only place the pointer moves."""
    at = at or utcnow()
    moved = conn.execute(update(Champion).where(Champion.id == 1).values(version=version, switched_at=at))
    if moved.rowcount == 0:
        conn.execute(insert(Champion).values(id=1, version=version, switched_at=at))


def champion_of(engine: Engine) -> str | None:
    """The serving version, or None before the first publish."""
    with engine.connect() as conn:
        return current_champion(conn)


def champion_version(conn: Connection) -> str:
    """Version of the serving model; ModelNotFoundError when none is published, or when it was trained on another
    catalogue than the store now holds (``ingest --replace``)."""
    version = current_champion(conn)
    if version is None:
        raise ModelNotFoundError("no trained model yet; run `recae train` (or `recae quickstart`)")
    check_model_catalogue(conn, version)
    return str(version)


def list_versions(engine: Engine) -> list[VersionInfo]:
    """Every published version, newest first."""
    from sqlalchemy.orm import Session

    champion = champion_of(engine)
    with Session(engine) as session:
        rows = session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())).all()
        return [_info(r, champion) for r in rows]


def get_version(engine: Engine, version: str | None = None) -> VersionInfo:
    """One version (default: the champion); ModelNotFoundError naming the known versions otherwise."""
    from sqlalchemy.orm import Session

    champion = champion_of(engine)
    wanted = version or champion
    if wanted is None:
        raise ModelNotFoundError("no trained model yet; run `recae train` (or `recae quickstart`)")
    with Session(engine) as session:
        row = session.get(ModelVersion, wanted)
        if row is None:
            known = session.scalars(select(ModelVersion.version).order_by(ModelVersion.created_at.desc())).all()
            listed = ", ".join(known[:5]) + (" ..." if len(known) > 5 else "") if known else "none"
            raise ModelNotFoundError(f"model version {wanted!r} is unknown; published versions: {listed}")
        return _info(row, champion)


def use_version(engine: Engine, version: str) -> VersionInfo:
    """Make ``version`` the champion in one transaction (rollback or roll forward)."""
    get_version(engine, version)
    with engine.begin() as conn:
        check_model_catalogue(conn, version)
        has_recs = conn.execute(
            select(Recommendation.user_id).where(Recommendation.version == version).limit(1)
        ).first()
        if has_recs is None:
            raise ModelNotFoundError(
                f"model version {version!r} has no precomputed recommendations (they were pruned); retrain instead"
            )
        set_champion(conn, version)
    return get_version(engine, version)


# --- publish and promote ---------------------------------------------------------------------------------------


def publish(engine: Engine, models_dir: str | Path, trained: TrainedModel, *, data_fingerprint: str | None = None,
            make_champion: bool = True, precompute: Precompute | None = None,
            extra_files: Callable[[Path], None] | None = None, crown_apart: bool = False) -> VersionInfo:
    """Write the version's folder atomically, record its ``model_versions`` row and (by default) make it the champion.

    ``precompute(conn, version)`` writes the version's recommendations in the transaction that records it, which
    also switches the pointer: a reader never meets a champion without its list. ``extra_files(folder)`` adds files
    to the folder before it moves into place (the nightly job's holdout record). With ``crown_apart`` the row
    commits on its own first and the recommendations and the pointer follow in a second transaction (``promote``):
    a version killed in between is a row without recommendations, which the nightly job recognises and removes.
    A failure at any step leaves the store and the current champion as they were (the folder is removed). A kill
    between the folder's move into place and the commit leaves a folder without a row: the publish holds
    ``models/.publish-<version>.lock`` until it has committed, so ``remove_orphans`` tells such a folder of a
    publish in flight from one a killed publish left, and removes only the latter.
    """
    from recae.artifacts.model_files import save_model, version_name

    models_dir = Path(models_dir)
    created_at = utcnow()
    version = version_name(created_at, trained.model_config.name, trained.orientation)

    def write(folder: Path) -> dict[str, Any]:
        meta = save_model(trained, folder, version=version, data_fingerprint=data_fingerprint, created_at=created_at)
        if extra_files is not None:
            extra_files(folder)
        return meta

    with try_lock(_publish_lock(models_dir, version), remove=True) as mine:
        if not mine:  # a fresh name: only a publish of the same microsecond could hold it
            raise LockHeldError(f"another process is publishing {version}; try again")
        return _publish_locked(engine, models_dir, trained, version, created_at, make_champion=make_champion,
                               precompute=precompute, write=write, crown_apart=crown_apart)


def _publish_lock(models_dir: Path, version: str) -> Path:
    """The lock a publish of ``version`` holds from before its folder exists until its row has committed."""
    return models_dir / f".publish-{version}.lock"


def _publish_locked(engine: Engine, models_dir: Path, trained: TrainedModel, version: str, created_at: datetime, *,
                    make_champion: bool, precompute: Precompute | None, write: Callable[[Path], dict[str, Any]],
                    crown_apart: bool) -> VersionInfo:
    """``publish``'s steps, under the version's publish lock."""
    from sqlalchemy.orm import Session

    from recae.artifacts.model_files import write_atomically

    final = models_dir / version
    meta = write_atomically(final, write)
    split_name = (trained.split_spec or {}).get("name", "")
    seed = trained.train_config.seed if trained.train_config is not None else 0
    config = {"model": trained.model_config.to_json(),
              "train": trained.train_config.to_json() if trained.train_config is not None else None,
              "split": trained.split_spec, "ranker": meta["ranker"], "tune": meta["tune"]}
    row = ModelVersion(
        version=version, model=trained.model_config.name, orientation=trained.orientation, split=split_name,
        seed=seed, path=stored_path(version), data_fingerprint=meta["data_fingerprint"],
        metrics=json.dumps(trained.metrics),
        config=json.dumps(config), created_at=created_at,
    )
    if trained.inputs.index.catalogue is not None:  # else the INSERT records the store's catalogue of now
        row.catalogue = trained.inputs.index.catalogue
    apart = make_champion and crown_apart
    try:
        with Session(engine) as session, session.begin():
            session.add(row)
            session.flush()
            if precompute is not None and not apart:
                precompute(session.connection(), version)
            if make_champion and not apart:
                set_champion(session.connection(), version, created_at)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    log.info("published %s at %s", version, final)
    if apart:
        try:
            promote(engine, version, precompute)
        except BaseException:
            with engine.begin() as conn:
                conn.execute(delete(Recommendation).where(Recommendation.version == version))
                conn.execute(delete(ModelVersion).where(ModelVersion.version == version))
            shutil.rmtree(final, ignore_errors=True)
            raise
    return VersionInfo(
        version=version, model=trained.model_config.name, orientation=trained.orientation, split=split_name,
        seed=seed, path=stored_path(version), data_fingerprint=meta["data_fingerprint"], metrics=dict(trained.metrics),
        config=config, created_at=created_at, is_champion=make_champion,
    )


def promote(engine: Engine, version: str, precompute: Precompute | None = None) -> int:
    """Precompute a published version's recommendations and make it the champion, in one transaction.

    Returns the number of recommendation rows written.
    """
    with engine.begin() as conn:
        written = precompute(conn, version) if precompute is not None else 0
        set_champion(conn, version)
    log.info("model %s now serves (%d precomputed recommendations)", version, written)
    return written


# --- load ------------------------------------------------------------------------------------------------------


def load_version(engine: Engine, version: str, models_dir: str | Path | None = None) -> TrainedModel:
    """Load a published version by name from ``models_dir`` (default: ``paths.models_dir_of(engine)``);
    ModelNotFoundError when the store has no such version."""
    from recae.artifacts.model_files import load_model

    with engine.connect() as conn:
        path = conn.execute(select(ModelVersion.path).where(ModelVersion.version == version)).scalar()
        if path is not None:
            check_model_catalogue(conn, version)
    if path is None:
        raise ModelNotFoundError(f"model version {version!r} is not in the store; see `recae models`")
    return load_model(version_folder(path, models_dir or models_dir_of(engine)))


def load_champion(engine: Engine, models_dir: str | Path | None = None) -> TrainedModel:
    """The serving model, from ``models_dir`` (default: ``paths.models_dir_of(engine)``); ModelNotFoundError
    before the first ``recae train``."""
    from recae.artifacts.model_files import load_model

    with engine.connect() as conn:
        path = conn.execute(
            select(ModelVersion.path).join(Champion, Champion.version == ModelVersion.version).where(Champion.id == 1)
        ).scalar()
        if path is not None:
            champion_version(conn)  # refuses a champion trained on another catalogue
    if path is None:
        raise ModelNotFoundError("no trained model yet; run `recae train`")
    return load_model(version_folder(path, models_dir or models_dir_of(engine)))


# --- prune -----------------------------------------------------------------------------------------------------


def prune_versions(engine: Engine, models_dir: Path, keep: int) -> tuple[str, ...]:
    """Delete all but the newest ``keep`` versions (never the champion): rows, recommendations, then folders; then
    the folders no version row names (``remove_orphans``). Returns the names removed.

    Folders are removed only inside ``models_dir``.
    """
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
    return (*names, *remove_orphans(engine, models_dir))


#: A version folder's name: ``20261123T101500123456Z-...`` (and ``20261123-101500-...`` of older releases).
_VERSION_NAME = re.compile(r"\d{8}(T\d{12}Z|-\d{6})-")


def remove_orphans(engine: Engine, models_dir: Path) -> tuple[str, ...]:
    """Delete the version folders of ``models_dir`` that no ``model_versions`` row names, and dead publishers'
    ``.tmp-*`` folders; returns the versions removed.

    A publish killed after its folder moved into place and before its row committed (during the precompute, which
    takes minutes on large data) leaves such a folder, whole and never served. A publish still in flight holds its
    version's lock (``publish``): its folder is left alone, and a folder is removed only after its lock is taken
    and its row is checked for again, so a publish that commits meanwhile keeps it. Only folders that look like a
    version (the name's timestamp, a meta.json) are candidates: ``vae/`` and anything a user put there stay.
    """
    root = models_dir.resolve()
    if not root.is_dir():
        return ()
    for temp in root.glob(".tmp-*"):
        pid = temp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(temp, ignore_errors=True)
    recorded = _recorded_names(engine)
    candidates = [f for f in root.iterdir() if _VERSION_NAME.match(f.name) and f.name not in recorded
                  and f.is_dir() and (f / "meta.json").is_file()]
    removed = []
    for folder in candidates:
        try:
            with try_lock(_publish_lock(root, folder.name), remove=True) as mine:
                if not mine or folder.name in _recorded_names(engine):
                    continue  # being published, or published since the first look
                doomed = root / f".tmp-{folder.name}-{os.getpid()}"  # killed mid-removal: a dead temp, cleaned next
                os.replace(folder, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
        except OSError as err:  # a read-only home: nothing can be removed, and nothing else is wrong
            log.warning("could not remove %s, a model folder no version names: %s", folder, err)
            continue
        log.info("removed %s: its publish was killed before it recorded the version", folder)
        removed.append(folder.name)
    return tuple(removed)


def _recorded_names(engine: Engine) -> set[str]:
    """Folder names the store's versions use (a version's own, or the last part of an old absolute path)."""
    with engine.connect() as conn:
        rows = conn.execute(select(ModelVersion.version, ModelVersion.path)).all()
    return {name for version, path in rows for name in (version, Path(path).name)}


def remove_unfinished(engine: Engine, models_dir: Path) -> tuple[str, ...]:
    """Delete versions a killed retrain published but never promoted: not the champion, no recommendations.

    Only versions made by this job (their split names ``holdout_of``) are touched, and only under the job's lock,
    so no such publish can be in flight.
    """
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
