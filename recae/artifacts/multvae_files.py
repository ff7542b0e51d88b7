"""A trained Mult-VAE's files: a folder with ``weights.safetensors`` (tensors only) and ``meta.json`` (configs,
item ids, metrics, split, sha256 of the weights), written to a temp folder and moved into place with one
``os.replace``; loading never unpickles and checks everything (one-line CorruptArtifactError).

Beside ``model_files`` (whose helpers and version names it shares) rather than in ``recae.models.multvae``, so the
network does not import the file format.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from recae.artifacts.model_files import (
    META_FILE,
    WEIGHTS_FILE,
    read_tensors,
    require_files,
    software_versions,
    standalone,
    verify_file,
    version_name,
    write_atomically,
    write_files,
)
from recae.errors import CorruptArtifactError, RecaeError
from recae.models.multvae import MultVAE, MultVAEConfig, MultVAETrainConfig, TrainedMultVAE

#: The Mult-VAE's meta.json names its own format (its keys differ from an autoencoder's); the folder layout, sha256
#: record and version names are ``recae.artifacts.model_files``'s.
FORMAT = "recae-multvae"
FORMAT_VERSION = 1


def new_version_name(now: datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSffffffZ-multvae``: sortable by time, named like every version (``model_files.version_name``)."""
    return version_name(now or datetime.now(UTC), "multvae")


def save_multvae(trained: TrainedMultVAE, folder: str | Path) -> Path:
    """Write ``weights.safetensors`` + ``meta.json`` into the new folder ``folder`` atomically; returns it.

    The files are written and fsynced in a temp folder beside it, then moved in with one ``os.replace``: a killed
    run leaves no half-written model. Raises RecaeError when ``folder`` already exists.
    """
    folder = Path(folder)
    if folder.exists():
        raise RecaeError(f"{folder} already exists; choose another --out folder")
    tensors = {k: standalone(v) for k, v in trained.module.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": "mult-vae",
        "config": trained.config.to_json(),
        "train_config": trained.train_config.to_json() if trained.train_config is not None else None,
        "movie_ids": trained.movie_ids.tolist(),
        "split": trained.split,
        "metrics": trained.metrics,
        "history": trained.history,
        "versions": software_versions(),
        "created_at": datetime.now(UTC).isoformat(),
    }
    write_atomically(folder, lambda temp: write_files(temp, tensors, meta))
    return folder


def load_multvae(folder: str | Path) -> TrainedMultVAE:
    """Load a folder written by :func:`save_multvae` (by this or an earlier recae: the format is unchanged since
    version 1); CorruptArtifactError (one line) on any damage."""
    folder = Path(folder)
    meta_path, weights = require_files(folder, "Mult-VAE model", "recae vae")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise CorruptArtifactError(f"{folder} is not a Mult-VAE model of format {FORMAT_VERSION} "
                                       f"(found {meta.get('format')} {meta.get('format_version')})")
        expected = meta["files"][WEIGHTS_FILE]
        config = MultVAEConfig.from_json(meta["config"])
        config.validate()
        train_config = (MultVAETrainConfig.from_json(meta["train_config"])
                        if meta.get("train_config") is not None else None)
        movie_ids = np.asarray(meta["movie_ids"], dtype=np.int64)
    except CorruptArtifactError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecaeError) as err:
        raise CorruptArtifactError(f"Mult-VAE model {folder}: {META_FILE} is unreadable or incomplete ({err})") from err
    verify_file(weights, expected, f"Mult-VAE model {folder}")
    try:
        tensors = read_tensors(weights)
        module = MultVAE(movie_ids.size, config)
        module.load_state_dict(tensors, strict=True)
    except Exception as err:  # noqa: BLE001 - safetensors and load_state_dict raise several types
        raise CorruptArtifactError(f"Mult-VAE model {folder}: weights do not match {META_FILE} ({err})") from err
    return TrainedMultVAE(module=module.eval(), movie_ids=movie_ids, train_config=train_config,
                          split=meta.get("split"), metrics=dict(meta.get("metrics") or {}),
                          history=list(meta.get("history") or []))
