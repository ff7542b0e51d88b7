"""Training: masked-MSE fitting with early stopping on validation, a NaN guard, and resumable checkpoints.

``fit`` trains one autoencoder on the ``fit`` ratings and keeps the weights of the epoch with the best RMSE on
``val`` (ratings carved from the training part, never the test part). ``train_split`` wraps it for a named split:
carve validation, fit, then score the held-out test ratings. Progress goes to an ``on_epoch`` callback; only the
CLI prints.

Checkpoints: with a ``run_dir``, every epoch writes ``checkpoint.safetensors`` atomically (temp file, fsync,
``os.replace``): model and best weights, optimizer tensors and the torch RNG state as tensors; epoch, history and
optimizer scalars as JSON in the safetensors header. Nothing is pickled. Shuffles are seeded by (seed, epoch), so a
resumed deterministic run reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from recae.errors import TrainingError
from recae.models.autoencoders import AutoEncoder, ModelConfig, bake_kernels, build_model, merge_loaded
from recae.models.batches import SparseRows, batch_plan, iterate_batches, make_batch, oriented_csr
from recae.models.losses import l2_penalty, masked_mse
from recae.models.rankers import EaseRanker, train_ease
from recae.store.matrix import RatingMatrix
from recae.training import distributed
from recae.training.config import AUTO_ONE_THREAD_BELOW, FULL_BATCH, TrainConfig

if TYPE_CHECKING:
    from recae.serving.scorer import TrainedModel
    from recae.splits import Split
    from recae.training.blend import FittedBlend

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.safetensors"
BLEND_CARVE_SEED = 104_729  # offsets the blend carve's seed from the members' carves (seed + m)
MEMBER_FILE = "member.safetensors"
#: A killed run loses at most this much work; writing the checkpoint every epoch cost 2.3 s of ml-100k's 16.
CHECKPOINT_INTERVAL_S = 30.0


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when torch sees a device, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class EpochReport:
    """What one epoch did, for progress display and the history."""

    epoch: int
    epochs: int
    train_loss: float  # masked MSE on the fit ratings seen this epoch (before the penalties)
    val_rmse: float
    best_val_rmse: float
    best_epoch: int
    seconds: float  # since training started (resumed runs include earlier sessions)


@dataclass(frozen=True, eq=False)
class FitResult:
    """A fitted module holding its best-validation weights, and how it got there."""

    module: AutoEncoder
    best_epoch: int
    best_val_rmse: float
    epochs_run: int
    seconds: float  # whole training time
    seconds_to_best: float  # time until the best epoch ended (ensembles: summed over members)
    history: list[EpochReport] = field(default_factory=list)
    members: list[FitResult] = field(default_factory=list)  # each member's figures (module None) when ensemble > 1
    weight_decay: float | None = None  # the lambda used (chosen on validation when a grid was given)
    module_file: Path | None = None  # where a finished ensemble member's weights wait for the merge


# --- the pieces of one run -------------------------------------------------------------------------------------


def unit_means(csr: sp.csr_matrix, n_units: int) -> np.ndarray:
    """Mean rating of every output unit (column of the oriented matrix); the global mean where a unit has none."""
    sums = np.bincount(csr.indices, weights=csr.data, minlength=n_units)
    counts = np.bincount(csr.indices, minlength=n_units)
    global_mean = float(csr.data.mean()) if csr.nnz else 0.0
    return np.where(counts > 0, sums / np.maximum(counts, 1), global_mean).astype(np.float32)


def _make_optimizer(module: AutoEncoder, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = list(module.parameters())
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        weights = {id(w) for w in module.weight_matrices()}
        groups = [
            {"params": [p for p in params if id(p) in weights], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if id(p) not in weights], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "rprop":
        return torch.optim.Rprop(params, lr=cfg.lr)
    return torch.optim.LBFGS(params, lr=cfg.lr, max_iter=5, history_size=10, line_search_fn="strong_wolfe")


def _objective(module: AutoEncoder, inputs: SparseRows, targets: SparseRows, cfg: TrainConfig,
               n_observed: int, runner: torch.nn.Module | None = None, share: float = 1.0) -> tuple[Tensor, Tensor]:
    """(masked MSE, full objective) of one batch: MSE + L2 (unless adamw decays) + the model's penalty.

    ``runner`` is the module's DistributedDataParallel wrapper in distributed training, and ``share`` this rank's
    weight of the batch's ratings (see recae.training.distributed.loss_scale).
    """
    predicted, penalty = (runner or module)(inputs, targets)  # (nnz,)
    mse = masked_mse(predicted, targets.values, module.loss_weights(inputs, targets))
    l2 = 0.0 if cfg.optimizer == "adamw" else l2_penalty(module.weight_matrices(), cfg.weight_decay, n_observed)
    return mse, share * mse + l2 + penalty + module.kernel_penalty(n_observed)


def _check_finite(value: Tensor | float, epoch: int, cfg: TrainConfig) -> None:
    value = float(value.detach()) if isinstance(value, Tensor) else float(value)
    if not math.isfinite(value):
        raise TrainingError(
            f"training diverged: the loss became {value} at epoch {epoch}; "
            f"try a lower learning rate than {cfg.lr:g} or a larger weight_decay"
        )


@torch.no_grad()
def predict_entries(module: AutoEncoder, inputs: sp.csr_matrix, targets: sp.csr_matrix, *,
                    batch_ratings: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Predictions (unclipped) and truths at every entry of ``targets``, reading ``inputs`` as the vectors.

    Both are (n_vectors, n_units) in the oriented space; vectors without input fall back to the units' means.
    """
    was_training = module.training
    module.eval()
    rows = np.flatnonzero(np.diff(targets.indptr))
    predicted, truth = [], []
    for batch in iterate_batches(inputs, targets, batch_ratings * 4, seed=0, epoch=0, shuffle=False, rows=rows):
        batch = batch.to(device)
        predicted.append(module.predict_at(batch.inputs, batch.targets).cpu().numpy())
        truth.append(batch.targets.values.cpu().numpy())
    module.train(was_training)
    if not predicted:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(predicted), np.concatenate(truth)


