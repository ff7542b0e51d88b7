"""``Store``: a recae home held in Python: ingest ratings, train and publish models, open published ones.

The same home the command line uses (``RECAE_HOME``, else the platform's data folder), through the same library
calls: ``Store.ingest`` is ``recae ingest``, ``Store.train`` is ``recae train`` (``recae.serving.publish``), so a
model trained here serves ``recae recommend`` and ``recae serve`` at once and the reverse. A temporary store
(``Store.temporary``, what ``recae.train`` uses) lives in a folder of its own, removed when the store is dropped.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recae.api.frames import (
    DEFAULT_SCALE,
    DEFAULT_STEP,
    ratings_frame,
    write_ratings_csv,
)
from recae.errors import ArgumentError, TrainingError
from recae.paths import Paths, resolve_paths

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Engine

    from recae.api.model import Model
    from recae.store.ingest import IngestReport

log = logging.getLogger(__name__)


class Store:
    """A recae home: its ratings and films, and the models published from them.

    Example:
        >>> store = recae.open_store(home)
        >>> store.home == home
        True
    """

    def __init__(self, paths: Paths, engine: Engine) -> None:
        self.paths, self.engine = paths, engine
        self._cleanup: weakref.finalize | None = None

    @classmethod
    def open(cls, home: str | Path | None = None, database_url: str | None = None) -> Store:
        """The store of ``home`` (default ``RECAE_HOME``, else the user data folder), created and migrated on
        first use; ``database_url`` as ``recae --db``.

        Example:
            >>> recae.Store.open(home).home == home
            True
        """
        from recae.store.db import open_store

        paths = resolve_paths(Path(home).expanduser() if home is not None else None, database_url)
        return cls(paths, open_store(paths.database_url))

    @classmethod
    def temporary(cls) -> Store:
        """A store in a new temporary folder, removed with its files when the store (and every model of it) is
        dropped: for experiments that should leave no home behind.

        Example:
            >>> scratch = recae.Store.temporary()
            >>> scratch.models().empty
            True
        """
        folder = Path(tempfile.mkdtemp(prefix="recae-"))
        store = cls.open(folder, f"sqlite:///{folder / 'recae.db'}")
        store._cleanup = weakref.finalize(store, _remove, store.engine, folder)
        return store

    @property
    def home(self) -> Path:
        """The home folder (models, downloads and, for SQLite, the database file)."""
        return self.paths.home

    def __repr__(self) -> str:
        return f"Store(home={str(self.home)!r})"

    def ingest(self, source: Any, *, path: str | Path | None = None, scale: tuple[float, float] = DEFAULT_SCALE,
               step: float | None = DEFAULT_STEP, skip_bad: bool = False, replace: bool = False) -> IngestReport:
        """Load ratings into the store, all or nothing; loading the same data again changes nothing.

        ``source`` is a MovieLens name (``"ml-100k"``: ``path`` is its zip or folder, else it is downloaded), the
        path of such a zip or folder, a ``user_id,movie_id,rating[,timestamp]`` CSV, or a pandas DataFrame of
        those columns (``user`` and ``movie`` do too) or a users x films sparse matrix. CSVs and DataFrames are
        checked on ``scale`` every ``step`` (None: any value), as ``recae ingest --ratings --scale --step``.

        Raises DataError (a missing column, a rating off the scale, a malformed line: nothing is loaded),
        ArgumentError (a source that is none of these), DownloadError.

        Example:
            >>> report = store.ingest(ratings)   # a DataFrame: user_id, movie_id, rating[, timestamp]
            >>> report.already_ingested          # loaded when the home was made: a second time changes nothing
            True
        """
        from recae.store.datasets import FORMATS
        from recae.store.ingest import ingest_dataset, ingest_ratings_file

        if isinstance(source, str) and source in FORMATS:
            return ingest_dataset(self.engine, source, path, downloads_dir=self.paths.downloads_dir,
                                  skip_bad=skip_bad, replace=replace)
        if path is not None:
            raise ArgumentError("path= goes with a MovieLens name (ingest('ml-100k', path=...))")
        if isinstance(source, (str, Path)):
            file = Path(source).expanduser()
            name = file.name.removesuffix(".zip")
            if name in FORMATS and (file.is_dir() or file.suffix == ".zip"):
                return ingest_dataset(self.engine, name, file, downloads_dir=self.paths.downloads_dir,
                                      skip_bad=skip_bad, replace=replace)
            if file.is_file():
                return ingest_ratings_file(self.engine, file, scale=scale, step=step, skip_bad=skip_bad,
                                           replace=replace)
            raise ArgumentError(f"{source!s} is not a MovieLens name ({', '.join(FORMATS)}), nor a file or a "
                                "MovieLens zip or folder named after one")
        frame = ratings_frame(source, "ratings", scale, step)
        with tempfile.TemporaryDirectory(prefix="recae-ingest-") as folder:
            file = write_ratings_csv(frame, Path(folder) / "dataframe.csv")
            return ingest_ratings_file(self.engine, file, scale=scale, step=step, skip_bad=skip_bad, replace=replace,
                                       source=f"a DataFrame of {len(frame):,} ratings")

    def train(self, split: str = "random", *, test_fraction: float = 0.1, test: Any = None,
              model: str | None = None, config: str | Path | None = None, resume: bool = False,
              tune_minutes: float | None = None, on_progress: Callable[[str], None] | None = None,
              **settings: Any) -> Model:
        """Train on the store's ratings, score the held-out part and publish the model as the champion, with the
        defaults and steps of ``recae train``.

        ``split`` is ``random``, ``temporal``, ... or a canonical ml-100k fold (``u1``..``u5``, ``ua``, ``ub``);
        ``test`` replaces it with the stored ratings a DataFrame or CSV lists (``--test-ratings``). ``model``
        names the network (default ``denoising``), ``config`` is a TOML file of settings, and every other keyword
        is a setting of ``[model]`` or ``[train]`` (``epochs=20``, ``hidden=(64,)``, ``seed=3``, ``ensemble=1``),
        as flags override a config file. ``tune_minutes`` searches the settings first (``--tune --budget``).
        Progress goes to ``on_progress`` (default: the log).

        Raises UnknownSettingError (a TrainingError) naming an unknown keyword, ArgumentError for an unknown
        split, EmptyStoreError before any ingest, LockHeldError while the same run trains elsewhere.

        Example:
            >>> model = store.train(split="random", epochs=3, ensemble=1, hidden=(16,))
            >>> model.version == store.model().version    # the new champion
            True
        """
        from recae.artifacts.train_config import resolve
        from recae.evaluation.splits import choose_split
        from recae.serving.publish import train_and_publish

        model_cfg, train_cfg = resolve(config, {**_checked_settings(settings), "name": model})
        test_file = self._test_file(test) if test is not None else None
        spec = choose_split(split, test_fraction, train_cfg.seed, test_file)
        run = train_and_publish(self.engine, self.paths.models_dir, spec, model_cfg, train_cfg, resume=resume,
                                on_progress=on_progress or log.info,
                                tune_budget_s=None if tune_minutes is None else 60.0 * tune_minutes)
        if run is None:
            raise TrainingError("this process is a secondary torchrun rank: rank 0 publishes the model")
        from recae.api.model import Model

        return Model(self, run.published.version)

    def model(self, version: str | None = None) -> Model:
        """A published model of this store, read-only (default: the champion, the one ``recae recommend``
        serves); ModelNotFoundError when there is none or no such version.

        Example:
            >>> store.model(model.version).info.split
            'random'
        """
        from recae.api.model import Model
        from recae.serving.registry import get_version

        return Model(self, get_version(self.engine, version).version)

    def models(self) -> pd.DataFrame:
        """The published models, newest first, as ``recae models`` lists them (version, champion, model, split,
        test and validation RMSE, when).

        Example:
            >>> model.version in set(store.models()["version"])
            True
        """
        import pandas as pd

        from recae.serving.registry import list_versions

        return pd.DataFrame([info.summary() for info in list_versions(self.engine)],
                            columns=["version", "champion", "model", "orientation", "split", "test_rmse",
                                     "val_rmse", "created_at"])

    def _test_file(self, test: Any) -> Path:
        """A held-out DataFrame as a CSV kept in the home (a file split names its file, which evaluation reads
        again), named by its content so that two test sets never share a name; a path as it is."""
        if isinstance(test, (str, Path)):
            return Path(test).expanduser()
        frame = ratings_frame(test, "test ratings", scale=(-float("inf"), float("inf")), step=None)
        folder = self.home / "test-ratings"
        folder.mkdir(parents=True, exist_ok=True)
        scratch = write_ratings_csv(frame, folder / ".test.csv.tmp")
        target = folder / f"test-{hashlib.sha256(scratch.read_bytes()).hexdigest()[:16]}.csv"
        scratch.replace(target)
        return target


def _checked_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword settings as ``resolve`` takes them: each the name of a model or train setting (UnknownSettingError
    naming the known ones otherwise); one number where a setting is a tuple (``hidden=64``) becomes a tuple."""
    from recae.artifacts.train_config import TrainConfig
    from recae.models.model_config import ModelConfig
    from recae.settings import UnknownSettingError

    defaults = {f.name: f.default for cls in (ModelConfig, TrainConfig) for f in fields(cls)}
    unknown = sorted(set(settings) - set(defaults) - {"name"})
    if unknown:
        known = tuple(sorted(defaults))
        raise UnknownSettingError(f"unknown setting {unknown[0]!r}; known settings are {', '.join(known)}",
                                  unknown[0], known)
    return {name: (value,) if isinstance(defaults.get(name), tuple) and isinstance(value, (int, float)) else value
            for name, value in settings.items()}


def _remove(engine: Engine, folder: Path) -> None:
    engine.dispose()
    shutil.rmtree(folder, ignore_errors=True)


def open_store(home: str | Path | None = None, *, database_url: str | None = None) -> Store:
    """Open (and on first use create) the store of a recae home: ``home``, else ``RECAE_HOME``, else the user data
    folder, as the command line chooses it; ``database_url`` as ``recae --db`` (PostgreSQL needs recae[postgres]).

    Example:
        >>> store = recae.open_store(home)
        >>> (home / "recae.db").is_file()
        True
    """
    return Store.open(home, database_url)
