"""recae: movie recommendations from autoencoders trained with masked MSE.

The Python API in one import: ``open_store`` (a recae home: ingest, train, its models), ``load_model`` (a published
model: evaluate, recommend, similar, predict), ``train`` (recae on your own DataFrame, with no home), and the
errors they raise, each with a one-line message. Importing this package has no side effects and imports neither
torch, pandas nor SQLAlchemy: the names below load their modules on first use (``recae.load_model`` reads and runs
a model with numpy alone).

Example:
    >>> import recae
    >>> store = recae.open_store(home)
    >>> model = store.model(model.version)
    >>> model.recommend(user=7, n=3)["rank"].tolist()
    [1, 2, 3]
"""

from __future__ import annotations

from typing import Any

from recae.errors import ArgumentError as ArgumentError
from recae.errors import DataError as DataError
from recae.errors import ModelNotFoundError as ModelNotFoundError
from recae.errors import RecaeError as RecaeError
from recae.errors import TrainingError as TrainingError
from recae.errors import UnknownMovieError as UnknownMovieError
from recae.errors import UnknownUserError as UnknownUserError

__version__ = "0.1.0"

_LAZY = {
    "open_store": "recae.api.store",
    "Store": "recae.api.store",
    "Model": "recae.api.model",
    "load_model": "recae.api.model",
    "train": "recae.api.experiment",
}
#: The API's names, then what it raises, each with a one-line message (every error of recae.errors is a RecaeError).
__all__ = ["__version__", "open_store", "Store", "Model", "load_model", "train", "RecaeError", "ArgumentError",
           "DataError", "UnknownUserError", "UnknownMovieError", "ModelNotFoundError", "TrainingError"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
