"""Trained models as files and store rows: safetensors weights + meta.json, published atomically.

A version folder holds ``weights.safetensors`` (the module's tensors and the training ratings it reads as inputs)
and ``meta.json`` (model and train config, IdIndex, split spec, metrics, data fingerprint, rating scale, library
versions, sha256 of the weights). It is written in a temp folder and moved into ``models_dir/<version>`` with one
``os.replace``; the ``model_versions`` row and the ``champion`` pointer follow in one transaction. Loading never
unpickles and checks every file; any damage is a one-line CorruptArtifactError.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from recae.errors import CorruptArtifactError, ModelNotFoundError
from recae.models.autoencoders import AutoEncoder, ModelConfig, build_model, pairs_pattern
from recae.models.batches import oriented_csr, sparse_rows
from recae.models.rankers import EaseRanker
from recae.paths import models_dir_of
from recae.serving.registry import VersionInfo, set_champion, stored_path, version_folder
from recae.store.matrix import IdIndex, RatingMatrix
from recae.training.blend import blend

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Connection, Engine

    from recae.training.config import TrainConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
_SCORE_CHUNK = 2048  # vectors encoded at once when predicting (bounds memory) ...
_SCORE_RATINGS = 1 << 20  # ... and at most this many of their ratings or predicted entries, unless one has more


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A fitted autoencoder ready to score; implements ``recae.evaluate.Scorer``.

    ``inputs`` are the training ratings the model reads (every training rating, never a test one): in item
    orientation each movie's column of them is encoded once into features (n_movies, h_1); in user orientation a
    user's row is encoded on demand. Predictions are clipped to ``rating_scale``.
    """

    module: AutoEncoder
    model_config: ModelConfig
    inputs: RatingMatrix
    rating_scale: tuple[float, float]
    train_config: TrainConfig | None = None
    split_spec: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # one EpochReport per epoch (all members)
    # an autoencoder of the other orientation on the same inputs, mixed in as ``w * ours + (1 - w) * partner's``
    partner: TrainedModel | None = None
    blend_weight: float = 1.0  # w, fitted on validation (recae.training.blend)
    # the top-N model that orders recommendations (recae.models.rankers); None: order by predicted rating
    ranker: EaseRanker | None = None
    ranker_search: dict[str, Any] = field(default_factory=dict)  # how the ranker's settings were chosen
    tune_search: dict[str, Any] = field(default_factory=dict)  # `train --tune`'s trials and choice (recae.training.tune)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_fit(cls, module: AutoEncoder, inputs: RatingMatrix, *, train_config: TrainConfig | None = None,
                 split_spec: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
                 history: list[dict[str, float]] | None = None) -> TrainedModel:
        module = module.to("cpu").eval()
        return cls(module=module, model_config=module.config, inputs=inputs, rating_scale=inputs.rating_scale(),
                   train_config=train_config, split_spec=split_spec, metrics=dict(metrics or {}),
                   history=list(history or []))

    @property
    def index(self) -> IdIndex:
        return self.inputs.index

    @property
    def orientation(self) -> str:
        return self.model_config.orientation

    def _oriented(self) -> sp.csr_matrix:
        if "oriented" not in self._cache:
            self._cache["oriented"] = oriented_csr(self.inputs, self.orientation)
        return self._cache["oriented"]

    @torch.no_grad()
    def _features(self, vectors: np.ndarray) -> torch.Tensor:
        """(len(vectors), h_1) decoder features of oriented input vectors; all movies' cached in item orientation."""
        if self.orientation == "item":
            return self._features_of_all_movies()[torch.from_numpy(np.asarray(vectors, dtype=np.int64))]
        return self._encode(vectors)

    @torch.no_grad()
    def _encode(self, vectors: np.ndarray) -> torch.Tensor:
        self.module.eval()
        parts = []
        lengths = np.diff(self._oriented().indptr)[vectors]
        for chunk in _chunks(lengths, _SCORE_CHUNK, _SCORE_RATINGS):
            block = sparse_rows(self._oriented(), vectors[chunk])
            parts.append(self.module.features(self.module.encode(block).code))
        width = self.model_config.hidden[0]
        return torch.cat(parts) if parts else torch.zeros(0, width)

    def _empty(self, vectors: np.ndarray) -> np.ndarray:
        return np.diff(self._oriented().indptr)[vectors] == 0

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Clipped predicted ratings at (user row, movie col) pairs: (n,) float32 (blended with the partner's)."""
        return self._blended(self._predict_own(rows, cols), lambda partner: partner.predict(rows, cols))

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        """Clipped predicted ratings of every movie for users ``rows``: (len(rows), n_movies) float32."""
        return self._blended(self._score_rows_own(rows), lambda partner: partner.score_rows(rows))

    def rank_rows(self, rows: np.ndarray) -> np.ndarray:
        """Ranking scores of every movie for users ``rows`` (higher first): (len(rows), n_movies) float32.

        The ranker's scores when the model has one, else the predicted ratings.
        """
        if self.ranker is None:
            return self.score_rows(rows)
        return self.ranker.score_rows(self.inputs.csr[np.asarray(rows, dtype=np.int64)])

    def _blended(self, ours: np.ndarray, theirs: Callable[[TrainedModel], np.ndarray]) -> np.ndarray:
        if self.partner is None or self.blend_weight >= 1.0:
            return ours
        return blend(ours, theirs(self.partner), self.blend_weight)

    @torch.no_grad()
    def _predict_own(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        if rows.size == 0:
            return np.zeros(0, np.float32)
        vectors, units = (cols, rows) if self.orientation == "item" else (rows, cols)
        n_units = self._oriented().shape[1]
        out = np.empty(rows.size, np.float32)
        order = np.argsort(vectors, kind="stable")
        boundaries = np.flatnonzero(np.diff(vectors[order])) + 1
        groups = np.split(order, boundaries)
        for chunk in _chunks(np.array([g.size for g in groups]), _SCORE_CHUNK, _SCORE_RATINGS):
            picked = np.concatenate(groups[chunk])
            unique_vectors, pattern, inverse = pairs_pattern(vectors[picked], units[picked], n_units)
            feats = self._features(unique_vectors)  # (n_unique, h_1)
            values = self.module.output_at(feats, pattern)  # (n_entries,)
            empty = torch.from_numpy(self._empty(unique_vectors))[pattern.row_of]
            values = torch.where(empty, self.module.fallback[pattern.col], values)
            out[picked] = values.numpy()[inverse]
        return np.clip(out, *self.rating_scale)

    @torch.no_grad()
    def _score_rows_own(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        module = self.module
        if self.orientation == "item":
            feats = self._features_of_all_movies()  # (n_movies, h_1), cached, not copied
            picked = torch.from_numpy(rows)
            scores = module.unit_scores(feats, picked)  # (batch, n_movies)
            empty = self._empty_movies()
            if empty is not None:
                scores = torch.where(empty[None, :], module.fallback[picked][:, None], scores)
        else:
            scores = module.output_dense(self._features(rows))  # (batch, n_movies)
            empty = torch.from_numpy(self._empty(rows))
            scores = torch.where(empty[:, None], module.fallback[None, :], scores)
        return scores.clamp_(*self.rating_scale).numpy()

    def _features_of_all_movies(self) -> torch.Tensor:
        if "features" not in self._cache:
            self._cache["features"] = self._encode(np.arange(self._oriented().shape[0]))
        return self._cache["features"]

    def _empty_movies(self) -> torch.Tensor | None:
        """(n_movies,) movies with no training rating (they get the user's mean), or None when there are none."""
        if "empty_movies" not in self._cache:
            empty = torch.from_numpy(self._empty(np.arange(self.index.n_movies)))
            self._cache["empty_movies"] = empty if bool(empty.any()) else None
        return self._cache["empty_movies"]


def _chunks(lengths: np.ndarray, max_items: int, max_total: int) -> list[slice]:
    """Consecutive slices of ``lengths`` with at most ``max_items`` items and ``max_total`` summed length each
    (an item longer than ``max_total`` gets a slice of its own): popular films hold most ratings, so a fixed count
    of vectors is not a memory bound (2048 films of ML-25M shape hold millions of ratings)."""
    slices, start, total = [], 0, 0
    for i, length in enumerate(lengths.tolist()):
        if i > start and (i - start >= max_items or total + length > max_total):
            slices.append(slice(start, i))
            start, total = i, 0
        total += length
    if start < len(lengths):
        slices.append(slice(start, len(lengths)))
    return slices


# --- files -----------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def software_versions() -> dict[str, str]:
    """The versions a model was made with, for its meta.json."""
    from recae import __version__

    return {"recae": __version__, "torch": torch.__version__, "python": platform.python_version()}


def file_record(path: Path) -> dict[str, Any]:
    """``{"sha256", "bytes"}`` of a written file, kept in meta.json so loading can detect damage."""
    return {"sha256": _sha256(path), "bytes": path.stat().st_size}


def verify_file(path: Path, record: dict[str, Any], what: str) -> None:
    """Raise CorruptArtifactError (one line, naming ``what``) when ``path`` no longer matches its record."""
    if path.stat().st_size != record.get("bytes") or _sha256(path) != record.get("sha256"):
        raise CorruptArtifactError(f"{what}: {path.name} is truncated or altered (checksum)")


def save_model(trained: TrainedModel, folder: Path, *, version: str, data_fingerprint: str | None = None,
               created_at: datetime | None = None) -> dict[str, Any]:
    """Write ``weights.safetensors`` and ``meta.json`` into ``folder`` (created; fsynced). Returns the meta."""
    from safetensors.torch import save_file

    from recae.store.db import utcnow

    folder.mkdir(parents=True, exist_ok=False)
    csr = trained.inputs.csr
    tensors = _module_tensors("model/", trained.module)
    if trained.partner is not None:
        tensors.update(_module_tensors("partner/", trained.partner.module))
    if trained.ranker is not None:
        tensors["ranker/items"] = torch.from_numpy(np.ascontiguousarray(trained.ranker.items, dtype=np.int64))
        tensors["ranker/weights"] = torch.from_numpy(np.ascontiguousarray(trained.ranker.weights, dtype=np.float32))
    # views of the model's own arrays where the dtype already fits (save_file only reads them)
    tensors["inputs/indptr"] = torch.from_numpy(np.ascontiguousarray(csr.indptr, dtype=np.int64))
    tensors["inputs/indices"] = torch.from_numpy(np.ascontiguousarray(csr.indices, dtype=np.int32))
    tensors["inputs/data"] = torch.from_numpy(np.ascontiguousarray(csr.data, dtype=np.float32))
    weights = folder / WEIGHTS_FILE
    save_file(tensors, str(weights))
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
        "tune": trained.tune_search or None,
        "versions": software_versions(),
        "created_at": (created_at or utcnow()).isoformat(),
        "files": {WEIGHTS_FILE: file_record(weights)},
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    for path in (weights, folder / META_FILE):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    return meta


def _module_tensors(prefix: str, module: AutoEncoder) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": standalone(v) for k, v in module.state_dict().items()}


def standalone(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as safetensors stores it (contiguous, owning its storage), copied only when it is not already:
    at ML-25M scale blanket copies of weights, best weights and Adam's moments cost 1.6 GB at each checkpoint."""
    tensor = tensor.detach().cpu().contiguous()
    owns = tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor if owns else tensor.clone()


def _module_from(tensors: dict[str, torch.Tensor], prefix: str, config: ModelConfig, index: IdIndex) -> AutoEncoder:
    n_units = index.n_users if config.orientation == "item" else index.n_movies
    with torch.device("meta"):  # no throwaway random weights: the loaded tensors become the parameters
        module = build_model(config, n_units, n_units)
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


def load_model(path: str | Path) -> TrainedModel:
    """Load a version folder; raises CorruptArtifactError (one line) when anything is missing or inconsistent."""
    from safetensors import safe_open

    folder = Path(path)
    meta_path, weights = folder / META_FILE, folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise CorruptArtifactError(f"model folder {folder} does not exist (another --home, or deleted?); "
                                   "retrain with `recae train` or roll back with `recae models use`")
    for needed in (meta_path, weights):
        if not needed.is_file():
            raise CorruptArtifactError(f"model artifact {folder} is missing {needed.name}; retrain with `recae train`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        expected = meta["files"][WEIGHTS_FILE]
        model_cfg = ModelConfig.from_json(meta["model_config"])
        index = IdIndex.from_json(meta["index"])
        scale = (float(meta["rating_scale"][0]), float(meta["rating_scale"][1]))
        if not -1e6 < scale[0] < scale[1] < 1e6:
            raise ValueError(f"rating_scale {meta['rating_scale']} is not [LOW, HIGH] with LOW < HIGH")
        partner_meta = meta.get("partner")
        partner_cfg = ModelConfig.from_json(partner_meta["model_config"]) if partner_meta else None
        blend_weight = float(partner_meta["blend_weight"]) if partner_meta else 1.0
        if not 0.0 <= blend_weight <= 1.0:
            raise ValueError(f"blend_weight {blend_weight} is outside [0, 1]")
        ranker_meta = meta.get("ranker")
        if ranker_meta is not None and ranker_meta.get("kind") != "ease":
            raise ValueError(f"unknown ranker kind {ranker_meta.get('kind')!r}")
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise CorruptArtifactError(f"model artifact {folder}: {META_FILE} is unreadable or incomplete ({err})") from err
    except Exception as err:  # a RecaeError from config validation, e.g. unknown setting
        raise CorruptArtifactError(f"model artifact {folder}: {META_FILE} is inconsistent ({err})") from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorruptArtifactError(f"model artifact {folder} has format {meta.get('format_version')}, "
                                   f"this recae reads format {FORMAT_VERSION}; retrain with `recae train`")
    verify_file(weights, expected, f"model artifact {folder}")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise CorruptArtifactError(f"model artifact {folder}: {WEIGHTS_FILE} is unreadable ({err})") from err
    try:
        indptr = tensors["inputs/indptr"].numpy()
        indices = tensors["inputs/indices"].numpy()
        if indptr.size != index.n_users + 1 or int(indptr[-1]) != indices.size or (
                indices.size and int(indices.max()) >= index.n_movies):
            raise ValueError("stored training ratings do not fit the IdIndex")
        csr = sp.csr_matrix((tensors["inputs/data"].numpy(), tensors["inputs/indices"].numpy(), indptr),
                            shape=(index.n_users, index.n_movies))
        inputs = RatingMatrix(csr=csr, timestamps=np.zeros(csr.nnz, np.int64), index=index)
        module = _module_from(tensors, "model/", model_cfg, index)
        partner_module = _module_from(tensors, "partner/", partner_cfg, index) if partner_cfg else None
        ranker = _ranker_from(tensors, ranker_meta, index) if ranker_meta is not None else None
    except (KeyError, ValueError, RuntimeError) as err:  # torch's size mismatches span lines: one line here
        raise CorruptArtifactError(f"model artifact {folder}: weights do not match meta.json "
                                   f"({' '.join(str(err).split())})") from err
    train_cfg = None
    if meta.get("train_config") is not None:
        from recae.training.config import TrainConfig

        try:
            train_cfg = TrainConfig.from_json(meta["train_config"])
        except Exception as err:  # noqa: BLE001
            raise CorruptArtifactError(f"model artifact {folder}: train_config is inconsistent ({err})") from err
    partner = None
    if partner_module is not None:
        partner = TrainedModel(module=partner_module, model_config=partner_module.config, inputs=inputs,
                               rating_scale=scale)
    return TrainedModel(module=module, model_config=model_cfg, inputs=inputs, rating_scale=scale,
                        train_config=train_cfg, split_spec=meta.get("split"), metrics=dict(meta.get("metrics") or {}),
                        history=list(meta.get("history") or []), partner=partner, blend_weight=blend_weight,
                        ranker=ranker, ranker_search=dict((ranker_meta or {}).get("search") or {}),
                        tune_search=dict(meta.get("tune") or {}))


def _ranker_from(tensors: dict[str, torch.Tensor], meta: dict[str, Any], index: IdIndex) -> EaseRanker:
    """The EASE ranker stored under ``ranker/``; ValueError when it does not fit the IdIndex."""
    items = tensors["ranker/items"].numpy()
    weights = tensors["ranker/weights"].numpy()
    if weights.shape != (items.size, items.size) or (items.size and (items.min() < 0 or items.max() >= index.n_movies)):
        raise ValueError("stored ranker does not fit the IdIndex")
    return EaseRanker(items=items, weights=weights, n_movies=index.n_movies, lam=float(meta["lambda"]),
                      input=str(meta["input"]), rating_max=float(meta["rating_max"]))


def read_meta(path: str | Path) -> dict[str, Any]:
    """meta.json of a version folder (CorruptArtifactError when absent or unreadable)."""
    meta_path = Path(path) / META_FILE
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorruptArtifactError(f"model artifact {path}: cannot read {META_FILE} ({err})") from err


# --- the store -------------------------------------------------------------------------------------------------


def new_version_name(trained: TrainedModel, created_at: datetime) -> str:
    """``YYYYmmddTHHMMSSffffffZ-<model>-<orientation>``: sortable by time, readable at a glance."""
    return f"{created_at:%Y%m%dT%H%M%S%f}Z-{trained.model_config.name}-{trained.orientation}"


def publish(engine: Engine, models_dir: str | Path, trained: TrainedModel, *, data_fingerprint: str | None = None,
            make_champion: bool = True, in_transaction: Callable[[Connection, str], None] | None = None,
            ) -> VersionInfo:
    """Write the artifact atomically, record its ``model_versions`` row and (by default) make it the champion.

    ``in_transaction(conn, version)`` runs inside the same transaction, after the row is written (e.g. to
    precompute recommendations). A failure at any step leaves the store and the current champion as they were
    (the folder is removed).
    """
    from recae.store.db import ModelVersion, utcnow

    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    created_at = utcnow()
    version = new_version_name(trained, created_at)
    final = models_dir / version
    temp = models_dir / f".tmp-{version}-{os.getpid()}"
    try:
        meta = save_model(trained, temp, version=version, data_fingerprint=data_fingerprint, created_at=created_at)
        os.replace(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    split_name = (trained.split_spec or {}).get("name", "")
    seed = trained.train_config.seed if trained.train_config is not None else 0
    config = {"model": trained.model_config.to_json(),
              "train": trained.train_config.to_json() if trained.train_config is not None else None,
              "split": trained.split_spec, "ranker": meta["ranker"], "tune": meta["tune"]}
    row = ModelVersion(
        version=version, model=trained.model_config.name, orientation=trained.orientation, split=split_name,
        seed=seed, path=stored_path(version), data_fingerprint=meta["data_fingerprint"],
        metrics=json.dumps(trained.metrics),
        config=json.dumps(config), created_at=created_at,
    )
    from sqlalchemy.orm import Session

    try:
        with Session(engine) as session, session.begin():
            session.add(row)
            session.flush()
            if in_transaction is not None:
                in_transaction(session.connection(), version)
            if make_champion:
                set_champion(session.connection(), version, created_at)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    log.info("published %s at %s", version, final)
    return VersionInfo(
        version=version, model=trained.model_config.name, orientation=trained.orientation, split=split_name,
        seed=seed, path=stored_path(version), data_fingerprint=meta["data_fingerprint"], metrics=dict(trained.metrics),
        config=config, created_at=created_at, is_champion=make_champion,
    )


def load_version(engine: Engine, version: str, models_dir: str | Path | None = None) -> TrainedModel:
    """Load a published version by name from ``models_dir`` (default: ``config.models_dir_of(engine)``);
    ModelNotFoundError when the store has no such version."""
    from sqlalchemy import select

    from recae.store.db import ModelVersion

    with engine.connect() as conn:
        path = conn.execute(select(ModelVersion.path).where(ModelVersion.version == version)).scalar()
    if path is None:
        raise ModelNotFoundError(f"model version {version!r} is not in the store; see `recae models`")
    return load_model(version_folder(path, models_dir or models_dir_of(engine)))


def load_champion(engine: Engine, models_dir: str | Path | None = None) -> TrainedModel:
    """The serving model, from ``models_dir`` (default: ``config.models_dir_of(engine)``); ModelNotFoundError
    before the first ``recae train``."""
    from sqlalchemy import select

    from recae.store.db import Champion, ModelVersion

    with engine.connect() as conn:
        path = conn.execute(
            select(ModelVersion.path).join(Champion, Champion.version == ModelVersion.version).where(Champion.id == 1)
        ).scalar()
    if path is None:
        raise ModelNotFoundError("no trained model yet; run `recae train`")
    return load_model(version_folder(path, models_dir or models_dir_of(engine)))


def with_metrics(trained: TrainedModel, metrics: dict[str, float]) -> TrainedModel:
    """A copy of ``trained`` carrying ``metrics`` (for meta.json and the store row)."""
    return replace(trained, metrics=dict(metrics), _cache=trained._cache)
