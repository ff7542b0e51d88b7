"""File locks between processes: a job that must not run twice, and a try-lock for cleaning up after dead holders.

Every lock is an OS file lock (``filelock``), released by the kernel when the holder dies, even by SIGKILL, so a
killed run never leaves a stale lock behind. Locks never wait: the second of two concurrent runs fails at once
(``LockHeldError``, exit 75) instead of queueing or colliding. Beside a job lock, ``<name>.owner`` records the
holder's pid for the message. The nightly job (``locks/retrain.lock``), ``recae train`` (one lock per checkpoint
folder) and ``registry.publish`` (one per version being published) use them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock, Timeout

from recae.errors import LockHeldError


def _owner_file(path: Path) -> Path:
    return path.with_name(path.name + ".owner")


@contextmanager
def job_lock(path: str | Path, what: str, advice: str = "try again later") -> Iterator[Path]:
    """Hold the lock file ``path`` for the ``with`` block; never waits.

    Args:
        path: the lock file (its folder is created).
        what: the job's name for the message, e.g. ``recae retrain``.
        advice: what the user can do, the message's end.
    Raises:
        LockHeldError: another process holds the lock (exit code 75).
    """
    path = Path(path)
    with try_lock(path) as mine:
        if not mine:
            try:
                owner = _owner_file(path).read_text(encoding="utf-8").strip()
            except OSError:
                owner = ""
            held_by = f" by pid {owner}" if owner.isdigit() else ""
            raise LockHeldError(f"another {what} is running (lock {path} is held{held_by}); {advice}")
        _owner_file(path).write_text(f"{os.getpid()}\n", encoding="utf-8")
        yield path


@contextmanager
def try_lock(path: str | Path, *, remove: bool = False) -> Iterator[bool]:
    """Try once to take the lock file ``path``: yields True while this process holds it, False when another does.

    With ``remove`` the lock file is deleted before it is released (for one-use locks, such as a publish's: nobody
    else takes that lock once its holder is done, and a cleaner re-checks what it guards after taking it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), blocking=False)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        if remove:
            with suppress(OSError):
                path.unlink()
        lock.release()
