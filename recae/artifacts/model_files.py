"""The on-disk format of a model version: ``weights.safetensors`` + ``meta.json``, moved into place atomically.

A version folder holds ``weights.safetensors`` (the module's tensors and the training ratings it reads as inputs)
and ``meta.json`` (model and train config, IdIndex, split spec, metrics, data fingerprint, rating scale, library
versions, sha256 of the weights). It is filled in a temp folder ``.tmp-<name>-<pid>`` and moved into place with one
``os.replace``, so a killed writer never leaves half a model. Loading never unpickles and checks every file; any
damage is a one-line CorruptArtifactError. Loading reads the tensors with numpy alone (safetensors.numpy) into the
numpy networks of ``recae.artifacts.inference``, so serving never imports torch; writing (training's job) uses
torch. The Mult-VAE (``recae.artifacts.multvae_files``) writes and reads its own meta through the same helpers and
version names. The store is not touched here: ``recae.serving.registry`` publishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import scipy.sparse as sp

from recae.artifacts.inference import Network, network_from_arrays
from recae.artifacts.model_checks import (
    as_array,
    check_dtypes,
    check_finite,
    check_ids,
    check_meta,
    check_sparse_structure,
)
from recae.artifacts.trained_model import TrainedModel
from recae.errors import CorruptArtifactError, RecaeError
from recae.models.model_config import ModelConfig
from recae.models.names import Orientation
from recae.models.rankers import RANKER_INPUTS, EaseRanker, Ranker
from recae.models.sparse_ease import SparseEaseRanker
from recae.store.matrix import IdIndex, RatingMatrix

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import torch

    from recae.models.autoencoders import AutoEncoder
    from recae.models.side_part import SidePart
    from recae.models.svd_part import SvdPart

FORMAT_VERSION = 1
#: The SvdPart arrays stored under ``svd/`` (float64), beside its scalars and mix weights in meta.json's ``svd``.
SVD_ARRAYS = ("user_bias", "item_bias", "user_factors", "item_factors")
#: The SidePart arrays stored under ``side/``, beside its scalars and group names in meta.json's ``side``.
SIDE_ARRAYS = {"item_bias": np.float64, "user_affinity": np.float64, "groups": np.float32}
#: The dtype of every tensor save_model writes outside the modules (whose own dtypes the modules give).
STORED_DTYPES = {"inputs/indptr": np.int64, "inputs/indices": np.int32, "inputs/data": np.float32,
                 "ranker/items": np.int64, "ranker/weights": np.float32,
                 "ranker/head": np.int64, "ranker/tail": np.int64, "ranker/tail_indptr": np.int64,
                 "ranker/tail_indices": np.int32, "ranker/tail_data": np.float32,
                 **{f"svd/{name}": np.float64 for name in SVD_ARRAYS},
                 **{f"side/{name}": dtype for name, dtype in SIDE_ARRAYS.items()}}
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
T = TypeVar("T")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def software_versions() -> dict[str, str]:
    """The versions a model was made with, for its meta.json."""
    import torch

    from recae import __version__

    return {"recae": __version__, "torch": torch.__version__, "python": platform.python_version()}


def file_record(path: Path) -> dict[str, Any]:
    """``{"sha256", "bytes"}`` of a written file, kept in meta.json so loading can detect damage."""
    return {"sha256": _sha256(path), "bytes": path.stat().st_size}


def verify_file(path: Path, record: dict[str, Any], what: str) -> None:
    """Raise CorruptArtifactError (one line, naming ``what``) when ``path`` no longer matches its record."""
    if path.stat().st_size != record.get("bytes") or _sha256(path) != record.get("sha256"):
        raise CorruptArtifactError(f"{what}: {path.name} is truncated or altered (checksum)")


def version_name(created_at: datetime, *labels: str) -> str:
    """``YYYYmmddTHHMMSSffffffZ-<label>-...``: a version's (and its folder's) name, sortable by time, readable at a
    glance (``...Z-stacked-item`` for an autoencoder, ``...Z-multvae`` for a Mult-VAE)."""
    return "-".join([f"{created_at:%Y%m%dT%H%M%S%f}Z", *labels])


def write_atomically(folder: Path, write: Callable[[Path], T]) -> T:
    """``write(temp)`` fills ``.tmp-<name>-<pid>`` beside ``folder``, which then moves into place with one
    ``os.replace``: a killed writer leaves no half-written version, only a temp folder that pruning recognises by
    its dead pid. The temp folder is removed when anything fails. Returns what ``write`` returned."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        written = write(temp)
        os.replace(temp, folder)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return written


