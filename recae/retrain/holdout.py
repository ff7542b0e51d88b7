"""The fixed holdout of the nightly job: which ratings a champion and its challenger are compared on.

MovieLens-style random splits are positional: rebuilding the champion's split on grown data
would move ratings the champion trained on into the test set. So the holdout is a set of (user, movie) pairs
recorded beside each version (``holdout.safetensors``) and inherited: a rating the champion held out stays held
out; a rating the champion trained on stays in training; a new rating (in neither) goes to the holdout when
``u(seed, user_id, movie_id) < test_fraction``, with ``u`` a fixed hash to [0, 1) (splitmix64) and the seed and
fraction of the champion's split spec. Neither model ever trained on a holdout rating, and tomorrow's holdout
contains tonight's. A champion published by ``recae train`` has no record yet: its holdout is taken, before the
inbox is ingested, as every stored rating it did not train on (its test split when the store has not changed since
it was trained; ratings ingested by hand since then count as held out, never as training) and recorded.
Both models are compared on the holdout pairs whose user and movie the champion knows. Early stopping of the
warm start needs validation ratings the champion never fitted (else epoch 0 always looks best), so validation
pairs are inherited the same way: the champion's stay validation, and a new training rating validates when
``u(seed + 1, user_id, movie_id) < val_fraction``. A champion that blends (a partner, a Soft-Impute SVD) also
records its blend carve, the ratings no autoencoder and no SVD of its line ever fitted (an ensemble's members each
stop on their own carve, so every other training rating was fitted by one of them): they stay blend ratings, a new
training rating joins them when ``u(seed + 2, user_id, movie_id) < blend_fraction``, and the warm challenger stops
early and refits its blend there (its SVD beside it, on the fit part).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recae.errors import RecaeError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from recae.artifacts.train_config import TrainConfig
    from recae.artifacts.trained_model import TrainedModel
    from recae.store.matrix import RatingMatrix

log = logging.getLogger(__name__)

HOLDOUT_FILE = "holdout.safetensors"
_MASK64 = (1 << 64) - 1


# --- pure pieces -----------------------------------------------------------------------------------------------


def pair_keys(user_ids: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
    """One int64 per (user_id, movie_id): ``user_id * 2^32 + movie_id`` (MovieLens ids are < 2^31)."""
    return np.asarray(user_ids, dtype=np.int64) * (1 << 32) + np.asarray(movie_ids, dtype=np.int64)


def matrix_keys(matrix: RatingMatrix) -> np.ndarray:
    """(nnz,) pair keys of every rating, in CSR order."""
    rows, cols, _ = matrix.coo()
    return pair_keys(matrix.index.user_ids[rows], matrix.index.movie_ids[cols])


def is_member(keys: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``np.isin(keys, reference)`` by binary search in the sorted reference (sorted here only when it is not):
    a few hundred MB of temporaries at ML-32M shape, where np.isin's sort of both arrays together took 2 GB."""
    if reference.size == 0:
        return np.zeros(keys.size, dtype=bool)
    if reference.size > 1 and not bool(np.all(reference[1:] >= reference[:-1])):
        reference = np.sort(reference)
    position = np.searchsorted(reference, keys)
    np.minimum(position, reference.size - 1, out=position)
    return reference[position] == keys


def seeded_uniform(user_ids: np.ndarray, movie_ids: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) per (seed, user_id, movie_id): splitmix64 of the pair, the same on any machine or night.

    ``x = (user_id << 32) ^ movie_id ^ (seed * phi)``; ``z = x + phi``; ``z = (z ^ z >> 30) * c1``;
    ``z = (z ^ z >> 27) * c2``; ``z ^= z >> 31``; ``u = (z >> 11) / 2^53`` (all mod 2^64).
    """
    phi, c1, c2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
    salt = np.uint64((int(seed) * phi) & _MASK64)
    x = (np.asarray(user_ids, dtype=np.int64).astype(np.uint64) << np.uint64(32)) ^ np.asarray(
        movie_ids, dtype=np.int64).astype(np.uint64) ^ salt
    with np.errstate(over="ignore"):
        z = x + np.uint64(phi)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(c1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(c2)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class Partition:
    """Which ratings of a matrix are held out (``test``), validate early stopping (``val``) and form the blend carve
    (``blend``: where a blending champion's warm start stops and refits its blend); each (nnz,), disjoint."""

    test: np.ndarray
    val: np.ndarray
    blend: np.ndarray


def inherited_partition(matrix: RatingMatrix, read_keys: np.ndarray, held_keys: np.ndarray, val_keys: np.ndarray,
                        test_fraction: float, val_fraction: float, seed: int, blend_keys: np.ndarray | None = None,
                        blend_fraction: float = 0.0) -> Partition:
    """Split ``matrix`` the way the champion was split, extended to ratings it never saw (module docstring).

    ``read_keys`` are the ratings the champion read (its training ratings), ``held_keys`` its holdout, ``val_keys``
    its validation ratings and ``blend_keys`` its blend carve (subsets of ``read_keys``; None: no blend carve). A
    held-out rating stays held out, a blend rating blend and a validation rating validation; a rating the champion
    never saw is held out when ``u(seed) < test_fraction``, else (with ``blend_keys``) blend when
    ``u(seed + 2) < blend_fraction``, else used for validation when ``u(seed + 1) < val_fraction``, else fitted.
    """
    keys = matrix_keys(matrix)
    held = is_member(keys, held_keys)
    new = ~held & ~is_member(keys, read_keys)
    test = held.copy()
    blend = is_member(keys, blend_keys) & ~held if blend_keys is not None else np.zeros(keys.size, dtype=bool)
    val = is_member(keys, val_keys) & ~held & ~blend
    if new.any():
        rows, cols, _ = matrix.coo()
        users, movies = matrix.index.user_ids[rows[new]], matrix.index.movie_ids[cols[new]]
        drawn_test = seeded_uniform(users, movies, seed) < test_fraction
        drawn_blend = ~drawn_test & (blend_keys is not None) & (seeded_uniform(users, movies, seed + 2)
                                                                 < blend_fraction)
        drawn_val = ~drawn_test & ~drawn_blend & (seeded_uniform(users, movies, seed + 1) < val_fraction)
        test[new] = drawn_test
        blend[new] = drawn_blend
        val[new] = drawn_val
    return Partition(test=test, val=val, blend=blend)


# --- holdout records -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldoutRecord:
    """A version's held-out, validation and blend-carve ratings as sorted int64 pair keys (see ``pair_keys``).

    ``blend`` is None for a version that blends nothing (no partner, no SVD part) or was recorded before blend
    carves were. ``store_fingerprint`` is the fingerprint of the whole store the version was trained from, when known.
    """

    test: np.ndarray
    val: np.ndarray
    store_fingerprint: str | None = None
    blend: np.ndarray | None = None


def write_holdout(folder: Path, record: HoldoutRecord) -> None:
    """Record a version's held-out and validation pairs as ``folder/holdout.safetensors``, atomically."""
    import torch
    from safetensors.torch import save_file

    tmp = folder / f".{HOLDOUT_FILE}.{os.getpid()}.tmp"
    tensors = {name: torch.from_numpy(np.sort(np.asarray(keys, dtype=np.int64)))
               for name, keys in (("test_keys", record.test), ("val_keys", record.val), ("blend_keys", record.blend))
               if keys is not None}
    metadata = {"store_fingerprint": record.store_fingerprint} if record.store_fingerprint else None
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, folder / HOLDOUT_FILE)


