"""Records of nightly runs: the ``retrain_runs`` table, each run's summary, and the data already challenged.

A run inserts a ``running`` row when it takes the lock and completes it when it ends; rows still ``running`` at the
next start belong to killed runs and become ``interrupted``. ``recae models history`` reads them back.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from recae.retrain.inbox import InboxFile


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


def start_run(engine: Engine, started_at: datetime) -> int:
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


def finish_run(engine: Engine, report: RetrainReport) -> None:
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


def known_fingerprints(engine: Engine, champion: str) -> set[str]:
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
