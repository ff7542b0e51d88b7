"""A non-blocking job lock: the second of two concurrent runs fails at once instead of waiting or colliding.

The lock is an OS file lock (``filelock``), released by the kernel when the holder dies, even by SIGKILL, so a
killed run never leaves a stale lock behind. Beside it, ``<name>.owner`` records the holder's pid for the message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from recae.errors import LockHeldError


def _owner_file(path: Path) -> Path:
    return path.with_name(path.name + ".owner")


@contextmanager
def job_lock(path: str | Path, what: str) -> Iterator[Path]:
    """Hold the lock file ``path`` for the ``with`` block; never waits.

    Args:
        path: the lock file (its folder is created).
        what: the job's name for the message, e.g. ``recae retrain``.
    Raises:
        LockHeldError: another process holds the lock (exit code 75).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), blocking=False)
    try:
        lock.acquire()
    except Timeout:
        try:
            owner = _owner_file(path).read_text(encoding="utf-8").strip()
        except OSError:
            owner = ""
        held_by = f" by pid {owner}" if owner.isdigit() else ""
        raise LockHeldError(f"another {what} is running (lock {path} is held{held_by}); try again later") from None
    try:
        _owner_file(path).write_text(f"{os.getpid()}\n", encoding="utf-8")
        yield path
    finally:
        lock.release()