def write_files(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``tensors`` as ``weights.safetensors`` and ``meta`` plus the weights' record (``files``) as
    ``meta.json`` into the new folder ``folder``, both fsynced. Returns the meta written."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=False)
    weights = folder / WEIGHTS_FILE
    save_file(tensors, str(weights))
    meta = {**meta, "files": {WEIGHTS_FILE: file_record(weights)}}
    (folder / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    for path in (weights, folder / META_FILE):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    return meta


def require_files(folder: Path, what: str, retrain: str) -> tuple[Path, Path]:
    """``(meta.json, weights.safetensors)`` of ``folder``; CorruptArtifactError naming ``what`` and the command
    that makes a new one (``retrain``) when either is missing."""
    meta_path, weights = folder / META_FILE, folder / WEIGHTS_FILE
    for needed in (meta_path, weights):
        if not needed.is_file():
            raise CorruptArtifactError(f"{what} {folder} is missing {needed.name}; retrain with `{retrain}`")
    return meta_path, weights


def read_tensors(weights: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as torch tensors (never unpickles); safetensors' errors pass through."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118


def read_arrays(weights: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as numpy arrays, no torch (a bfloat16 one, which numpy lacks, is an
    error like any other damage); safetensors' own errors pass through."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="numpy") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118


def save_model(trained: TrainedModel, folder: Path, *, version: str, data_fingerprint: str | None = None,
               created_at: datetime | None = None) -> dict[str, Any]:
    """Write ``weights.safetensors`` and ``meta.json`` into ``folder`` (created; fsynced). Returns the meta."""
    import torch

    from recae.store.db import utcnow

    csr = trained.inputs.csr
    tensors = _module_tensors("model/", trained.torch_module())
    if trained.partner is not None:
        tensors.update(_module_tensors("partner/", trained.partner.torch_module()))
    if trained.svd is not None:
        tensors.update({f"svd/{name}": torch.from_numpy(np.ascontiguousarray(getattr(trained.svd, name), np.float64))
                        for name in SVD_ARRAYS})
    if trained.side is not None:
        tensors.update({f"side/{name}": torch.from_numpy(np.ascontiguousarray(getattr(trained.side, name), dtype))
                        for name, dtype in SIDE_ARRAYS.items()})
    if trained.ranker is not None:
        tensors.update(_ranker_tensors(trained.ranker))
    # views of the model's own arrays where the dtype already fits (save_file only reads them)
    tensors["inputs/indptr"] = torch.from_numpy(np.ascontiguousarray(csr.indptr, dtype=np.int64))
    tensors["inputs/indices"] = torch.from_numpy(np.ascontiguousarray(csr.indices, dtype=np.int32))
    tensors["inputs/data"] = torch.from_numpy(np.ascontiguousarray(csr.data, dtype=np.float32))
    meta = {
        "format_version": FORMAT_VERSION,
        "version": version,
        "model": trained.model_config.name,
        "model_config": trained.model_config.to_json(),
        "train_config": trained.train_config.to_json() if trained.train_config is not None else None,
        "index": trained.index.to_json(),
        "split": trained.split_spec,
        "metrics": trained.metrics,
        "history": trained.history,
        "data_fingerprint": data_fingerprint or trained.inputs.fingerprint(),
        "inputs_fingerprint": trained.inputs.fingerprint(),  # provenance; integrity is the sha256 below
        "rating_scale": list(trained.rating_scale),
        "partner": None if trained.partner is None else {
            "model_config": trained.partner.model_config.to_json(), "blend_weight": trained.blend_weight},
        "ranker": None if trained.ranker is None else {**trained.ranker.describe(), "search": trained.ranker_search},
        **({} if trained.svd is None else {"svd": {
            "weights": list(trained.mix_weights), "mu": trained.svd.mu, "scale": list(trained.svd.scale),
            "ridge": trained.svd.ridge, "bias_ridge": trained.svd.bias_ridge}}),
        **({} if trained.side is None else {"side": {
            "mu": trained.side.mu, "bias_ridge": trained.side.bias_ridge, "shrink": trained.side.shrink,
            "groups": list(trained.side.names)}}),
        "tune": trained.tune_search or None,
        "versions": software_versions(),
        "created_at": (created_at or utcnow()).isoformat(),
    }
    return write_files(folder, tensors, meta)


def _module_tensors(prefix: str, module: AutoEncoder) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": standalone(v) for k, v in module.state_dict().items()}


def standalone(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as safetensors stores it (contiguous, owning its storage), copied only when it is not already:
    at ML-25M scale blanket copies of weights, best weights and Adam's moments cost 1.6 GB at each checkpoint."""
    tensor = tensor.detach().cpu().contiguous()
    owns = tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor if owns else tensor.clone()


def _network_from(arrays: dict[str, np.ndarray], prefix: str, config: ModelConfig, index: IdIndex) -> Network:
    n_units = index.n_users if config.orientation is Orientation.ITEM else index.n_movies
    state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    return network_from_arrays(config, state, n_units, prefix)


def load_model(path: str | Path) -> TrainedModel:
    """Load a version folder; raises CorruptArtifactError (one line) when anything is missing or inconsistent."""
    folder = Path(path)
    if not folder.is_dir():
        raise CorruptArtifactError(f"model folder {folder} does not exist (another --home, or deleted?); "
                                   "retrain with `recae train` or roll back with `recae models use`")
    meta_path, weights = require_files(folder, "model artifact", "recae train")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if isinstance(meta, dict) and meta.get("format_version") != FORMAT_VERSION:
            raise CorruptArtifactError(f"model artifact {folder} has format {meta.get('format_version')}, "
                                       f"this recae reads format {FORMAT_VERSION}; retrain with `recae train`")
        check_meta(meta, WEIGHTS_FILE, RANKER_INPUTS)
        expected = meta["files"][WEIGHTS_FILE]
        model_cfg = ModelConfig.from_json(meta["model_config"])
        model_cfg.validate()
        index = IdIndex.from_json(meta["index"])
        scale = (float(meta["rating_scale"][0]), float(meta["rating_scale"][1]))
        partner_meta = meta.get("partner")
        partner_cfg = ModelConfig.from_json(partner_meta["model_config"]) if partner_meta else None
        if partner_cfg is not None:
            partner_cfg.validate()
        blend_weight = float(partner_meta["blend_weight"]) if partner_meta else 1.0
        svd_meta = meta.get("svd")
        mix_weights = tuple(float(w) for w in svd_meta["weights"]) if svd_meta else ()
        side_meta = meta.get("side") if svd_meta else None
        components = 2 + (partner_cfg is not None) + (side_meta is not None)
        if svd_meta and len(mix_weights) != components + 1:
            raise ValueError(f"svd weights {list(mix_weights)} are not {components} weights and an intercept")
        ranker_meta = meta.get("ranker")
    except CorruptArtifactError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise CorruptArtifactError(f"model artifact {folder}: {META_FILE} is unreadable or incomplete ({err})") from err
    except Exception as err:  # a RecaeError from config validation, e.g. unknown setting
        raise CorruptArtifactError(f"model artifact {folder}: {META_FILE} is inconsistent ({err})") from err
    verify_file(weights, expected, f"model artifact {folder}")
    try:
        tensors = read_arrays(weights)
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise CorruptArtifactError(f"model artifact {folder}: {WEIGHTS_FILE} is unreadable ({err})") from err
    try:
        check_finite(tensors)
        check_dtypes(tensors, STORED_DTYPES)
        indptr, indices, data = (tensors[f"inputs/{k}"] for k in ("indptr", "indices", "data"))
        check_sparse_structure("stored training ratings", indptr, indices, data, (index.n_users, index.n_movies))
        csr = sp.csr_matrix((data, indices, indptr), shape=(index.n_users, index.n_movies))
        inputs = RatingMatrix(csr=csr, timestamps=np.zeros(csr.nnz, np.int64), index=index)
        network = _network_from(tensors, "model/", model_cfg, index)
        partner_network = _network_from(tensors, "partner/", partner_cfg, index) if partner_cfg else None
        ranker = _ranker_from(tensors, ranker_meta, index) if ranker_meta is not None else None
        svd = _svd_from(tensors, svd_meta, index) if svd_meta else None
        side = _side_from(tensors, side_meta, index) if side_meta else None
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError, RecaeError) as err:  # messages may span lines
        raise CorruptArtifactError(f"model artifact {folder}: weights do not match meta.json "
                                   f"({' '.join(str(err).split())})") from err
    train_cfg = None
    if meta.get("train_config") is not None:
        from recae.artifacts.train_config import TrainConfig

        try:
            train_cfg = TrainConfig.from_json(meta["train_config"])
        except Exception as err:  # noqa: BLE001
            raise CorruptArtifactError(f"model artifact {folder}: train_config is inconsistent ({err})") from err
    partner = None
    if partner_network is not None:
        partner = TrainedModel(module=None, network=partner_network, model_config=partner_network.config,
                               inputs=inputs, rating_scale=scale)
    return TrainedModel(module=None, network=network, model_config=model_cfg, inputs=inputs, rating_scale=scale,
                        train_config=train_cfg, split_spec=meta.get("split"), metrics=dict(meta.get("metrics") or {}),
                        history=list(meta.get("history") or []), partner=partner, blend_weight=blend_weight,
                        svd=svd, side=side, mix_weights=mix_weights,
                        ranker=ranker, ranker_search=dict((ranker_meta or {}).get("search") or {}),
                        tune_search=dict(meta.get("tune") or {}))


def _ranker_tensors(ranker: Ranker) -> dict[str, torch.Tensor]:
    """The tensors a ranker is stored as under ``ranker/`` (views where the dtype already fits)."""
    import torch

    def tensor(array: np.ndarray, dtype: type) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))

    if isinstance(ranker, SparseEaseRanker):
        tail = ranker.tail_weights
        return {"ranker/head": tensor(ranker.head, np.int64), "ranker/weights": tensor(ranker.head_weights, np.float32),
                "ranker/tail": tensor(ranker.tail, np.int64), "ranker/tail_indptr": tensor(tail.indptr, np.int64),
                "ranker/tail_indices": tensor(tail.indices, np.int32), "ranker/tail_data": tensor(tail.data, np.float32)}
    if isinstance(ranker, EaseRanker):
        return {"ranker/items": tensor(ranker.items, np.int64), "ranker/weights": tensor(ranker.weights, np.float32)}
    raise TypeError(f"cannot store a ranker of type {type(ranker).__name__}")


def _ranker_from(tensors: Mapping[str, Any], meta: dict[str, Any], index: IdIndex) -> Ranker:
    """The ranker stored under ``ranker/`` (numpy arrays, or torch tensors from training's parked rankers);
    ValueError when it does not fit the IdIndex."""
    tensors = {key: as_array(value) for key, value in tensors.items() if key.startswith("ranker/")}
    if meta["kind"] == "sparse-ease":
        return _sparse_ease_from(tensors, meta, index)
    items = tensors["ranker/items"]
    weights = tensors["ranker/weights"]
    check_ids("ranker/items", items, index.n_movies)
    if weights.shape != (items.size, items.size) or weights.dtype.kind != "f":
        raise ValueError(f"ranker/weights is {weights.dtype} of shape {weights.shape}, expected float of shape "
                         f"{(items.size, items.size)} (one row and column per covered film)")
    return EaseRanker(items=items, weights=weights, n_movies=index.n_movies, lam=float(meta["lambda"]),
                      input=str(meta["input"]), rating_max=float(meta["rating_max"]))


def _sparse_ease_from(tensors: dict[str, np.ndarray], meta: dict[str, Any], index: IdIndex) -> SparseEaseRanker:
    """The sparse EASE stored under ``ranker/``: head ids, dense head weights, tail ids and the (H, T) CSR."""
    head, tail = tensors["ranker/head"], tensors["ranker/tail"]
    check_ids("ranker/head", head, index.n_movies)
    check_ids("ranker/tail", tail, index.n_movies)
    if np.intersect1d(head, tail).size:
        raise ValueError("ranker/head and ranker/tail share films")
    weights = tensors["ranker/weights"]
    if weights.shape != (head.size, head.size):
        raise ValueError(f"ranker/weights has shape {weights.shape}, expected {(head.size, head.size)}")
    indptr, indices, data = (tensors[f"ranker/tail_{k}"] for k in ("indptr", "indices", "data"))
    check_sparse_structure("ranker tail", indptr, indices, data, (head.size, tail.size))
    tail_weights = sp.csr_matrix((data, indices, indptr), shape=(head.size, tail.size))
    return SparseEaseRanker(head=head, head_weights=weights, tail=tail, tail_weights=tail_weights,
                            n_movies=index.n_movies, lam=float(meta["lambda"]), input=str(meta["input"]),
                            rating_max=float(meta["rating_max"]), neighbours=int(meta["neighbours"]))


def _svd_from(tensors: dict[str, np.ndarray], meta: dict[str, Any], index: IdIndex) -> SvdPart:
    """The SVD part stored under ``svd/``; ValueError when it does not fit the IdIndex."""
    from recae.models.svd_part import SvdPart

    arrays = {name: tensors[f"svd/{name}"].astype(np.float64) for name in SVD_ARRAYS}
    svd = SvdPart(mu=float(meta["mu"]), scale=(float(meta["scale"][0]), float(meta["scale"][1])),
                  ridge=float(meta["ridge"]), bias_ridge=float(meta["bias_ridge"]), **arrays)
    svd.check()
    if svd.shape != (index.n_users, index.n_movies):
        raise ValueError("stored SVD part does not fit the IdIndex")
    return svd


def _side_from(tensors: dict[str, np.ndarray], meta: dict[str, Any], index: IdIndex) -> SidePart:
    """The side part stored under ``side/``; ValueError when it does not fit the IdIndex."""
    from recae.models.side_part import SidePart

    side = SidePart(mu=float(meta["mu"]), bias_ridge=float(meta["bias_ridge"]), shrink=float(meta["shrink"]),
                    names=tuple(str(name) for name in meta["groups"]),
                    **{name: tensors[f"side/{name}"].astype(dtype) for name, dtype in SIDE_ARRAYS.items()})
    side.check()
    if side.shape != (index.n_users, index.n_movies):
        raise ValueError("stored side part does not fit the IdIndex")
    return side


def read_meta(path: str | Path) -> dict[str, Any]:
    """meta.json of a version folder (CorruptArtifactError when absent or unreadable)."""
    meta_path = Path(path) / META_FILE
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorruptArtifactError(f"model artifact {path}: cannot read {META_FILE} ({err})") from err