def validation_rmse(module: AutoEncoder, inputs: sp.csr_matrix, targets: sp.csr_matrix,
                    scale: tuple[float, float], *, batch_ratings: int, device: torch.device) -> float:
    """RMSE of clipped predictions at the ``targets`` entries: ``sqrt(mean((clip(rhat) - r)^2))``."""
    predicted, truth = predict_entries(module, inputs, targets, batch_ratings=batch_ratings, device=device)
    if truth.size == 0:
        return float("nan")
    clipped = np.clip(predicted, scale[0], scale[1])
    return float(np.sqrt(np.mean((clipped.astype(np.float64) - truth) ** 2)))


def _pretrain(module: AutoEncoder, data: sp.csr_matrix, cfg: TrainConfig, epochs: int,
              device: torch.device, on_progress: Callable[[str], None] | None) -> None:
    """Greedy layer-wise pretraining: each encoder layer with its mirrored decoder layer as a shallow autoencoder.

    Layer 1 rebuilds the sparse ratings at their observed entries (masked MSE); layer l > 1 rebuilds the dense
    codes h_{l-1} of the frozen layers below (plain MSE). Fine-tuning of the whole stack follows in ``fit``.
    """
    n_layers = len(module.config.hidden)
    for layer in range(n_layers):
        if layer == 0:
            params = [module.w_in, module.b_in, module.w_out, module.b_out]
        else:
            enc, dec = module.encoder[layer - 1], module.decoder[n_layers - 1 - layer]
            params = [*enc.parameters(), *dec.parameters()]
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        for epoch in range(epochs):
            for batch in iterate_batches(data, data, cfg.batch_ratings, seed=cfg.weights_seed + 7919 * (layer + 1),
                                         epoch=epoch):
                batch = batch.to(device)
                optimizer.zero_grad(set_to_none=True)
                if layer == 0:
                    z = module.act(_first_layer(module, batch.inputs))
                    loss = masked_mse(module.output_at(z, batch.targets), batch.targets.values)
                    loss = loss + l2_penalty([module.w_in, module.w_out], cfg.weight_decay, data.nnz)
                else:
                    with torch.no_grad():
                        below = module.encode(batch.inputs).hidden[layer - 1]  # (batch, h_{l-1})
                    rebuilt = module.act(dec(module.act(enc(below))))
                    loss = torch.mean((rebuilt - below) ** 2)
                _check_finite(loss, epoch + 1, cfg)
                loss.backward()
                optimizer.step()
        if on_progress:
            on_progress(f"pretrained layer {layer + 1} of {n_layers}")


