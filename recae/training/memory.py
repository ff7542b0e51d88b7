"""A training run's peak memory, estimated before it starts: a store too big for ``memory_budget_gb`` is refused in
one line naming what needs the memory and the setting to change, never killed by the kernel an hour in.

Two peaks, never at once (the ranker is fitted and parked on disk before the networks train): the ranker's fit
(recae.training.ranking.check_ranker_memory) and one autoencoder in training, with the data beside it.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import resource
import sys

from recae.errors import TrainingError
from recae.models.autoencoders import ModelConfig
from recae.store.matrix import RatingMatrix
from recae.artifacts.train_config import TrainConfig
from recae.training.best_weights import best_on_disk
from recae.training.ensemble import partner_configs
from recae.training.ranking import check_ranker_memory

log = logging.getLogger(__name__)

#: float32 weights, their gradient, Adam's two moments and the best epoch's copy (kept in a file above
#: recae.training.best_weights.BEST_IN_MEMORY_BYTES: one copy fewer)
BYTES_PER_PARAMETER = 4 * 5
#: the ratings as the run holds them beside the network: the store's matrix, the split, the blend, fit and
#: validation carves, the oriented CSR a member trains on, its batches and the backward pass's temporaries
#: (`recae train` at ML-32M shape, 28.8M training ratings, the item network of 500 units: 5.33 GB at the peak,
#: 3.22 GB of it the network's, so about 73 bytes a rating)
BYTES_PER_RATING = 74


def network_parameters(n_units: int, hidden: tuple[int, ...]) -> int:
    """Weights and biases of a mirrored autoencoder over ``n_units`` inputs and outputs."""
    widths = (n_units, *hidden)
    encoder = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))
    decoder = sum(b * a + a for a, b in zip(widths[:-1], widths[1:], strict=True))
    return encoder + decoder


def network_peak_bytes(train: RatingMatrix, model_cfg: ModelConfig, cfg: TrainConfig) -> tuple[float, str]:
    """(bytes, what) of the larger of the main network and its partner while one of them trains, with the data;
    the members of an ensemble train one at a time and the merged network holds weights only; the trained main
    network's weights stay beside its partner while the partner trains."""
    n_users, n_movies = train.shape
    peaks = []
    configs = [(model_cfg, cfg)]
    if cfg.partner_members:
        configs.append(partner_configs(model_cfg, cfg))
    held = 0.0  # weights of the networks trained before this one
    for config, run in configs:
        units = n_users if config.orientation == "item" else n_movies
        one = network_parameters(units, tuple(config.hidden))
        merged = 4.0 * one * run.ensemble if run.ensemble > 1 else 0.0
        per_parameter = BYTES_PER_PARAMETER - (4 if best_on_disk(4 * one) else 0)
        need = held + per_parameter * one + merged + BYTES_PER_RATING * train.nnz
        held += 4.0 * one
        peaks.append((need, f"the {config.orientation}-based autoencoder ({units:,} inputs, hidden "
                            f"{list(config.hidden)}, {run.ensemble} member(s))"))
    return max(peaks)


def check_memory(train: RatingMatrix, model_cfg: ModelConfig, cfg: TrainConfig) -> None:
    """TrainingError before any work when the ranker's fit or a network's training would pass the budget."""
    if cfg.memory_budget_gb == 0:
        return
    check_ranker_memory(train, cfg)
    if model_cfg.name == "rbm":
        return  # trained by contrastive divergence, without Adam's moments: not estimated here
    need, what = network_peak_bytes(train, model_cfg, cfg.sized(train.nnz))
    if need > cfg.memory_budget_gb * 1e9:
        raise TrainingError(f"training {what} needs about {need / 1e9:.1f} GB at its peak, above the memory budget "
                            f"of {cfg.memory_budget_gb:g} GB; lower hidden in [model] (or ensemble, partner_members "
                            f"in [train]), or raise memory_budget_gb in [train] if this machine has the memory")


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (what ``/usr/bin/time -v`` reports at the end)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024) / 1e9  # bytes on macOS, KiB on Linux


def release_freed_memory() -> None:
    """Hand memory a finished stage freed back to the system. glibc keeps freed heap pages resident for reuse
    (0.6 GB after the nightly job's scoring of the champion at ML-32M shape), and the next stage's large tensors,
    which come from fresh mappings, would stack their peak on top of them. A no-op where libc has no malloc_trim."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim this way
            pass


def log_peak(stage: str) -> None:
    """Release what ``stage`` freed, then log the peak resident memory so far (``-v``), so a run over its budget
    says which step took it."""
    release_freed_memory()
    log.info("%s done: peak RSS so far %.2f GB", stage, peak_rss_gb())
