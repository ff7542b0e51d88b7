"""recae: movie recommendations from autoencoders trained with masked MSE.

Importing this package has no side effects and does not import torch; the public names below load their
modules on first use (``recae.load_model`` reads and runs a model with numpy alone: no torch).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "recae.artifacts.model_files",
    "TrainedModel": "recae.artifacts.trained_model",
    "RatingMatrix": "recae.store.matrix",
    "ingest_dataset": "recae.store.ingest",
    "ingest_ratings_file": "recae.store.ingest",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recae' has no attribute {name!r}")
