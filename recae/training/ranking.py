"""The top-N ranker of a training run: which kind the data gets, whether it fits the memory budget, its fit.

A run fits its ranker before the autoencoders: the ranker's peak (the lambda search's Gram matrices) then meets no
trained network in memory, and with a run folder the fitted ranker waits on disk while the networks train (576 MB
of head weights at ML-32M shape) and survives an interruption, so ``--resume`` does not fit it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recae.errors import TrainingError
from recae.models.rankers import Ranker, train_ease
from recae.store.matrix import RatingMatrix
from recae.artifacts.train_config import TrainConfig

log = logging.getLogger(__name__)

RANKER_FILE = "ranker.safetensors"


def ranker_kind(train: RatingMatrix, cfg: TrainConfig) -> str:
    """The ranker ``cfg`` fits on ``train``: ``"auto"`` is dense EASE while the rated films fit the head's budget
    (``ranker_head_items``; there sparse EASE would be the same model), sparse EASE above it."""
    if cfg.ranker != "auto":
        return cfg.ranker
    return "ease" if _rated_films(train) <= cfg.ranker_head_items else "sparse-ease"


def _rated_films(train: RatingMatrix) -> int:
    return int(np.count_nonzero(np.bincount(train.csr.indices, minlength=train.shape[1])))


def check_ranker_memory(train: RatingMatrix, cfg: TrainConfig) -> None:
    """TrainingError, before any training, when the ranker's estimated peak exceeds ``cfg.memory_budget_gb``.

    The estimate counts what the fit holds at once: dense EASE two films x films float32 matrices (the Gram and the
    inverse of a trial), and with the time term the pairs it sorts and sums (about 52 bytes a rating: 0.46 GB at
    ML-10M shape, ``tests/benchmarks/bench_time_pairs.py``); sparse EASE three head x head ones (the search's Gram, the final Gram and its inverse),
    the tail's neighbours and weights (about 32 bytes each), and three copies of the ratings (8 bytes a rating).
    At ML-32M shape it says 2.7 GB where the whole benchmark peaked at 4.2 GiB with the data itself.
    """
    kind = ranker_kind(train, cfg)
    if kind == "none" or cfg.memory_budget_gb == 0:
        return
    rated = _rated_films(train)
    if kind == "ease":
        films = min(rated, cfg.ranker_max_items)
        pairs = 52.0 * train.nnz if cfg.ranker_time_window > 0 and cfg.ranker_time_weight > 0 else 0.0
        need, what, knob = 8.0 * films**2 + pairs, f"dense EASE over {films:,} films", "ranker_max_items"
    else:
        head = min(rated, cfg.ranker_head_items)
        need = 12.0 * head**2 + 32.0 * (rated - head) * cfg.ranker_neighbours + 24.0 * train.nnz
        what, knob = f"sparse EASE with {head:,} head films and {rated - head:,} tail films", "ranker_head_items"
    if need > cfg.memory_budget_gb * 1e9:
        raise TrainingError(f"the ranker ({what}) needs about {need / 1e9:.1f} GB at its peak, above the memory "
                            f"budget of {cfg.memory_budget_gb:g} GB; lower {knob} (or set ranker = \"sparse-ease\"), or "
                            f"raise memory_budget_gb in [train] if this machine has the memory")


def fit_ranker(train: RatingMatrix, cfg: TrainConfig) -> tuple[Ranker, dict[str, Any]]:
    """The top-N ranker of ``cfg`` on the training ratings; its settings chosen on a carve of them (never test)."""
    if ranker_kind(train, cfg) == "sparse-ease":
        from recae.models.sparse_ease import train_sparse_ease

        return train_sparse_ease(train, lam=cfg.ranker_lambda, input=cfg.ranker_input,
                                 head_items=cfg.ranker_head_items, neighbours=cfg.ranker_neighbours,
                                 val_fraction=cfg.ranker_val_fraction, seed=cfg.seed, relevant_from=cfg.relevant_from)
    return train_ease(train, lam=cfg.ranker_lambda, input=cfg.ranker_input, max_items=cfg.ranker_max_items,
                      val_fraction=cfg.ranker_val_fraction, seed=cfg.seed, relevant_from=cfg.relevant_from,
                      time_window=cfg.ranker_time_window, time_weight=cfg.ranker_time_weight)


@dataclass(frozen=True, eq=False)
class ParkedRanker:
    """A run's fitted ranker: in memory, or waiting in the run folder (``load`` brings it back either way)."""

    ranker: Ranker | None
    path: Path | None
    search: dict[str, Any]
    seconds: float
    train: RatingMatrix

    def load(self) -> Ranker:
        if self.ranker is not None:
            return self.ranker
        assert self.path is not None
        return _read(self.path, self.train)[0]


def run_ranker(train: RatingMatrix, cfg: TrainConfig, run_dir: Path | None, resume: bool,
               on_progress: Callable[[str], None] | None = None) -> ParkedRanker | None:
    """Fit the run's ranker (None for ``ranker = "none"``); with ``run_dir`` it is written there and dropped from
    memory, and a resumed run reads it back instead of fitting it again."""
    if cfg.ranker == "none":
        return None
    from safetensors import SafetensorError

    # torchrun's other ranks keep theirs in memory: rank 0 removes the run folder once it has published, maybe
    # before a slower rank reads its ranker back
    from recae.training.distributed import is_secondary_rank

    path = run_dir / RANKER_FILE if run_dir is not None and not is_secondary_rank() else None
    identity = _identity(train, cfg)
    if path is not None and resume and path.exists():
        try:
            ranker, search, seconds, stored = _read(path, train)
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            log.warning("fitting the ranker again: %s could not be read (%s)", path, err)
        else:
            if stored == identity:
                log.info("ranker read back from %s (fitted before the interruption)", path)
                return ParkedRanker(None, path, search, seconds, train)
            log.warning("fitting the ranker again: %s belongs to other data or settings", path)
    started = time.perf_counter()
    if on_progress:
        on_progress(f"ranker: {ranker_kind(train, cfg)}, lambda chosen on validation")
    ranker, search = fit_ranker(train, cfg)
    seconds = time.perf_counter() - started
    if path is None:
        return ParkedRanker(ranker, None, search, seconds, train)
    _write(path, ranker, search, seconds, identity)
    return ParkedRanker(None, path, search, seconds, train)


def _identity(train: RatingMatrix, cfg: TrainConfig) -> str:
    settings = {k: v for k, v in cfg.to_json().items() if k.startswith("ranker") or k in ("seed", "relevant_from")}
    return hashlib.sha256(json.dumps([train.fingerprint(), settings], sort_keys=True).encode()).hexdigest()


def _write(path: Path, ranker: Ranker, search: dict[str, Any], seconds: float, identity: str) -> None:
    from safetensors.torch import save_file

    from recae.artifacts.model_files import _ranker_tensors

    meta = {"identity": identity, "describe": json.dumps(ranker.describe()), "search": json.dumps(search),
            "seconds": repr(seconds)}
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        save_file(_ranker_tensors(ranker), temp, metadata=meta)
        os.replace(temp, path)  # a killed run leaves the old file or none, never half of one
    finally:
        temp.unlink(missing_ok=True)


def _read(path: Path, train: RatingMatrix) -> tuple[Ranker, dict[str, Any], float, str]:
    from safetensors import safe_open

    from recae.artifacts.model_files import _ranker_from

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118  # safe_open has no items
    ranker = _ranker_from(tensors, json.loads(meta["describe"]), train.index)
    return ranker, json.loads(meta["search"]), float(meta["seconds"]), meta["identity"]
