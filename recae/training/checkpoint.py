"""Resumable checkpoints of a training run, without pickle.

With a ``run_dir``, training writes ``checkpoint.safetensors`` atomically (temp file, fsync, ``os.replace``): model
and best weights, optimizer tensors and the torch RNG state as tensors; the loop's state (epoch, history, patience
counter) and the optimizer's scalars as JSON in the safetensors header. Shuffles are seeded by (seed, epoch), so a
resumed deterministic run reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from recae.errors import TrainingError
from recae.training.best_weights import BestFile, Snapshot
from recae.training.loop import EpochReport, LoopState

if TYPE_CHECKING:
    from recae.artifacts.train_config import TrainConfig
    from recae.models.autoencoders import ModelConfig

CHECKPOINT_FILE = "checkpoint.safetensors"
#: A killed run loses at most this much work; writing the checkpoint every epoch cost 2.3 s of ml-100k's 16.
CHECKPOINT_INTERVAL_S = 30.0
#: A checkpoint's own name for best weights kept in a file, followed by its epoch
BEST_LINK_PREFIX = "checkpoint-best-"
#: Bytes PyTorch's CPU allocator aligns every tensor to. safetensors hands back tensors at any 4-byte offset.
TENSOR_ALIGNMENT = 64



def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state_dict -> (tensors by name, JSON-able description); no pickle."""
    from recae.artifacts.model_files import standalone

    tensors: dict[str, Tensor] = {}

    def encode(key: str, value: Any) -> dict[str, Any]:
        if isinstance(value, Tensor):
            tensors[key] = standalone(value)
            return {"tensor": key}
        if isinstance(value, (list, tuple)):
            return {"list": [encode(f"{key}/{i}", v) for i, v in enumerate(value)]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return {"value": value}
        raise TrainingError(f"cannot checkpoint optimizer state {key!r} of type {type(value).__name__}")

    described = {
        str(pid): {name: encode(f"optim/{pid}/{name}", value) for name, value in entries.items()}
        for pid, entries in state["state"].items()
    }
    return tensors, {"state": described, "param_groups": state["param_groups"]}


def unflatten_optimizer(tensors: dict[str, Tensor], described: dict[str, Any],
                        device: torch.device) -> dict[str, Any]:
    """The optimizer state_dict :func:`flatten_optimizer` described, its tensors on ``device`` and aligned."""
    def decode(spec: dict[str, Any]) -> Any:
        if "tensor" in spec:
            return aligned(tensors[spec["tensor"]].to(device))
        if "list" in spec:
            return [decode(item) for item in spec["list"]]
        return spec["value"]

    state = {int(pid): {name: decode(spec) for name, spec in entries.items()}
             for pid, entries in described["state"].items()}
    return {"state": state, "param_groups": described["param_groups"]}


def aligned(tensor: Tensor) -> Tensor:
    """``tensor`` in memory aligned as a fresh one is (copied only when it is not). BLAS reductions (L-BFGS's dot
    products) may take another code path, with another rounding, for unaligned data on some CPUs (MKL on AMD
    EPYC): a resumed L-BFGS run then drifted from an uninterrupted one in the 8th digit."""
    return tensor if tensor.device.type != "cpu" or tensor.data_ptr() % TENSOR_ALIGNMENT == 0 else tensor.clone()


def save_checkpoint(path: Path, module: torch.nn.Module, best: Snapshot, optimizer: torch.optim.Optimizer,
                    progress: dict[str, Any]) -> None:
    """Write the run's state to ``path`` atomically (a killed write leaves the previous checkpoint).

    Best weights kept in a file (``recae.training.best_weights``) are not copied in: the file is hard-linked under
    a name of this checkpoint's own, which the keeper never writes over, and the links of older checkpoints go.
    """
    from safetensors.torch import save_file

    from recae.artifacts.model_files import standalone

    tensors = {f"model/{k}": standalone(v) for k, v in module.state_dict().items()}
    meta = {}
    if isinstance(best, BestFile):
        linked = path.with_name(f"{BEST_LINK_PREFIX}{progress['epoch']}.safetensors")
        link_or_copy(best.path, linked)
        meta["best_file"] = linked.name
    else:
        tensors.update({f"best/{k}": standalone(v) for k, v in best.items()})
    optim_tensors, optim_meta = flatten_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    meta.update(progress=json.dumps(progress), optimizer=json.dumps(optim_meta))
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    for old in path.parent.glob(f"{BEST_LINK_PREFIX}*.safetensors"):
        if old.name != meta.get("best_file"):
            old.unlink(missing_ok=True)


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes another name of ``source`` (a copy where the file system has no hard links)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        with open(target, "rb") as handle:
            os.fsync(handle.fileno())


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any], BestFile | None]:
    """(tensors, progress, optimizer description, best file if the best is kept apart) of a checkpoint; a one-line
    TrainingError when it is damaged."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - safe_open has no iter
        best = BestFile(path.with_name(meta["best_file"])) if "best_file" in meta else None
        if best is not None and not best.path.is_file():
            raise FileNotFoundError(f"its best weights {best.path.name} are missing")
        return tensors, json.loads(meta["progress"]), json.loads(meta["optimizer"]), best
    except Exception as err:  # noqa: BLE001 - any damage means: cannot resume from it
        raise TrainingError(f"checkpoint {path} is unreadable ({err}); delete it or train without --resume") from err


def run_fingerprint(model_cfg: ModelConfig, train_cfg: TrainConfig, data_fingerprint: str, split: str = "") -> str:
    """Identity of a training run, to refuse resuming a checkpoint made with other settings or data."""
    settings = {k: v for k, v in train_cfg.to_json().items() if k not in ("device", "threads")}
    blob = json.dumps([model_cfg.to_json(), settings, data_fingerprint, split], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def progress_of(identity: str, state: LoopState[EpochReport]) -> dict[str, Any]:
    """The loop's state as the checkpoint's JSON (an RMSE-scored run: no best score yet is null)."""
    best = state.best_score if math.isfinite(state.best_score) else None
    return {"run": identity, "epoch": state.epoch, "best_epoch": state.best_epoch, "best_val_rmse": best,
            "stale": state.stale, "seconds": state.seconds, "seconds_to_best": state.seconds_to_best,
            "history": [asdict(h) for h in state.history], "finished": state.finished}


def state_of(progress: dict[str, Any]) -> LoopState[EpochReport]:
    """The loop's state saved by :func:`progress_of`."""
    best = progress["best_val_rmse"]
    return LoopState(best_score=best if best is not None else math.inf, epoch=progress["epoch"],
                     best_epoch=progress["best_epoch"], stale=progress["stale"], seconds=float(progress["seconds"]),
                     seconds_to_best=float(progress["seconds_to_best"]), finished=progress["finished"],
                     history=[EpochReport(**h) for h in progress["history"]])


