"""Where the best epoch's weights wait while later epochs train: in memory for small networks, in a file for large
ones.

Early stopping keeps a copy of the best validation epoch's weights. For ml-1m's networks that copy is a few MB and
stays in memory. The item network at ML-32M shape holds 0.8 GB of weights, and its copy sat beside the weights,
their gradients and Adam's two moments: 0.8 GB of a 6 GB budget. Above ``BEST_IN_MEMORY_BYTES`` the copy is
written to a file instead (about a second per improving epoch, against epochs of a minute at that size) and read
back once, at the end, after the optimizer's state has been freed.

A checkpoint of such a run does not embed the best weights: it hard-links the best file under a name of its own
(``recae.training.checkpoint``), and the keeper always writes a new file and renames it over the old, so the file
a checkpoint names is never changed by later epochs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

#: Best weights larger than this go to a file (the item network at ML-25M/ML-32M shape: 0.65/0.8 GB); ml-1m's
#: largest network (its item orientation, 6,040 inputs) holds 24 MB and never touches the disk.
BEST_IN_MEMORY_BYTES = 256 * 2**20

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class BestFile:
    """The best weights as a safetensors file (the snapshot of a :class:`BestKeeper` that keeps them on disk)."""

    path: Path


Snapshot = Weights | BestFile


def state_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s state (weights and buffers): what one copy of it costs."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def best_on_disk(n_bytes: int) -> bool:
    """Whether weights of ``n_bytes`` keep their best copy in a file (shared by the memory estimate)."""
    return n_bytes > BEST_IN_MEMORY_BYTES


def copy_state(module: torch.nn.Module, kept: Weights) -> Weights:
    """Copy ``module``'s state into ``kept`` in place (cloning only what it lacks), so an improving epoch does not
    hold a second copy beside the last best one."""
    for name, value in module.state_dict().items():
        held = kept.get(name)
        if held is not None and held.shape == value.shape and held.dtype == value.dtype:
            held.copy_(value.detach())
        else:
            kept[name] = value.detach().clone()
    return kept


def write_weights(state: Weights, path: Path) -> None:
    """``state`` to ``path`` as a new file (temp file, fsync, rename): a file another name links to is never
    written over."""
    from safetensors.torch import save_file

    from recae.artifacts.model_files import standalone

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: standalone(v) for k, v in state.items()}, str(tmp))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Read ``path`` into ``module``'s tensors one at a time (no second copy of the whole state)."""
    from safetensors import safe_open

    state = module.state_dict()
    with torch.no_grad(), safe_open(str(path), framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 - safe_open has no iteration
            state[name].copy_(handle.get_tensor(name))


class BestKeeper:
    """The snapshot and restore the training loop calls for one network (see the module docstring)."""

    def __init__(self, module: torch.nn.Module, folder: Path | None) -> None:
        self.module = module
        self.path = folder / "best.safetensors" if folder is not None else None  # None: kept in memory
        self.kept: Weights = {}

    def snapshot(self) -> Snapshot:
        """Keep the module's current weights as the best."""
        if self.path is None:
            return copy_state(self.module, self.kept)
        write_weights(self.module.state_dict(), self.path)
        return BestFile(self.path)

    def adopt(self, best: Snapshot) -> Snapshot:
        """A resumed checkpoint's best, in the form this keeper keeps (a checkpoint's file is read, never written)."""
        if isinstance(best, BestFile) and self.path is None:
            from safetensors.torch import load_file

            self.kept = load_file(str(best.path))
            return self.kept
        if isinstance(best, dict) and self.path is not None:
            write_weights(best, self.path)
            return BestFile(self.path)
        if isinstance(best, dict):
            self.kept = best
        return best

    def restore(self, best: Snapshot) -> None:
        """Put the best weights back into the module (call it after the optimizer's state is freed)."""
        if isinstance(best, BestFile):
            load_weights(self.module, best.path)
        else:
            self.module.load_state_dict(best)


@contextmanager
def best_keeper(module: torch.nn.Module, run_dir: Path | None, rank: int = 0) -> Iterator[BestKeeper]:
    """The keeper for ``module``: in memory when its state is small, else a file in ``run_dir`` (a temporary
    folder, removed on exit, without one and on torchrun's other ranks)."""
    if not best_on_disk(state_bytes(module)):
        yield BestKeeper(module, None)
        return
    if run_dir is not None and rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        yield BestKeeper(module, run_dir)
        return
    with tempfile.TemporaryDirectory(prefix="recae-best-") as folder:  # other ranks: rank 0 owns the run folder
        yield BestKeeper(module, Path(folder))

