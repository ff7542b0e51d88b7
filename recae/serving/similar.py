"""Films near each other in what the model learned: cosine similarity of their latent representations.

A movie's representation is the decoder feature its rating vector encodes to (item orientation, as in
I-AutoRec) or its row of output weights (user orientation): in both, films that the same people rate alike end
up close together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from recae.artifacts.trained_model import TrainedModel
from recae.models.names import Orientation

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


@dataclass(frozen=True)
class SimilarMovie:
    """A neighbour of the query film with its cosine similarity in [-1, 1]."""

    rank: int
    movie_id: int
    similarity: float


def movie_embeddings(trained: TrainedModel) -> np.ndarray:
    """(n_movies, h_1) latent representation of every movie of ``trained.index`` (a view of the model's own
    arrays, not a copy: a serving worker asks for it on every similar-films request)."""
    if trained.orientation is Orientation.ITEM:
        return trained._features_of_all_movies()
    return trained.network.representation()


def similar_movies(trained: TrainedModel, movie_id: int, n: int = 10) -> list[SimilarMovie]:
    """The ``n`` films closest to ``movie_id`` by cosine similarity, the film itself excluded.

    Raises UnknownMovieError naming the known range when the model has never seen ``movie_id``.
    """
    col = trained.index.movie_col(movie_id)
    vectors = movie_embeddings(trained)  # float32, read in place: no (n_movies, h_1) temporaries
    norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)), 1e-12)
    similarity = (vectors @ vectors[col]).astype(np.float64) / (norms * norms[col])  # (n_movies,)
    similarity[col] = -np.inf
    k = min(n, similarity.size - 1)
    if k <= 0:
        return []
    top = np.argpartition(-similarity, k - 1)[:k]
    top = top[np.argsort(-similarity[top], kind="stable")]
    return [SimilarMovie(i + 1, int(trained.index.movie_ids[c]), float(similarity[c])) for i, c in enumerate(top)]


@dataclass(frozen=True)
class SimilarFilms:
    """The answer of ``recae similar``, ``GET /v1/movies/{id}/similar`` and ``Model.similar``: the query film's
    title and one record per neighbour (rank, movie_id, similarity, title, year, genres)."""

    title: str | None
    films: list[dict[str, Any]] = field(default_factory=list)


def similar_films(engine: Engine | None, trained: TrainedModel, movie_id: int, n: int = 10) -> SimilarFilms:
    """:func:`similar_movies` with each film's title, year and genres from the store (none without one): the one
    place the command line, the HTTP API and the Python API build their neighbour lists."""
    from recae.serving.recommend import movie_details

    neighbours = similar_movies(trained, movie_id, n)
    details = movie_details(engine, [movie_id, *(s.movie_id for s in neighbours)]) if engine is not None else {}
    films = []
    for neighbour in neighbours:
        title, year, genres = details.get(neighbour.movie_id, (None, None, ""))
        films.append({**asdict(neighbour), "title": title, "year": year, "genres": genres})
    return SimilarFilms(details.get(movie_id, (None, None, ""))[0], films)
