"""The serving process's scorer: each published version loaded once, kept warm, and swapped atomically.

``recae serve`` answers fold-in, similar films and filter fallbacks with the champion's model. Loading it per
request (as the one-shot CLI does) would cost a disk read and a feature pass each time, so a ``ModelCache`` keeps
the version asked for last. A request names the version it read from the champion pointer and gets exactly
that model: a new champion is picked up by the next request, never half-way through one. A version is warmed
(features cached) before it is handed out, so the first visitor after a switch does not pay for it.

torch is imported only when a model is first loaded; the precomputed-list path never touches this module's model.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    from recae.serving.scorer import TrainedModel

log = logging.getLogger(__name__)

#: Versions kept loaded. One: after a switch the old model is dropped once the new one is ready (both are in
#: memory only while the new one loads). A request that read the old pointer a moment before the switch and asks
#: after it would load the old model again: correct, only slow, and the window is microseconds wide.
DEFAULT_KEEP = 1
#: Requests scoring with the model at once per worker. Each holds temporaries of about the model's size (fold-in
#: of the ml-1m default: ~100 MB), and on a few cores more at once only adds memory, not throughput.
DEFAULT_CONCURRENCY = 2


class ModelCache:
    """Loaded models by version, at most ``keep`` of them; thread-safe, one load at a time."""

    def __init__(self, engine: Engine, keep: int = DEFAULT_KEEP, threads: int = 1,
                 concurrency: int = DEFAULT_CONCURRENCY, models_dir: str | None = None) -> None:
        self._engine = engine
        self._models_dir = models_dir  # None: the folder beside a SQLite store (recae.paths.models_dir_of)
        self._keep = max(1, keep)
        self._threads = threads
        self._models: OrderedDict[str, TrainedModel] = OrderedDict()
        self._load_lock = threading.Lock()
        self.scoring = threading.BoundedSemaphore(max(1, concurrency))  # hold it while using a model

    def get(self, version: str) -> TrainedModel:
        """The model of ``version``, loaded and warmed on first use (ModelNotFoundError when unknown)."""
        model = self._models.get(version)
        if model is not None:
            return model
        with self._load_lock:
            model = self._models.get(version)
            if model is None:
                model = self._load(version)
                models = OrderedDict(self._models)
                models[version] = model
                while len(models) > self._keep:
                    models.popitem(last=False)
                self._models = models  # one assignment: readers see the old mapping or the new one
            return model

    def _load(self, version: str) -> TrainedModel:
        import torch

        from recae.serving.foldin import fold_in_scores
        from recae.serving.registry import load_version

        torch.set_num_threads(self._threads)  # a worker serves many requests at once; workers bring parallelism
        model = load_version(self._engine, version, self._models_dir)
        fold_in_scores(model, {}, None)  # warm: cache the movie features before the first visitor needs them
        release_free_memory()
        log.info("loaded model %s for serving", version)
        return model


def release_free_memory() -> None:
    """Hand memory freed by loading back to the OS (glibc keeps it otherwise: ~50 MB at ml-1m); no-op elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass
