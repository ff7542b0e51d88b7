"""The serving process's scorer: each published version loaded once, kept warm, and swapped atomically.

``recae serve`` answers fold-in, similar films and filter fallbacks with the champion's model. Loading it per
request (as the one-shot CLI does) would cost a disk read and a feature pass each time, so a ``ModelCache`` keeps
the version asked for last. A request names the version it read from the champion pointer and gets exactly
that model: a new champion is picked up by the next request, never half-way through one. A version is warmed
(features cached) before it is handed out, so the first visitor after a switch does not pay for it.

A version that cannot be loaded (files missing, truncated, altered, or written by an incompatible recae) is one
error whatever the loader raised: CorruptArtifactError, which the server answers with 503, the details going to
the log. The failure is remembered for RETRY_AFTER_S, so a burst of requests (or readiness probes) against a
broken champion does not re-read its files each time, while files put right are picked up soon after.

Models are read and run with numpy alone (``recae.artifacts.inference``): a serving worker never imports torch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from recae.errors import CorruptArtifactError, ModelNotFoundError
from recae.store.db import StoreUnavailableError

if TYPE_CHECKING:
    from recae.artifacts.trained_model import TrainedModel

log = logging.getLogger(__name__)

#: Versions kept loaded. One: after a switch the old model is dropped once the new one is ready (both are in
#: memory only while the new one loads). A request that read the old pointer a moment before the switch and asks
#: after it would load the old model again: correct, only slow, and the window is microseconds wide.
DEFAULT_KEEP = 1
#: Requests scoring with the model at once per worker. Each holds temporaries of about the model's size (fold-in
#: of the ml-1m default: ~100 MB), and on a few cores more at once only adds memory, not throughput.
DEFAULT_CONCURRENCY = 2
#: Seconds a failed load is answered from memory before the files are tried again.
RETRY_AFTER_S = 5.0
#: Blocks from this size up get a mapping of their own, returned to the OS when freed (see steady_allocator).
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


class ModelCache:
    """Loaded models by version, at most ``keep`` of them; thread-safe, one load at a time."""

    def __init__(self, engine: Engine, keep: int = DEFAULT_KEEP,
                 concurrency: int = DEFAULT_CONCURRENCY, models_dir: str | None = None,
                 retry_after_s: float = RETRY_AFTER_S) -> None:
        self._engine = engine
        self._models_dir = models_dir  # None: the folder beside a SQLite store (recae.paths.models_dir_of)
        self._keep = max(1, keep)
        self._models: OrderedDict[str, TrainedModel] = OrderedDict()
        self._load_lock = threading.Lock()
        self._retry_after_s = retry_after_s
        self._failed: dict[str, float] = {}  # version -> when its load failed
        self.scoring = threading.BoundedSemaphore(max(1, concurrency))  # hold it while using a model

    def get(self, version: str) -> TrainedModel:
        """The model of ``version``, loaded and warmed on first use (ModelNotFoundError when unknown,
        CorruptArtifactError when it cannot be loaded, whatever the reason)."""
        model = self._models.get(version)
        if model is not None:
            return model
        with self._load_lock:
            model = self._models.get(version)
            if model is None:
                model = self._load_or_refuse(version)
                models = OrderedDict(self._models)
                models[version] = model
                while len(models) > self._keep:
                    models.popitem(last=False)
                self._models = models  # one assignment: readers see the old mapping or the new one
            return model

    def _load_or_refuse(self, version: str) -> TrainedModel:
        """``_load``, with every failure but a missing version or a silent store turned into one error."""
        refused = CorruptArtifactError(f"model {version} cannot be loaded (its files are damaged or unreadable; the "
                                       "server log has the details): retrain, or `recae models use` another version")
        failed_at = self._failed.get(version)
        if failed_at is not None and time.monotonic() - failed_at < self._retry_after_s:
            raise refused  # a fresh error each time: re-raising one would grow its traceback without end
        try:
            model = self._load(version)
        except (ModelNotFoundError, StoreUnavailableError, OperationalError):
            raise
        except Exception as err:  # noqa: BLE001 - any loader error means the same thing to a client: unloadable
            log.error("model %s cannot be loaded: %s: %s", version, type(err).__name__, err)
            self._failed = {version: time.monotonic()}  # only the latest version asked for
            raise refused from None
        self._failed = {}
        return model

    def _load(self, version: str) -> TrainedModel:
        from recae.serving.foldin import fold_in_scores
        from recae.serving.registry import load_version

        model = load_version(self._engine, version, self._models_dir)
        fold_in_scores(model, {}, None)  # warm: cache the movie features before the first visitor needs them
        release_free_memory()
        log.info("loaded model %s for serving", version)
        return model


def _glibc(function: str):  # type: ignore[no-untyped-def] - a ctypes function, or None off glibc
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return getattr(libc, function, None) if libc is not None else None


def release_free_memory() -> None:
    """Hand memory freed by loading back to the OS (glibc keeps it otherwise: ~50 MB at ml-1m); no-op elsewhere."""
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)


def steady_allocator(threshold: int = MMAP_THRESHOLD) -> None:
    """Keep a serving worker's memory level: blocks of ``threshold`` bytes and more are mapped on their own.

    glibc raises its mmap threshold each time a mapped block is freed (up to 32 MB), so after a few requests
    their multi-MB temporaries (fold-in copies the movie features) come from the heaps of the thread pool's
    arenas instead, one per thread, where freed space stays with the process and fragments. Under 8-way mixed
    load on ml-100k that took the worker from 364 MB ready to 650 MB and rising; with the threshold fixed it
    stays near 400 MB at the same speed (tests/benchmarks/bench_soak.py). A MALLOC_MMAP_THRESHOLD_ already in
    the environment wins; no-op off glibc.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    mallopt = _glibc("mallopt")
    if mallopt is not None and not mallopt(_M_MMAP_THRESHOLD, int(threshold)):
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) was refused; memory may creep under load", threshold)
