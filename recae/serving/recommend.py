"""Recommendations: precomputed top-N per user at publish time, served from the store without torch.

Publishing a model calls ``precompute_recommendations`` once; ``recommend_from_store`` then answers with one
indexed SQL query. Filters that exhaust the precomputed list fall back to scoring with the model. The command line
reads a SQLite store's list with ``recae.serving.stored_lists`` first (sqlite3 alone: none of this module's
imports) and comes here only when that cannot answer.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from sqlalchemy import and_, delete, func, not_, select
from sqlalchemy.engine import Connection, Engine

from recae.errors import (
    DataError,
    UnknownGenreError,
    UnknownMovieError,
    UnknownUserError,
)
from recae.evaluation.metrics import (  # noqa: F401  # the batch rule lives below serving, re-exported here
    SCORE_BATCH_BYTES as PRECOMPUTE_BATCH_BYTES,
)
from recae.evaluation.metrics import (
    dense_flags,
    ranking_scores,
    top_k_unseen,
)
from recae.evaluation.metrics import (
    score_batch_users as precompute_batch_users,
)
from recae.serving.registry import champion_version
from recae.serving.stored_lists import (
    Filters,
    RecommendedMovie,
    unknown_genre_message,
    unknown_user_message,
)
from recae.store.db import Movie, Rating, Recommendation
from recae.store.writers import Columns, insert_columns
from recae.threads import in_order_on_threads

if TYPE_CHECKING:
    from recae.artifacts.trained_model import TrainedModel
    from recae.store.matrix import RatingMatrix

log = logging.getLogger(__name__)

#: How many films are stored per user; enough headroom for --genre / --min-year / --exclude filters.
DEFAULT_PRECOMPUTED = 100


class RowScorer(Protocol):
    """Anything that predicts every movie's rating for a batch of user rows (see recae.evaluation.evaluate.Scorer).

    A scorer with a ranker also has ``rank_rows(rows)`` (see recae.models.rankers) and ``predict(rows, cols)``: lists
    are then ordered by the ranking scores, and the predicted ratings of the listed films are shown beside them.
    """

    def score_rows(self, rows: np.ndarray) -> np.ndarray: ...


def _listed_ratings(scorer: RowScorer, scores: np.ndarray, rows: np.ndarray, batch_pos: np.ndarray,
                    picked: np.ndarray) -> np.ndarray:
    """Predicted ratings of the listed (row, film) pairs: the scores themselves unless a ranker ordered them.

    Only the listed pairs are predicted, never every film: at ML-25M shape that is 100 of 59,047 per user.
    """
    if getattr(scorer, "rank_rows", None) is None:
        return scores[batch_pos, picked]
    return np.asarray(scorer.predict(rows[batch_pos], picked))  # type: ignore[attr-defined]


#: Where a list came from: the precomputed table, the model scoring now, or the popular-films fallback.
Source = Literal["precomputed", "live", "popular"]
#: Unknown film ids a note names before "and N more".
_NAMED_IN_NOTE = 10


@dataclass(frozen=True)
class Answer:
    """A list, where it came from, and the rated films the model could not use (the CLI and the HTTP API show
    the same ``source`` and ``note``)."""

    films: list[RecommendedMovie]
    source: Source
    unknown_movie_ids: tuple[int, ...] = ()  # rated films the model was trained without: ignored
    # (n_movies,) the model's ranking scores when it answered live (empty for a precomputed list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False, compare=False)

    @property
    def note(self) -> str | None:
        """One line for the user when rated films were ignored, or None."""
        if not self.unknown_movie_ids:
            return None
        ids = ", ".join(str(m) for m in self.unknown_movie_ids[:_NAMED_IN_NOTE])
        more = len(self.unknown_movie_ids) - _NAMED_IN_NOTE
        ids += f" and {more} more" if more > 0 else ""
        films, were = ("film", "was") if len(self.unknown_movie_ids) == 1 else ("films", "were")
        what = (f"the model knows none of the rated films ({films} {ids} {were} added after it was trained): these "
                "are the most popular films, not a personal list" if self.source == "popular" else
                f"{films} {ids} {were} added after the model was trained and {were} ignored")
        return f"{what}; retrain (`recae retrain` or `recae train`) to use them"


#: Bytes of predicted scores (float32) held for one batch of users while precomputing. Scoring and the top-N
#: selection need about five times this at their peak, so a batch stays near 300 MB whatever the catalogue size.
#: Batches scored side by side while precomputing (None: the CPUs, at most 4).
PRECOMPUTE_THREADS: int | None = None


def _columns(version: str, user_ids: np.ndarray, ranks: np.ndarray, movie_ids: np.ndarray,
             scores: np.ndarray, ratings: np.ndarray) -> Columns:
    return {"version": itertools.repeat(version), "user_id": user_ids.tolist(), "rank": ranks.tolist(),
            "movie_id": movie_ids.tolist(), "score": np.asarray(scores, np.float64).tolist(),
            "predicted_rating": np.asarray(ratings, np.float64).tolist()}


def precompute_recommendations(
    conn: Connection,
    version: str,
    scorer: RowScorer,
    rated: RatingMatrix,
    n: int = DEFAULT_PRECOMPUTED,
    batch_users: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Store the top ``n`` unrated films of every user in ``rated.index`` for ``version``; returns rows written.

    Users are scored ``batch_users`` at a time (default: as many as keep a batch's scores under
    PRECOMPUTE_BATCH_BYTES), each batch's top ``n`` is written at once, so memory is O(batch_users x n_movies)
    and never users x movies. Runs inside the caller's transaction (``conn``), so that publishing stays atomic:
    a failure anywhere before the caller commits leaves no row behind. Rows of ``version`` already stored are
    replaced. ``on_batch`` gets the number of users of each finished batch. A model just trained scores in its
    numpy form (``TrainedModel.inference_form``): the lists are what a server computes from the published file.
    """
    inference_form = getattr(scorer, "inference_form", None)
    if inference_form is not None:
        scorer = inference_form()
    index = rated.index
    if batch_users is None:
        batch_users = precompute_batch_users(index.n_movies)
    if batch_users < 1:
        raise ValueError(f"batch_users must be at least 1, got {batch_users}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    conn.execute(delete(Recommendation).where(Recommendation.version == version))
    csr = rated.csr

    def lists_of(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One batch's (rows, batch positions, places, films, scores, ratings): pure, so batches run side by side."""
        rows = np.arange(start, min(start + batch_users, index.n_users))
        scores = ranking_scores(scorer, rows)  # type: ignore[arg-type]  # (batch, n_movies)
        if scores.shape != (rows.size, index.n_movies):
            raise ValueError(f"the scorer returned shape {scores.shape}, expected {(rows.size, index.n_movies)}")
        block = csr[rows[0] : rows[-1] + 1]
        cols = top_k_unseen(scores, dense_flags(block.indptr, block.indices, scores.shape), n)  # (batch, n)
        batch_pos, places = np.nonzero(cols >= 0)  # row-major: by user, then rank
        picked = cols[batch_pos, places]
        ratings = _listed_ratings(scorer, scores, rows, batch_pos, picked) if picked.size else picked
        return rows, batch_pos, places, picked, scores[batch_pos, picked], ratings

    written = 0
    # batches are scored on threads (scipy, numpy and torch release the GIL) and written here, in order, on the
    # caller's connection; at most threads + 1 batches are held at once
    for rows, batch_pos, places, picked, listed_scores, ratings in in_order_on_threads(
            lists_of, range(0, index.n_users, batch_users), PRECOMPUTE_THREADS):
        if picked.size:
            insert_columns(conn, Recommendation, _columns(version, index.user_ids[rows[batch_pos]], places + 1,
                                                          index.movie_ids[picked], listed_scores, ratings))
        written += int(picked.size)
        if on_batch is not None:
            on_batch(int(rows.size))
    log.info("precomputed %d recommendations for %d users (version %s)", written, index.n_users, version)
    return written


def check_genre(conn: Connection, genre: str | None) -> None:
    """UnknownGenreError listing the catalogue's genres when ``genre`` is none of them (compared exactly,
    ignoring case; ``%`` or ``_`` are characters, not patterns)."""
    if genre is None:
        return
    message = unknown_genre_message(genre, (genres for (genres,) in conn.execute(select(Movie.genres).distinct())))
    if message is not None:
        raise UnknownGenreError(message)


def known_users_message(conn: Connection, user_id: int) -> str:
    """``user 9999 is unknown; known users are 1..943 (943 users)``, from the store."""
    low, high, count = conn.execute(
        select(func.min(Rating.user_id), func.max(Rating.user_id), func.count(func.distinct(Rating.user_id)))
    ).one()
    return unknown_user_message(user_id, low, high, count)


def recommend_from_store(
    engine: Engine, user_id: int, n: int = 10, filters: Filters = Filters(), version: str | None = None
) -> list[RecommendedMovie] | None:
    """The precomputed top ``n`` for ``user_id`` after filters, or None when the list cannot answer.

    Returns None when the user is not in the precomputed table (e.g. they joined after training) or when the
    filters leave fewer than ``n`` films; the caller then scores with the model. Raises UnknownUserError when the
    store has never seen the user, ModelNotFoundError when no model is published.
    """
    with engine.connect() as conn:
        version = version or champion_version(conn)
        check_genre(conn, filters.genre)
        conditions = [Recommendation.version == version, Recommendation.user_id == user_id]
        if filters.min_year is not None:
            conditions.append(Movie.year >= filters.min_year)
        if filters.genre is not None:
            literal = filters.genre.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(func.lower("|" + Movie.genres + "|").like(f"%|{literal}|%", escape="\\"))
        if filters.exclude:
            conditions.append(not_(Recommendation.movie_id.in_(filters.exclude)))
        query = (
            select(Recommendation.rank, Recommendation.movie_id, Movie.title, Movie.year, Movie.genres,
                   func.coalesce(Recommendation.predicted_rating, Recommendation.score), Recommendation.score)
            .join(Movie, Movie.movie_id == Recommendation.movie_id, isouter=True)
            .where(and_(*conditions))
            .order_by(Recommendation.rank)
            .limit(n)
        )
        rows = conn.execute(query).all()
        if len(rows) < n:
            if not rows and not _has_precomputed(conn, version, user_id):
                if not _user_in_store(conn, user_id):
                    raise UnknownUserError(known_users_message(conn, user_id))
            return None
    return [
        RecommendedMovie(rank=i + 1, movie_id=m, title=t, year=y, genres=g or "", predicted_rating=float(p),
                         score=float(s))
        for i, (_, m, t, y, g, p, s) in enumerate(rows)
    ]


def _has_precomputed(conn: Connection, version: str, user_id: int) -> bool:
    query = select(Recommendation.rank).where(Recommendation.version == version, Recommendation.user_id == user_id)
    return conn.execute(query.limit(1)).first() is not None


def _user_in_store(conn: Connection, user_id: int) -> bool:
    return conn.execute(select(Rating.movie_id).where(Rating.user_id == user_id).limit(1)).first() is not None


def movie_details(engine: Engine, movie_ids: Sequence[int]) -> dict[int, tuple[str | None, int | None, str]]:
    """Title, year and genres for ``movie_ids`` (missing films are simply absent)."""
    if not movie_ids:
        return {}
    out: dict[int, tuple[str | None, int | None, str]] = {}
    ids = [int(m) for m in movie_ids]
    with engine.connect() as conn:
        for start in range(0, len(ids), 900):  # stay under SQLite's bound-parameter limit
            chunk = ids[start : start + 900]
            for m, t, y, g in conn.execute(
                select(Movie.movie_id, Movie.title, Movie.year, Movie.genres).where(Movie.movie_id.in_(chunk))
            ):
                out[int(m)] = (t, y, g or "")
    return out


def rank_scores(
    engine: Engine,
    movie_ids: np.ndarray,
    scores: np.ndarray,
    exclude_ids: set[int],
    n: int,
    filters: Filters = Filters(),
    ratings: np.ndarray | None = None,
) -> list[RecommendedMovie]:
    """Order one user's films by ``scores`` over ``movie_ids``, dropping rated/excluded films and applying filters.

    ``ratings`` are the predicted ratings shown beside each film (default: ``scores`` themselves).
    """
    ratings = scores if ratings is None else ratings
    order = np.argsort(-scores, kind="stable")
    banned = set(exclude_ids) | set(filters.exclude)
    needs_details = filters.genre is not None or filters.min_year is not None
    details = movie_details(engine, [int(m) for m in movie_ids]) if needs_details else {}
    chosen: list[tuple[int, int]] = []  # (movie_id, col)
    for col in order:
        movie_id = int(movie_ids[col])
        if movie_id in banned:
            continue
        if needs_details and not filters.allows(*details.get(movie_id, (None, None, ""))[1:]):
            continue
        chosen.append((movie_id, int(col)))
        if len(chosen) == n:
            break
    if not needs_details:
        details = movie_details(engine, [m for m, _ in chosen])
    recommended = []
    for i, (movie_id, col) in enumerate(chosen):
        title, year, genres = details.get(movie_id, (None, None, ""))
        recommended.append(RecommendedMovie(i + 1, movie_id, title, year, genres, float(ratings[col]),
                                            float(scores[col])))
    return recommended


def read_fresh_ratings(path: str | Path) -> dict[int, float]:
    """``movie_id,rating`` lines (header optional) -> {movie_id: rating}; DataError names file and line."""
    ratings: dict[int, float] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = [f.strip() for f in line.replace(";", ",").split(",")]
            if not line.strip():
                continue
            try:
                ratings[int(fields[0])] = float(fields[1])
            except (ValueError, IndexError):
                if number == 1 and not fields[0].lstrip("-").isdigit():
                    continue  # a header line
                raise DataError(f"{path} line {number}: expected movie_id,rating, got {line.strip()!r}") from None
    return ratings


def _stored_ratings(engine: Engine, user_id: int) -> dict[int, float]:
    with engine.connect() as conn:
        rows = conn.execute(select(Rating.movie_id, Rating.rating).where(Rating.user_id == user_id)).all()
    return {int(m): float(r) for m, r in rows}


def _check_fresh(engine: Engine, fresh: dict[int, float], scale: tuple[float, float]) -> None:
    low, high = scale
    for movie_id, rating in fresh.items():
        if not low <= rating <= high:
            raise DataError(f"rating {rating:g} for movie {movie_id} is outside the model's scale {low:g}..{high:g}")
    unknown = sorted(set(fresh) - set(movie_details(engine, list(fresh))))
    if unknown:
        raise UnknownMovieError(f"movie {unknown[0]} is not in the catalogue; see `recae ingest` to add films")


def recommend_live(
    engine: Engine, user_id: int | None, fresh: dict[int, float], n: int = 10,
    filters: Filters = Filters(), version: str | None = None, models_dir: Path | None = None,
) -> list[RecommendedMovie]:
    """Score with the model itself: fresh ratings folded in, or filters the precomputed list cannot satisfy.

    Loads the model and runs it with numpy (no torch; well under a second at ml-1m size); a server keeps the
    model loaded and calls :func:`answer_with_model` instead.
    """
    return _answer_live(engine, user_id, fresh, n, filters, version, models_dir).films


def _answer_live(engine: Engine, user_id: int | None, fresh: dict[int, float], n: int, filters: Filters,
                 version: str | None, models_dir: Path | None) -> Answer:
    from recae.serving.registry import load_champion, load_version

    trained = load_version(engine, version, models_dir) if version else load_champion(engine, models_dir)
    return answer_with_model(engine, trained, user_id, fresh, n, filters)


def recommend_films(
    engine: Engine, user_id: int | None, fresh: dict[int, float], n: int = 10,
    filters: Filters = Filters(), version: str | None = None, models_dir: Path | None = None,
) -> list[RecommendedMovie]:
    """The films of :func:`answer_films`."""
    return answer_films(engine, user_id, fresh, n, filters, version, models_dir).films


def answer_films(
    engine: Engine, user_id: int | None, fresh: dict[int, float], n: int = 10,
    filters: Filters = Filters(), version: str | None = None, models_dir: Path | None = None,
    trained: TrainedModel | None = None,
) -> Answer:
    """The top ``n`` for a known user, a known user with fresh ratings, or a new user (``user_id`` None): what
    ``recae recommend`` and ``Model.recommend`` answer.

    A known user without fresh ratings is answered from the precomputed list (no model) when it can answer; fresh
    ratings, a user who joined after training, or filters that leave the list short go to the model: ``trained``
    when the caller holds ``version`` loaded already, else it is loaded.
    """
    if user_id is None and not fresh:
        raise ValueError("recommend_films needs a user id or fresh ratings")
    if user_id is not None and not fresh:
        recs = recommend_from_store(engine, user_id, n, filters, version)
        if recs is not None:
            return Answer(recs, "precomputed")
    if trained is not None:
        return answer_with_model(engine, trained, user_id, fresh, n, filters)
    return _answer_live(engine, user_id, fresh, n, filters, version, models_dir)


def answer_with_model(
    engine: Engine, trained: TrainedModel, user_id: int | None, fresh: dict[int, float], n: int = 10,
    filters: Filters = Filters(),
) -> Answer:
    """The list of ``recommend_live`` from a loaded model (a server keeps one), with the (n_movies,) ranking scores
    it was cut from.

    The user's stored ratings and the fresh ones both condition the prediction and are both excluded from the
    list; a known user without fresh ratings is scored from their own row. Rated films the model was trained
    without (ingested later) carry no information for it: they are ignored and named in the answer's note. When
    the model knows none of the rated films, its ranking has nothing to go on (every score equal: the films came
    out in id order), so the answer is the most-rated films of its training data, ``source`` "popular".
    """
    from recae.serving.foldin import fold_in

    with engine.connect() as conn:
        check_genre(conn, filters.genre)
    _check_fresh(engine, fresh, trained.rating_scale)
    stored = _stored_ratings(engine, user_id) if user_id is not None else {}
    known_to_model = user_id is not None and trained.index.has_user(user_id)
    if user_id is not None and not stored and not known_to_model and not fresh:
        with engine.connect() as conn:
            raise UnknownUserError(known_users_message(conn, user_id))
    row = trained.index.user_row(user_id) if known_to_model else None
    rated = {**stored, **fresh}
    ids = np.fromiter(rated, dtype=np.int64, count=len(rated))
    unknown = tuple(sorted(int(m) for m in ids[trained.index.lookup_movies(ids) < 0])) if ids.size else ()
    if row is not None and not fresh:
        ratings, ranks = trained.score_rows(np.array([row]))[0], trained.rank_rows(np.array([row]))[0]
    else:
        ratings, ranks = fold_in(trained, rated, row)
    informed = len(unknown) < len(rated) or (row is not None and trained.inputs.csr[row].nnz > 0)
    if unknown:
        log.info("user %s: %d rated films unknown to the model ignored", user_id, len(unknown))
    if informed:
        films = rank_scores(engine, trained.index.movie_ids, ranks, set(rated), n, filters, ratings)
        return Answer(films, "live", unknown, ranks)
    popularity = trained.popularity().astype(np.float32)  # (n_movies,) training ratings per film
    films = rank_scores(engine, trained.index.movie_ids, popularity, set(rated), n, filters, ratings)
    films = [replace(film, basis="popular") for film in films]
    return Answer(films, "popular", unknown, ranks)
