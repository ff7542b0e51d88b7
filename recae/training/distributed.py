"""Data-parallel training across processes with PyTorch's own engine (``torchrun`` + DistributedDataParallel).

``torchrun --nproc_per_node=N -m recae train ...`` starts N copies of the command; torchrun's environment
(``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...) tells each one its place. Every rank walks the same seeded sequence of
minibatches and takes its own share of each batch's vectors; DistributedDataParallel averages the gradients, and
each rank's loss is scaled by its share of the batch's ratings so that the average equals the single-process
gradient of the whole batch. The weights therefore stay identical on every rank, validation decisions are taken
by rank 0 and broadcast, and only rank 0 writes checkpoints, artifacts and the store.

Backends: gloo on CPU, NCCL on CUDA. Multi-node runs use torchrun's rendezvous (see the README).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int
    size: int
    backend: str

    @property
    def primary(self) -> bool:
        """Rank 0: the one process that writes checkpoints, artifacts and the store."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) started several processes for this run."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_secondary_rank() -> bool:
    """True in a torchrun process other than rank 0: it trains its share, but rank 0 alone reports and publishes.

    Read from torchrun's ``RANK`` before the process group is joined (``current`` answers only after ``join``).
    """
    return int(os.environ.get("RANK", "0")) > 0


def join(device: torch.device) -> World | None:
    """Join the process group torchrun described (gloo on CPU, NCCL on CUDA); None for a single process."""
    if dist.is_available() and dist.is_initialized():
        return current()
    if not launched_by_torchrun():
        return None
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    world = current()
    assert world is not None
    log.info("rank %d of %d joined (%s)", world.rank, world.size, backend)
    return world


def current() -> World | None:
    """The world this process joined, or None outside distributed training."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return World(rank=dist.get_rank(), size=dist.get_world_size(), backend=str(dist.get_backend()))


def leave() -> None:
    """Leave the process group (end of a distributed run).

    Every rank waits at a barrier first: a rank that tore gloo down while the other still had its last collective in
    flight sometimes aborted at exit ("terminate called without an active exception", about 1 run in 10 on a 2-core
    machine), although both had finished their work.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(rows: np.ndarray, world: World | None) -> np.ndarray:
    """This rank's share of a batch's vectors: every ``size``-th one, starting at ``rank``.

    A batch with fewer vectors than ranks is given whole to every rank (the loss scaling keeps it exact).
    """
    if world is None or world.size == 1:
        return rows
    if rows.size < world.size:
        return rows
    return rows[world.rank::world.size]


def loss_scale(batch_rows: np.ndarray, row_ratings: np.ndarray, world: World | None) -> float:
    """``size * mine / sum over ranks``, in ratings: with DDP's gradient mean, the gradient of the whole batch.

    Every rank knows how the batch was shared (see :func:`shard`), so no communication is needed.
    """
    if world is None or world.size == 1:
        return 1.0
    whole = float(row_ratings[batch_rows].sum())
    mine = float(row_ratings[shard(batch_rows, world)].sum())
    covered = whole if batch_rows.size >= world.size else whole * world.size
    return world.size * mine / max(covered, 1.0)


def broadcast_value(value: float, world: World | None, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank, so that early stopping and model choice agree everywhere."""
    if world is None or world.size == 1:
        return value
    buffer = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(buffer, src=0)
    return float(buffer.item())