def read_holdout(folder: Path) -> HoldoutRecord | None:
    """A version's recorded held-out and validation pairs, or None when it has no (readable) record."""
    from safetensors import safe_open

    path = folder / HOLDOUT_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="np") as handle:
            blend = np.asarray(handle.get_tensor("blend_keys"), dtype=np.int64) if "blend_keys" in handle.keys() \
                else None
            return HoldoutRecord(test=np.asarray(handle.get_tensor("test_keys"), dtype=np.int64),
                                 val=np.asarray(handle.get_tensor("val_keys"), dtype=np.int64),
                                 store_fingerprint=(handle.metadata() or {}).get("store_fingerprint"), blend=blend)
    except Exception as err:  # noqa: BLE001 - a damaged record is rebuilt like a missing one
        log.warning("holdout record %s is unreadable (%s); rebuilding it", path, err)
        return None


def validation_keys(train: RatingMatrix, cfg: TrainConfig | None) -> np.ndarray:
    """Pair keys of the validation ratings ``recae.training.train.train_split`` carves from ``train`` with ``cfg``."""
    from recae.artifacts.train_config import TrainConfig
    from recae.evaluation.splits import holdout_validation

    cfg = cfg or TrainConfig()
    return matrix_keys(holdout_validation(train, cfg.val_fraction, cfg.seed)[1])


def blend_keys(model: TrainedModel) -> np.ndarray | None:
    """Pair keys of the blend carve ``recae.training.train.train_split`` kept from ``model``'s training ratings (its
    inputs), for a model that blends (a partner or an SVD part: its warm start stops and refits the blend there);
    else None."""
    from recae.artifacts.train_config import TrainConfig
    from recae.training.ensemble import blend_carve

    if model.svd is None and model.partner is None:
        return None
    return matrix_keys(blend_carve(model.inputs, model.train_config or TrainConfig())[1])


def _trained_on_this_store(engine: Engine, store: RatingMatrix, champion: TrainedModel, version: str) -> bool:
    """Whether the champion was trained on exactly this store: its recorded data fingerprint is the store's, or
    that of the training part of its split rebuilt on the store (``recae train`` records either)."""
    from sqlalchemy import select

    from recae.evaluation.splits import SplitSpec, split_from_store
    from recae.store.db import ModelVersion

    with engine.connect() as conn:
        recorded = conn.execute(select(ModelVersion.data_fingerprint).where(ModelVersion.version == version)).scalar()
    if recorded == store.fingerprint():
        return True
    try:
        rebuilt = split_from_store(engine, store, SplitSpec.from_json(champion.split_spec or {}))
        return recorded == rebuilt.train.fingerprint()
    except (RecaeError, ValueError, KeyError):
        return False


def ensure_holdout(engine: Engine, folder: Path, champion: TrainedModel, version: str) -> HoldoutRecord:
    """The champion's holdout record; one is made (before ingest) for a champion without: every stored rating it
    did not read is held out; its validation ratings are rebuilt from its training ratings and train config, as
    training carved them; the store's fingerprint is kept when the champion was trained on exactly this store."""
    from recae.store.matrix import RatingMatrix

    recorded = read_holdout(folder)
    if recorded is not None:
        return recorded
    store = RatingMatrix.from_db(engine)
    stored = matrix_keys(store)
    held = stored[~is_member(stored, matrix_keys(champion.inputs))]
    same = _trained_on_this_store(engine, store, champion, version)
    record = HoldoutRecord(test=held, val=validation_keys(champion.inputs, champion.train_config),
                           store_fingerprint=store.fingerprint() if same else None, blend=blend_keys(champion))
    write_holdout(folder, record)
    log.info("recorded %d held-out ratings of the champion in %s", held.size, folder / HOLDOUT_FILE)
    return record
