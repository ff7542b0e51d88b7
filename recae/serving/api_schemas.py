"""The JSON shapes of ``recae serve`` (pydantic models): request validation and the published OpenAPI schema.

Bounds live here so that an out-of-range request is refused (422) before any work: ``n`` up to MAX_N (the
precomputed lists hold DEFAULT_PRECOMPUTED films), ids positive 32-bit integers (PostgreSQL's INTEGER), at most
MAX_FRESH_RATINGS fresh ratings per request. A request body's types are strict: ``true`` is not the rating 1,
``"10"`` is not the count 10, a rating is a finite number, and a movie id key is written one way only (``"50"``:
no sign, spaces, leading zeros or ``_``), so two keys can never name one film. Response records allow extra
fields, so a field added to the library's dataclasses (served through ``dataclasses.asdict``) reaches clients
without a change here.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from recae.serving.recommend import DEFAULT_PRECOMPUTED

#: Largest list a request may ask for.
MAX_N = DEFAULT_PRECOMPUTED
#: Largest id accepted anywhere (PostgreSQL INTEGER).
MAX_ID = 2**31 - 1
#: Most fresh ratings one fold-in request may carry.
MAX_FRESH_RATINGS = 500

MovieId = Annotated[int, Field(ge=1, le=MAX_ID)]
Count = Annotated[int, Field(ge=1, le=MAX_N)]
_CANONICAL_ID = re.compile(r"[1-9][0-9]{0,9}")


def _movie_id_key(value: Any) -> Any:
    """A JSON object key naming a film: only the canonical decimal form, so ``" 50"`` and ``"50"`` never merge."""
    if isinstance(value, str):
        if not _CANONICAL_ID.fullmatch(value):
            raise ValueError(f"movie id {value!r} is not written as a plain positive integer (e.g. \"50\")")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"movie id {value!r} is not a positive integer")
    return value


#: Body fields (JSON, so strict: a bool or a string is never a number here; query strings stay lax).
MovieIdKey = Annotated[int, BeforeValidator(_movie_id_key), Field(ge=1, le=MAX_ID)]
StrictMovieId = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]
StrictCount = Annotated[int, Field(strict=True, ge=1, le=MAX_N)]
Rating = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Reason(BaseModel):
    """A rated film that raised a recommended film's score: leaving it out lowers the score by ``contribution``."""

    movie_id: int
    title: str | None
    rating: float
    contribution: float


class Recommendation(_Open):
    """One recommended film (the fields of ``recae recommend --format json``)."""

    rank: int
    movie_id: int
    title: str | None
    year: int | None
    genres: str
    predicted_rating: float = Field(description="The rating autoencoder's predicted rating.")
    score: float = Field(description="The ranker's score: the list is ordered by it, highest first.")
    basis: Literal["model", "popular"] = Field(
        "model", description="popular: the model knows none of the rated films; `score` is then the film's "
                             "number of training ratings.")
    because: list[Reason] | None = Field(
        None, description="Fold-in with explain=true: the rated films that contributed most, largest first.")


class RecommendationList(BaseModel):
    """A list and where it came from: the model version that made it and whether it was precomputed."""

    version: str
    user_id: int | None
    source: Literal["precomputed", "live", "popular"] = Field(
        description="popular: the model knows none of the user's rated films (added after it was trained).")
    note: str | None = Field(None, description="Rated films the model does not know yet (retrain to use them).")
    recommendations: list[Recommendation]


class FoldInRequest(BaseModel):
    """A visitor's ratings (movie id -> rating on the model's scale) and what to recommend."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"ratings": {"50": 5, "172": 4, "133": 1}, "n": 10, "explain": True}]})

    ratings: Annotated[dict[MovieIdKey, Rating], Field(
        min_length=1, max_length=MAX_FRESH_RATINGS, json_schema_extra={"propertyNames": {"pattern": "^[1-9][0-9]*$"}})]
    n: StrictCount = 10
    genre: Annotated[str | None, Field(strict=True, max_length=64)] = None
    min_year: Annotated[int | None, Field(strict=True, ge=0, le=9999)] = None
    exclude: Annotated[list[StrictMovieId], Field(max_length=MAX_FRESH_RATINGS)] = []
    explain: bool = Field(False, strict=True,
                          description="Add `because` to each film (leave-one-out; up to 20 rated films).")


class Movie(_Open):
    """A film of the catalogue."""

    movie_id: int
    title: str | None
    year: int | None
    genres: str


class MovieList(BaseModel):
    query: str
    movies: list[Movie]


class SimilarMovie(Movie):
    """A neighbour in the model's latent space with its cosine similarity in [-1, 1]."""

    rank: int
    similarity: float


class SimilarList(BaseModel):
    version: str
    movie_id: int
    title: str | None
    similar: list[SimilarMovie]


class ModelInfo(BaseModel):
    """The serving model (the champion) as the store records it."""

    version: str
    model: str
    orientation: str
    split: str
    seed: int
    trained_at: datetime | None
    metrics: dict[str, Any]


class Health(BaseModel):
    status: str
    version: str | None = None


class ErrorBody(BaseModel):
    """Every error: a short kind, one line for a person, and the validation details for 422s."""

    error: str
    message: str
    detail: list[dict[str, Any]] | None = None
