"""``Model``: a published model held in Python: evaluate it, recommend, find similar films, predict ratings.

Each verb is the library call its command makes (``recae evaluate``, ``recommend``, ``similar``), so the figures
and lists are the command line's and the HTTP API's, with the same checks and one-line errors; only the shape
differs: pandas DataFrames. The model runs with numpy (no torch), read-only: nothing here writes to the store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recae.api.frames import pairs_frame, ratings_frame, write_ratings_csv
from recae.errors import ArgumentError, DataError, RecaeError

if TYPE_CHECKING:
    from recae.api.store import Store
    from recae.artifacts.trained_model import TrainedModel
    from recae.serving.registry import VersionInfo

log = logging.getLogger(__name__)

SIMILAR_COLUMNS = ["rank", "movie_id", "title", "year", "genres", "similarity"]


class Model:
    """A published model of a store (or a model folder on its own: then ``similar`` and ``predict`` only).

    Example:
        >>> model = store.model(model.version)
        >>> list(model.recommend(user=7, n=3).columns[:3])
        ['rank', 'movie_id', 'title']
    """

    def __init__(self, store: Store | None, version: str, trained: TrainedModel | None = None) -> None:
        self.store, self.version = store, version
        self._trained = trained

    def __repr__(self) -> str:
        where = f", home={str(self.store.home)!r}" if self.store is not None else ""
        return f"Model({self.version!r}{where})"

    @property
    def trained(self) -> TrainedModel:
        """The loaded model (numpy networks, ranker, training ratings): what ``recae.insight`` draws and lists."""
        if self._trained is None:
            from recae.serving.registry import load_version

            store = self._needs_store("load")
            self._trained = load_version(store.engine, self.version, store.paths.models_dir)
        return self._trained

    @property
    def info(self) -> VersionInfo:
        """The store's record of this version: model, split, seed, metrics, when."""
        from recae.serving.registry import get_version

        return get_version(self._needs_store("describe").engine, self.version)

    def evaluate(self, k: int = 10, *, split: str | None = None, test_fraction: float = 0.1, seed: int = 0,
                 test: Any = None, relevant_from: float | None = None) -> pd.DataFrame:
        """RMSE, MAE and list quality at ``k`` on the held-out ratings of the model's own split, beside the
        baselines fitted on the same training ratings: the rows of ``recae evaluate`` (one per model).

        ``split`` scores on another split of the store; ``test`` on held-out ratings of your own (a DataFrame or
        CSV of ``user_id, movie_id, rating`` the model never read; pairs it does not know are skipped, as
        ``recae evaluate --ratings``). ``attrs`` holds the version, split, ``n_test`` and any note.

        Example:
            >>> table = model.evaluate()
            >>> table["model"].iloc[1:4].tolist()
            ['global_mean', 'biases', 'svd']
        """
        from recae.evaluation.splits import choose_split
        from recae.serving.evaluate_version import evaluate_model

        store = self._needs_store("evaluate")
        spec = choose_split(split, test_fraction, seed) if split is not None else None
        if test is not None and split is not None:
            raise ArgumentError("give split= or test=, not both")
        held = None
        if test is not None:
            import tempfile

            from recae.store.ingest import read_ratings_file

            with tempfile.TemporaryDirectory(prefix="recae-test-") as folder:
                file = Path(test) if isinstance(test, (str, Path)) else write_ratings_csv(
                    ratings_frame(test, "test ratings", scale=(-np.inf, np.inf), step=None),
                    Path(folder) / "test.csv")
                held = read_ratings_file(file)
        report = evaluate_model(store.engine, self.version, spec, k=_count(k, "k"), relevant_from=relevant_from,
                                models_dir=store.paths.models_dir, held=held)
        if report.note:
            log.warning("%s", report.note)
        table = pd.DataFrame(report.rows())
        table.attrs.update(version=report.version, split=report.split, n_test=report.n_test,
                           relevant_from=report.relevant_from, note=report.note)
        return table

    def recommend(self, user: int | None = None, *, ratings: Mapping[int, float] | pd.DataFrame | None = None,
                  n: int = 10, genre: str | None = None, min_year: int | None = None,
                  exclude: Iterable[int] = ()) -> pd.DataFrame:
        """The top ``n`` films for a known ``user``, or for fresh ``ratings`` ({movie_id: rating}, folded in
        without retraining: a new user, or a known one's latest), as ``recae recommend``: ranker's order, with
        ``score`` and ``predicted_rating``; rated and excluded films never come back.

        Raises UnknownUserError (a user the store never saw), UnknownMovieError (a rated film not in the
        catalogue), DataError (a rating off the model's scale), UnknownGenreError.

        Example:
            >>> model.recommend(user=7, n=5)["movie_id"].size
            5
            >>> new = model.recommend(ratings={1: 5, 2: 4}, n=5)
            >>> bool(new["movie_id"].isin([1, 2]).any())
            False
        """
        from recae.serving.recommend import answer_films
        from recae.serving.stored_lists import Filters, RecommendedMovie

        store = self._needs_store("recommend")
        fresh = _fresh(ratings)
        if user is None and not fresh:
            raise ArgumentError("give user= (a known user id) or ratings= ({movie_id: rating}) to recommend for")
        filters = Filters(genre=genre, min_year=min_year, exclude=tuple(_id(m, "exclude") for m in exclude))
        answer = answer_films(store.engine, None if user is None else _id(user, "user"), fresh, _count(n, "n"), filters,
                              self.version, store.paths.models_dir, trained=self.trained)
        if answer.note:
            log.warning("%s", answer.note)
        table = pd.DataFrame([asdict(film) for film in answer.films],
                             columns=[f.name for f in fields(RecommendedMovie)])
        table.attrs.update(version=self.version, source=answer.source, note=answer.note)
        return table

    def similar(self, movie: int, n: int = 10) -> pd.DataFrame:
        """The ``n`` films nearest to ``movie`` in what the model learned (cosine similarity of their latent
        representations), as ``recae similar``; UnknownMovieError for a film the model never saw.

        Example:
            >>> model.similar(movie=1, n=3)["rank"].tolist()
            [1, 2, 3]
        """
        from recae.serving.similar import similar_films

        movie = _id(movie, "movie")
        answer = similar_films(self.store.engine if self.store is not None else None, self.trained, movie,
                               _count(n, "n"))
        table = pd.DataFrame(answer.films, columns=SIMILAR_COLUMNS)
        table.attrs.update(version=self.version, movie_id=movie, title=answer.title)
        return table

    def predict(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """Predicted ratings of (user, movie) pairs: ``pairs`` (columns ``user_id``/``user`` and
        ``movie_id``/``movie``, others kept) with a ``predicted_rating`` column, clipped to the rating scale as
        ``recae evaluate`` scores them. UnknownUserError or UnknownMovieError names the first pair the model
        cannot score (it knows the users and films of its training ratings).

        Example:
            >>> pairs = pd.DataFrame({"user": [1, 2], "movie": [3, 4]})
            >>> bool(model.predict(pairs)["predicted_rating"].between(0.5, 5).all())
            True
        """
        frame = pairs_frame(pairs)
        index = self.trained.index
        rows = index.user_rows(frame["user_id"].to_numpy())
        cols = index.movie_cols(frame["movie_id"].to_numpy())
        frame["predicted_rating"] = np.asarray(self.trained.predict(rows, cols), np.float64)
        return frame

    def _needs_store(self, verb: str) -> Store:
        if self.store is None:
            raise RecaeError(f"cannot {verb} model {self.version}: it was loaded from its folder alone; open its "
                             "home with recae.open_store(home).model(version)")
        return self.store


def _id(value: Any, name: str) -> int:
    """A user or movie id: a whole number (ArgumentError naming ``name`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(f"{name} must be a whole-number id, got {value!r}")
    return int(value)


def _count(n: int, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 1000:
        raise ArgumentError(f"{name} must be a whole number in 1..1000, got {n!r}")
    return int(n)


def _fresh(ratings: Mapping[int, float] | pd.DataFrame | None) -> dict[int, float]:
    """{movie_id: rating} from a mapping or a DataFrame of ``movie_id``/``movie`` and ``rating``."""
    if ratings is None:
        return {}
    if isinstance(ratings, pd.DataFrame):
        frame = ratings.rename(columns={"movie": "movie_id"})
        if not {"movie_id", "rating"} <= set(frame.columns):
            raise DataError(f"ratings has columns {', '.join(map(str, ratings.columns))}; expected movie_id, rating")
        ratings = dict(zip(frame["movie_id"], frame["rating"], strict=True))
    try:
        return {int(movie): float(rating) for movie, rating in ratings.items()}
    except (TypeError, ValueError, AttributeError):
        raise DataError("ratings must map movie ids to ratings, e.g. {50: 5, 172: 4}") from None


def load_model(version: str | Path | None = None, *, home: str | Path | None = None) -> Model:
    """A published model, read-only and torch-free: a version of ``home``'s store (default: its champion), or a
    model folder (``HOME/models/VERSION``; one outside a home answers ``similar`` and ``predict`` only).

    Raises ModelNotFoundError (no model, no such version), CorruptArtifactError (damaged files).

    Example:
        >>> recae.load_model(model.version, home=home).version == model.version
        True
    """
    from recae.api.store import Store

    folder = Path(version).expanduser() if version is not None else None
    if folder is not None and folder.is_dir():
        home_of = folder.resolve().parent.parent
        if (home_of / "recae.db").is_file() and home is None:
            return Store.open(home_of, f"sqlite:///{home_of / 'recae.db'}").model(folder.name)
        from recae.artifacts.model_files import load_model as load_folder

        return Model(None, folder.name, load_folder(folder))
    return Store.open(home).model(None if version is None else str(version))