def _first_layer(module: AutoEncoder, inputs: SparseRows) -> Tensor:
    from recae.models.autoencoders import sparse_input_matmul

    return sparse_input_matmul(module.corrupt(inputs), module.w_in) + module.b_in


# --- checkpoints -----------------------------------------------------------------------------------------------


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state_dict -> (tensors by name, JSON-able description); no pickle."""
    from recae.serving.model_files import standalone

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


def _unflatten_optimizer(tensors: dict[str, Tensor], described: dict[str, Any],
                         device: torch.device) -> dict[str, Any]:
    def decode(spec: dict[str, Any]) -> Any:
        if "tensor" in spec:
            return _aligned(tensors[spec["tensor"]].to(device))
        if "list" in spec:
            return [decode(item) for item in spec["list"]]
        return spec["value"]

    state = {int(pid): {name: decode(spec) for name, spec in entries.items()}
             for pid, entries in described["state"].items()}
    return {"state": state, "param_groups": described["param_groups"]}


#: Bytes PyTorch's CPU allocator aligns every tensor to. safetensors hands back tensors at any 4-byte offset.
TENSOR_ALIGNMENT = 64


def _aligned(tensor: Tensor) -> Tensor:
    """``tensor`` in memory aligned as a fresh one is (copied only when it is not). BLAS reductions (L-BFGS's dot
    products) may take another code path, with another rounding, for unaligned data on some CPUs (MKL on AMD
    EPYC): a resumed L-BFGS run then drifted from an uninterrupted one in the 8th digit."""
    return tensor if tensor.device.type != "cpu" or tensor.data_ptr() % TENSOR_ALIGNMENT == 0 else tensor.clone()


def _save_checkpoint(path: Path, module: AutoEncoder, best: dict[str, Tensor], optimizer: torch.optim.Optimizer,
                     progress: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from recae.serving.model_files import standalone

    tensors = {f"model/{k}": standalone(v) for k, v in module.state_dict().items()}
    tensors.update({f"best/{k}": standalone(v) for k, v in best.items()})
    optim_tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    meta = {"progress": json.dumps(progress), "optimizer": json.dumps(optim_meta)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - safe_open has no iter
        return tensors, json.loads(meta["progress"]), json.loads(meta["optimizer"])
    except Exception as err:  # noqa: BLE001 - any damage means: cannot resume from it
        raise TrainingError(f"checkpoint {path} is unreadable ({err}); delete it or train without --resume") from err


def run_fingerprint(model_cfg: ModelConfig, train_cfg: TrainConfig, data_fingerprint: str, split: str = "") -> str:
    """Identity of a training run, to refuse resuming a checkpoint made with other settings or data."""
    settings = {k: v for k, v in train_cfg.to_json().items() if k not in ("device", "threads")}
    blob = json.dumps([model_cfg.to_json(), settings, data_fingerprint, split], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- fit -------------------------------------------------------------------------------------------------------


def fit(
    fit_ratings: RatingMatrix,
    val_ratings: RatingMatrix | None,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    stop_after: int | None = None,
) -> FitResult:
    """Train ``model_cfg`` on ``fit_ratings``; early stopping and the kept weights follow ``val_ratings``' RMSE.

    Args:
        fit_ratings: ratings the model reads and is trained to rebuild.
        val_ratings: held-out training ratings (same index); None trains all epochs and keeps the last weights.
        run_dir: folder for the per-epoch checkpoint; ``resume`` continues from it when it exists.
        stop_after: end after this many epochs of this session (simulates an interrupted run in tests).
    Raises:
        TrainingError: a non-finite loss, invalid settings, or a checkpoint that does not match this run.
    """
    return _run(lambda member: (fit_ratings, val_ratings), True, model_cfg, train_cfg, run_dir=run_dir,
                resume=resume, on_epoch=on_epoch, on_progress=on_progress, stop_after=stop_after)


def fit_cross_carved(
    train: RatingMatrix,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> FitResult:
    """Like :func:`fit` on ``train``, but ensemble member m carves its own validation (seed + m) from it.

    Each member still stops early on ratings it never trained on, yet together the members read every training
    rating (the README's development protocol compares it with members sharing one carve, on a development carve).
    The reported validation RMSE is then the mean of the members' own best figures.
    """
    from recae.splits import holdout_validation

    @functools.lru_cache(maxsize=1)  # carve m is asked for several times in a row; keep one copy, not all
    def carve(member: int) -> tuple[RatingMatrix, RatingMatrix]:
        return holdout_validation(train, train_cfg.val_fraction, train_cfg.seed + member)

    return _run(carve, False, model_cfg, train_cfg, run_dir=run_dir, resume=resume, on_epoch=on_epoch,
                on_progress=on_progress, stop_after=None)


Carve = Callable[[int], "tuple[RatingMatrix, RatingMatrix | None]"]


def _run(carve: Carve, shared_validation: bool, model_cfg: ModelConfig, train_cfg: TrainConfig, *,
         run_dir: Path | None, resume: bool, on_epoch: Callable[[EpochReport], None] | None,
         on_progress: Callable[[str], None] | None, stop_after: int | None) -> FitResult:
    model_cfg.validate()
    train_cfg.validate()
    device = resolve_device(train_cfg.device)
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    if train_cfg.threads > 0 or train_cfg.deterministic:
        torch.set_num_threads(train_cfg.threads or 1)  # deterministic: a fixed count, 1 unless told
    elif carve(0)[0].nnz < AUTO_ONE_THREAD_BELOW:
        torch.set_num_threads(1)
    if train_cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    if len(train_cfg.weight_decay_grid) == 1:
        train_cfg = replace(train_cfg, weight_decay=train_cfg.weight_decay_grid[0], weight_decay_grid=())
    try:
        if model_cfg.name == "rbm":  # the RBM for CF: its own CD loop, early stopping on validation RMSE
            from recae.models.rbm_cf import fit_rating_rbm, single_network

            return fit_rating_rbm(*carve(0), model_cfg, single_network(train_cfg), device, on_epoch, on_progress)
        if train_cfg.ensemble == 1 and not train_cfg.weight_decay_grid:
            return _fit(*carve(0), model_cfg, train_cfg, device, run_dir, resume, on_epoch, on_progress, stop_after)
        return _fit_ensemble(carve, shared_validation, model_cfg, train_cfg, device, run_dir, resume, on_epoch,
                             on_progress, stop_after)
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)


def _fit_ensemble(carve: Carve, shared_validation: bool, model_cfg: ModelConfig,
                  train_cfg: TrainConfig, device: torch.device, run_dir: Path | None, resume: bool,
                  on_epoch: Callable[[EpochReport], None] | None, on_progress: Callable[[str], None] | None,
                  stop_after: int | None) -> FitResult:
    """Choose lambda on validation, train ``ensemble`` members with consecutive seeds, then merge them.

    Each lambda of ``weight_decay_grid`` trains one member with the base seed; the one with the best validation
    RMSE wins and becomes member 0, so choosing costs one extra member per losing candidate. Member m trains on
    ``carve(m)`` (the same ratings for every member unless the validation is cross-carved).
    """
    train_cfg = train_cfg.resolved(carve(0)[0].nnz)  # carves are not held here: each is 1.5 x the ratings' bytes
    grid = train_cfg.weight_decay_grid or (train_cfg.weight_decay,)
    base = replace(train_cfg, ensemble=1, weight_decay_grid=())

    def member(seed_offset: int, weight_decay: float, name: str, label: str) -> FitResult:
        if on_progress:
            on_progress(label)
        result = _fit(*carve(seed_offset), model_cfg,
                      replace(base, seed=train_cfg.seed + seed_offset, weight_decay=weight_decay,
                              init_seed=None if train_cfg.init_seed is None else train_cfg.init_seed + seed_offset),
                      device,
                      run_dir / name if run_dir is not None else None, resume, on_epoch, on_progress, stop_after)
        log.info("%s (%s): best epoch %d of %d, validation RMSE %.4f", label, model_cfg.orientation,
                 result.best_epoch, result.epochs_run, result.best_val_rmse)
        return _park(result, run_dir / name if run_dir is not None else None)

    candidates = {wd: member(0, wd, f"member0-wd{wd:g}", f"lambda {wd:g}, member 1 of {train_cfg.ensemble}")
                  for wd in grid}
    chosen = min(candidates, key=lambda wd: candidates[wd].best_val_rmse) if len(grid) > 1 else grid[0]
    members = [candidates[chosen]] + [
        member(m, chosen, f"member{m}-wd{chosen:g}", f"lambda {chosen:g}, member {m + 1} of {train_cfg.ensemble}")
        for m in range(1, train_cfg.ensemble)
    ]
    losers = [r for wd, r in candidates.items() if wd != chosen]
    merged = merge_loaded(len(members), lambda m: _unpark(members[m], model_cfg)).eval()
    log.info("merged %d %s members into one network of width %s", len(members), model_cfg.orientation,
             merged.config.hidden)
    # Keep the members' figures, not their networks: at ML-25M scale each holds ~0.4 GB beside the merged one.
    members = [replace(r, module=None) for r in members]  # type: ignore[arg-type]
    val_rmse = float(np.mean([r.best_val_rmse for r in members]))  # cross-carved: each member on its own carve
    fit_ratings, val_ratings = carve(0)
    if shared_validation and val_ratings is not None and val_ratings.nnz:
        val_rmse = validation_rmse(merged, oriented_csr(fit_ratings, model_cfg.orientation),
                                   oriented_csr(val_ratings, model_cfg.orientation), fit_ratings.rating_scale(),
                                   batch_ratings=train_cfg.batch_ratings, device=device)
    return FitResult(
        module=merged, best_epoch=max(r.best_epoch for r in members), best_val_rmse=val_rmse,
        epochs_run=sum(r.epochs_run for r in members + losers),
        seconds=sum(r.seconds for r in members + losers),
        seconds_to_best=sum(r.seconds_to_best for r in members) + sum(r.seconds for r in losers),
        history=[h for r in members for h in r.history], members=members, weight_decay=chosen,
    )


def _park(result: FitResult, folder: Path | None) -> FitResult:
    """A finished ensemble member waits for the merge in its run folder, not in memory (0.4 GB each at ML-25M);
    without a folder it stays in memory."""
    if folder is None:
        return result
    from safetensors.torch import save_file

    from recae.serving.model_files import standalone

    world = distributed.current()
    path = folder / (MEMBER_FILE if world is None else f"rank{world.rank}-{MEMBER_FILE}")  # ranks share the folder
    save_file({k: standalone(v) for k, v in result.module.state_dict().items()}, str(path))
    return replace(result, module=None, module_file=path)  # type: ignore[arg-type]


def _unpark(result: FitResult, model_cfg: ModelConfig) -> AutoEncoder:
    if result.module_file is None:
        return result.module
    from safetensors.torch import load_file

    state = load_file(str(result.module_file))
    plain = replace(model_cfg, kernel_dim=0, kernel_weight=0.0)  # members are parked baked
    module = build_model(plain, state["w_in"].shape[0], state["w_out"].shape[0])
    module.load_state_dict(state)
    return module.eval()


def _fit(fit_ratings: RatingMatrix, val_ratings: RatingMatrix | None, model_cfg: ModelConfig,
         train_cfg: TrainConfig, device: torch.device, run_dir: Path | None, resume: bool,
         on_epoch: Callable[[EpochReport], None] | None, on_progress: Callable[[str], None] | None,
         stop_after: int | None) -> FitResult:
    started = time.perf_counter()
    if fit_ratings.nnz == 0:
        raise TrainingError("no training ratings to fit")
    train_cfg = train_cfg.resolved(fit_ratings.nnz)
    data = oriented_csr(fit_ratings, model_cfg.orientation)  # (n_vectors, n_units)
    val = oriented_csr(val_ratings, model_cfg.orientation) if val_ratings is not None else None
    scale = fit_ratings.rating_scale()
    n_units = data.shape[1]
    torch.manual_seed(train_cfg.weights_seed)
    module = build_model(model_cfg, n_units, n_units)
    means = torch.from_numpy(unit_means(data, n_units))
    with torch.no_grad():
        module.b_out.copy_(means)
        module.fallback.copy_(means)
        module.input_mean.fill_(float(data.data.mean()))
    module.to(device)
    world = distributed.join(device)
    runner = _data_parallel(module, world, train_cfg)
    optimizer = _make_optimizer(module, train_cfg)
    identity = run_fingerprint(model_cfg, train_cfg, fit_ratings.fingerprint())
    checkpoint = run_dir / CHECKPOINT_FILE if run_dir is not None else None

    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    progress: dict[str, Any] = {"run": identity, "epoch": 0, "best_epoch": 0, "best_val_rmse": None,
                                "stale": 0, "seconds": 0.0, "seconds_to_best": 0.0, "history": [],
                                "finished": False}
    if checkpoint is not None and resume and checkpoint.exists():
        tensors, progress, optim_meta = _load_checkpoint(checkpoint)
        if progress.get("run") != identity:
            raise TrainingError(
                f"checkpoint in {run_dir} belongs to a run with other settings or data; delete it or drop --resume"
            )
        module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
        best_state = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best/")}
        optimizer.load_state_dict(_unflatten_optimizer(tensors, optim_meta, device))
        torch.set_rng_state(tensors["rng/torch"])
        log.info("resuming from epoch %d of %s", progress["epoch"], checkpoint)
        if on_progress:
            on_progress(f"resuming after epoch {progress['epoch']}")
    elif model_cfg.pretrain_epochs > 0 and model_cfg.pretrain == "rbm":
        from recae.models.rbm import pretrain_with_rbms

        pretrain_with_rbms(module, data, train_cfg, model_cfg.pretrain_epochs, device, on_progress)
    elif model_cfg.pretrain_epochs > 0:
        _pretrain(module, data, train_cfg, model_cfg.pretrain_epochs, device, on_progress)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)

    history = [EpochReport(**h) for h in progress["history"]]
    best_val = progress["best_val_rmse"] if progress["best_val_rmse"] is not None else math.inf
    full_batch = make_batch(data, data).to(device) if train_cfg.optimizer in FULL_BATCH else None
    offset = float(progress["seconds"])  # time spent in earlier sessions of a resumed run
    epoch = progress["epoch"]
    session_epochs = 0
    last_saved = time.perf_counter()
    while (not progress["finished"] and epoch < train_cfg.epochs
           and (stop_after is None or session_epochs < stop_after)):
        epoch += 1
        session_epochs += 1
        module.train()
        train_loss = _train_epoch(module, optimizer, data, full_batch, train_cfg, epoch, device, runner, world)
        if val is not None and val.nnz:
            val_rmse = validation_rmse(module, data, val, scale, batch_ratings=train_cfg.batch_ratings,
                                       device=device)
            val_rmse = distributed.broadcast_value(val_rmse, world, device)  # every rank decides alike
            _check_finite(val_rmse, epoch, train_cfg)
        else:
            val_rmse = float("nan")
        improved = val is None or not val.nnz or val_rmse < best_val
        elapsed = time.perf_counter() - started + offset
        if improved:
            best_val = val_rmse if math.isfinite(val_rmse) else best_val
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            progress.update(best_epoch=epoch, stale=0, seconds_to_best=elapsed)
        else:
            progress["stale"] += 1
            if train_cfg.lr_decay < 1.0 and progress["stale"] % train_cfg.lr_decay_patience == 0:
                for group in optimizer.param_groups:  # a plateau: smaller steps often find a better point
                    group["lr"] *= train_cfg.lr_decay
        report = EpochReport(epoch, train_cfg.epochs, train_loss, val_rmse,
                             best_val if math.isfinite(best_val) else float("nan"), progress["best_epoch"], elapsed)
        history.append(report)
        progress.update(epoch=epoch, best_val_rmse=best_val if math.isfinite(best_val) else None,
                        seconds=elapsed, history=[asdict(h) for h in history])
        if progress["stale"] >= train_cfg.patience or epoch >= train_cfg.epochs:
            progress["finished"] = True
        session_ends = progress["finished"] or (stop_after is not None and session_epochs >= stop_after)
        if (checkpoint is not None and (world is None or world.primary)
                and (session_ends or time.perf_counter() - last_saved >= CHECKPOINT_INTERVAL_S)):
            _save_checkpoint(checkpoint, module, best_state, optimizer, progress)
            last_saved = time.perf_counter()
        if on_epoch:
            on_epoch(report)
    module.load_state_dict(best_state)
    del best_state, optimizer
    module.zero_grad(set_to_none=True)  # the last step's gradients: as large as the weights (0.4 GB at ML-25M)
    module = bake_kernels(module).eval()  # local kernels folded into plain weights: serving needs no kernel code
    return FitResult(
        module=module, best_epoch=int(progress["best_epoch"]),
        best_val_rmse=float(best_val) if math.isfinite(best_val) else float("nan"),
        epochs_run=epoch, seconds=time.perf_counter() - started + offset,
        seconds_to_best=float(progress["seconds_to_best"]), history=history,
    )


def _data_parallel(module: AutoEncoder, world: distributed.World | None,
                   cfg: TrainConfig) -> torch.nn.Module | None:
    """The DistributedDataParallel wrapper of ``module`` when several processes train (minibatch optimisers only)."""
    if world is None or world.size == 1:
        return None
    if cfg.optimizer in FULL_BATCH:
        raise TrainingError(f"distributed training needs a minibatch optimizer (adam or adamw), not {cfg.optimizer}")
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module)  # broadcasts rank 0's weights and buffers, then averages gradients


def _train_epoch(module: AutoEncoder, optimizer: torch.optim.Optimizer, data: sp.csr_matrix,
                 full_batch: Any, cfg: TrainConfig, epoch: int, device: torch.device,
                 runner: torch.nn.Module | None = None, world: distributed.World | None = None) -> float:
    """One pass over the fit ratings; returns their mean masked MSE as seen during the pass (this rank's share)."""
    if full_batch is not None:
        last: dict[str, float] = {}

        def closure() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            mse, loss = _objective(module, full_batch.inputs, full_batch.targets, cfg, data.nnz)
            _check_finite(loss, epoch, cfg)
            loss.backward()
            last["mse"] = float(mse.detach())
            return loss

        if isinstance(optimizer, torch.optim.LBFGS):
            optimizer.step(closure)
        else:
            closure()
            optimizer.step()
        return last["mse"]
    total, count = 0.0, 0
    row_ratings = np.diff(data.indptr)
    for group in batch_plan(row_ratings, cfg.batch_ratings, seed=cfg.weights_seed, epoch=epoch):
        batch = make_batch(data, data, distributed.shard(group, world)).to(device)
        optimizer.zero_grad(set_to_none=True)
        share = distributed.loss_scale(group, row_ratings, world)
        mse, loss = _objective(module, batch.inputs, batch.targets, cfg, data.nnz, runner, share)
        _check_finite(loss, epoch, cfg)
        loss.backward()
        optimizer.step()
        total += float(mse.detach()) * batch.targets.nnz
        count += batch.targets.nnz
    return total / max(count, 1)


# --- a named split, end to end ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrainResult:
    """A trained model ready to publish, with its validation and test figures."""

    trained: TrainedModel
    fit: FitResult
    metrics: dict[str, float]  # val_rmse, test_rmse, test_mae, best_epoch, epochs, seconds, seconds_to_best


def train_split(
    split: Split,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Carve validation from ``split.train``, fit, and score ``split.test`` (never used before this point).

    The returned model reads every training rating (fit + validation) as its inputs; test ratings never are.
    """
    from recae.serving.scorer import TrainedModel, with_metrics

    if model_cfg.name == "rbm":
        from recae.models.rbm_cf import single_network

        train_cfg = single_network(train_cfg)
    fit_part, blend_part = blend_carve(split.train, train_cfg) if train_cfg.partner_members else (split.train, None)
    result = fit_cross_carved(fit_part, model_cfg, train_cfg, run_dir=run_dir, resume=resume, on_epoch=on_epoch,
                              on_progress=on_progress)
    chosen = result.weight_decay if result.weight_decay is not None else train_cfg.weight_decay
    train_cfg = replace(train_cfg, weight_decay=chosen, weight_decay_grid=())
    trained = TrainedModel.from_fit(result.module, split.train, train_config=train_cfg,
                                    split_spec=split.spec.to_json(), history=[asdict(h) for h in result.history])
    metrics: dict[str, float] = {"val_rmse": result.best_val_rmse, "weight_decay": chosen}
    fits = [result]
    if blend_part is not None:
        partner = _fit_partner(fit_part, model_cfg, train_cfg, run_dir=run_dir, resume=resume,
                               on_epoch=on_epoch, on_progress=on_progress)
        fitted = _fitted_blend(result.module, partner.module, fit_part, blend_part, train_cfg.seed)
        trained = replace(trained, partner=TrainedModel.from_fit(partner.module, split.train),
                          blend_weight=fitted.weight)
        metrics.update(main_val_rmse=fitted.main_rmse, partner_val_rmse=fitted.partner_rmse,
                       val_rmse=fitted.cross_fitted_rmse, blend_weight=round(fitted.weight, 6),
                       n_blend=blend_part.nnz)
        fits.append(partner)
    ranker_seconds = 0.0
    if train_cfg.ranker != "none":
        started = time.perf_counter()
        if on_progress:
            on_progress("ranker: EASE, lambda chosen on validation")
        ranker, search = fit_ranker(split.train, train_cfg)
        ranker_seconds = time.perf_counter() - started
        trained = replace(trained, ranker=ranker, ranker_search=search)
        metrics.update(ranker_lambda=ranker.lam, ranker_seconds=round(ranker_seconds, 3))
    metrics.update({
        "best_epoch": result.best_epoch,
        "epochs": sum(f.epochs_run for f in fits),
        "seconds": round(sum(f.seconds for f in fits) + ranker_seconds, 3),
        "seconds_to_best": round(sum(f.seconds_to_best for f in fits), 3),
        "n_train": split.train.nnz,
        "n_test": split.test.nnz,
    })
    log.info("scoring %d test ratings", split.test.nnz)
    metrics.update(test_metrics(trained, split.test))
    return TrainResult(trained=with_metrics(trained, metrics), fit=result, metrics=metrics)


def fit_ranker(train: RatingMatrix, cfg: TrainConfig) -> tuple[EaseRanker, dict[str, Any]]:
    """The top-N ranker of ``cfg`` on the training ratings; its settings chosen on a carve of them (never test)."""
    return train_ease(train, lam=cfg.ranker_lambda, input=cfg.ranker_input, max_items=cfg.ranker_max_items,
                      val_fraction=cfg.ranker_val_fraction, seed=cfg.seed)


def _fit_partner(train: RatingMatrix, model_cfg: ModelConfig, train_cfg: TrainConfig, *, run_dir: Path | None,
                 resume: bool, on_epoch: Callable[[EpochReport], None] | None,
                 on_progress: Callable[[str], None] | None) -> FitResult:
    """``partner_members`` autoencoders of the other orientation, cross-carved from the main ensemble's fit part."""
    other = "user" if model_cfg.orientation == "item" else "item"
    if on_progress:
        on_progress(f"{other}-based partner for the blend ({train_cfg.partner_members} member(s))")
    return fit_cross_carved(train, replace(model_cfg, orientation=other),
                            replace(train_cfg, ensemble=train_cfg.partner_members),
                            run_dir=run_dir / "partner" if run_dir is not None else None, resume=resume,
                            on_epoch=on_epoch, on_progress=on_progress)


def blend_carve(train: RatingMatrix, cfg: TrainConfig) -> tuple[RatingMatrix, RatingMatrix]:
    """(fit part, blend part): ``blend_fraction`` of the training ratings kept from every member and the partner.

    The shipped ensemble and partner predict the blend part out of fold, so the blend weight is fitted for the
    model that ships (not for one member) and its validation RMSE is measured on ratings nothing else was fitted on.
    """
    from recae.splits import holdout_validation

    return holdout_validation(train, cfg.blend_fraction, cfg.seed + BLEND_CARVE_SEED)


def _fitted_blend(main: AutoEncoder, partner: AutoEncoder, fit_part: RatingMatrix, blend_part: RatingMatrix,
                  seed: int) -> FittedBlend:
    """The blend of the shipped main ensemble and partner, fitted on the blend part (the fit part as inputs)."""
    from recae.serving.scorer import TrainedModel
    from recae.training.blend import fit_blend

    rows, cols, values = blend_part.coo()
    ours = TrainedModel.from_fit(main, fit_part).predict(rows, cols)
    theirs = TrainedModel.from_fit(partner, fit_part).predict(rows, cols)
    return fit_blend(ours, theirs, values, seed=seed)


def test_metrics(trained: TrainedModel, test: RatingMatrix) -> dict[str, float]:
    """``test_rmse = sqrt(mean((rhat - r)^2))``, ``test_mae = mean(|rhat - r|)`` over the test ratings, and the
    served ranking's ``test_precision@10``, ``test_recall@10``, ``test_ndcg@10`` (held-out ratings >= 4 relevant)."""
    from recae.metrics import ranking_metrics

    if test.nnz == 0:
        return {}
    rows, cols, values = test.coo()
    predicted = trained.predict(rows, cols).astype(np.float64)
    error = predicted - values
    out = {"test_rmse": float(np.sqrt(np.mean(error**2))), "test_mae": float(np.mean(np.abs(error)))}
    ranking = ranking_metrics(trained, trained.inputs, test, k=10)
    if ranking.n_users:
        out.update({"test_precision@10": ranking.precision, "test_recall@10": ranking.recall,
                    "test_ndcg@10": ranking.ndcg})
    return out


test_metrics.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite its name

