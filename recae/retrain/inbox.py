"""The nightly job's inbox: new ratings files, each ingested in its own transaction, then filed away.

A file is moved to ``processed/`` once ingested (a file whose sha256 was ingested before counts, loading nothing),
or to ``rejected/`` beside ``FILE.reason.txt`` (one line) when it cannot be read or validated; one poisoned file
never stops the others. Files still being written (``*.tmp``, ``*.part``, ``*.partial``, dot-files) wait for the
next run.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recae.errors import DataError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

PROCESSED_DIR = "processed"
REJECTED_DIR = "rejected"
REASON_SUFFIX = ".reason.txt"
#: Inbox files still being written (by convention) are left for the next run.
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial")


@dataclass(frozen=True)
class InboxFile:
    """What happened to one inbox file: ``ingested``, ``already`` (same sha256 seen before) or ``rejected``."""

    file: str
    status: str
    rows_loaded: int = 0
    reason: str | None = None


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
