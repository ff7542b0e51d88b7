"""Published model versions and the champion pointer: list, show, switch (rollback). No torch here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine

from recae.errors import ModelNotFoundError
from recae.store.db import Champion, ModelVersion, Recommendation, utcnow


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
        has_recs = conn.execute(
            select(Recommendation.user_id).where(Recommendation.version == version).limit(1)
        ).first()
        if has_recs is None:
            raise ModelNotFoundError(
                f"model version {version!r} has no precomputed recommendations (they were pruned); retrain instead"
            )
        set_champion(conn, version)
    return get_version(engine, version)