def resume_run(run_dir: Path, identity: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
               device: torch.device) -> tuple[LoopState[EpochReport], Snapshot] | None:
    """Load the module, optimizer and RNG state of the run saved in ``run_dir``; None when it holds no checkpoint.

    Returns the loop's state and the best weights so far. Raises TrainingError when the checkpoint is damaged or
    belongs to a run of other settings or data (``identity``: :func:`run_fingerprint`).
    """
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    tensors, progress, optim_meta, best_file = load_checkpoint(path)
    if progress.get("run") != identity:
        raise TrainingError(
            f"checkpoint in {run_dir} belongs to a run with other settings or data; delete it or drop --resume"
        )
    module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    best: Snapshot = best_file or {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best/")}
    optimizer.load_state_dict(unflatten_optimizer(tensors, optim_meta, device))
    torch.set_rng_state(tensors["rng/torch"])
    return state_of(progress), best


class Checkpointer:
    """The loop's checkpoint hook for one run folder: saves at most every ``CHECKPOINT_INTERVAL_S`` (counted from
    its creation) and whenever a session ends, so the finished state is always on disk."""

    def __init__(self, run_dir: Path, identity: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 primary: bool = True) -> None:
        self.path = run_dir / CHECKPOINT_FILE
        self.identity, self.module, self.optimizer, self.primary = identity, module, optimizer, primary
        self.last_saved = time.perf_counter()

    def __call__(self, state: LoopState[EpochReport], best: Snapshot, session_ends: bool) -> None:
        if self.primary and (session_ends or time.perf_counter() - self.last_saved >= CHECKPOINT_INTERVAL_S):
            save_checkpoint(self.path, self.module, best, self.optimizer, progress_of(self.identity, state))
            self.last_saved = time.perf_counter()
