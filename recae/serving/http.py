"""``recae serve``: the recommendations over HTTP (FastAPI on uvicorn) and the small web page at ``/``.

Every route is a thin call into the library, as every CLI command is:

- ``GET /v1/users/{id}/recommendations``: the precomputed list (``recommend_from_store``, no model), or the
  model itself when the filters exhaust that list, like ``recae recommend --user``;
- ``POST /v1/recommendations``: fold-in of a visitor's ratings, optionally with "because you rated ..."
  (``recae.serving.explain``); ``GET /v1/movies/{id}/similar``; ``GET /v1/movies?query=`` (title search);
- ``GET /v1/model``, ``/healthz`` (the process answers), ``/readyz`` (the store answers and the champion loads).

The champion pointer is read once per request, and everything that request returns comes from that version,
so a champion published by ``recae train`` or the nightly job serves from the next request on, with no restart
and no half-switched answer. Errors are JSON with the CLI's meanings (unknown user 404, bad input 422, no model
503) and never a traceback; request bodies and ``n`` are bounded; CORS is off unless origins are given.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recae import __version__
from recae.errors import (
    CorruptArtifactError,
    DataError,
    EmptyStoreError,
    LockHeldError,
    ModelNotFoundError,
    RecaeError,
    UnknownGenreError,
    UnknownMovieError,
    UnknownUserError,
)
from recae.serving.api_schemas import (
    MAX_ID,
    MAX_N,
    Count,
    ErrorBody,
    FoldInRequest,
    Health,
    ModelInfo,
    MovieList,
    RecommendationList,
    SimilarList,
)
from recae.serving.recommend import Filters, RecommendedMovie, movie_details, recommend_from_store
from recae.serving.registry import champion_version
from recae.serving.stored_lists import stored_answer
from recae.store.db import StoreUnavailableError, open_store

if TYPE_CHECKING:
    import numpy as np

    from recae.artifacts.trained_model import TrainedModel
    from recae.serving.live_model import ModelCache

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
#: Largest request body accepted (a fold-in of MAX_FRESH_RATINGS ratings is about 8 KiB).
MAX_BODY_BYTES = 64 * 1024
#: Environment that carries ``recae serve``'s settings into each uvicorn worker process.
CORS_ENV = "RECAE_SERVE_CORS_ORIGINS"
DATABASE_URL_ENV = "RECAE_SERVE_DATABASE_URL"
MODELS_DIR_ENV = "RECAE_SERVE_MODELS_DIR"

_STATUS = {UnknownUserError: 404, UnknownMovieError: 404, DataError: 422, UnknownGenreError: 422,
           ModelNotFoundError: 503, CorruptArtifactError: 503, StoreUnavailableError: 503, LockHeldError: 503,
           EmptyStoreError: 503}
_KIND = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 422: "bad_input", 500: "internal",
         503: "unavailable"}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (404, 422, 503)
}
UserId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="A user id of the store.")]
MovieIdPath = Annotated[int, PathParam(ge=1, le=MAX_ID, description="A movie id of the catalogue.")]
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def _error(status: int, message: str, detail: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = ErrorBody(error=_KIND.get(status, "error"), message=_one_line(message), detail=detail)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status)


def _one_line(text: str) -> str:
    """``text`` with control characters escaped (a key or value from the request may hold a newline or a NUL)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


async def unique_keys(request: Request) -> None:
    """DataError (422) when a JSON body names one key twice: json.loads would keep the last value silently, so a
    rating could vanish from a fold-in without a word. Malformed JSON is left to FastAPI's own 422."""

    def refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DataError(f"the key {key!r} appears twice in one JSON object; give each key once")
            seen.add(key)
        return dict(pairs)

    try:
        json.loads(await request.body(), object_pairs_hook=refuse_repeats)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep: FastAPI answers for the body
        pass


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, by its Content-Length or as it streams in.

    The (small) body is read in full before the app runs, so an oversized chunked upload is refused without the
    app ever parsing a byte of it.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self.too_large(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; let the app see it
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self.too_large(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The 413 answer, built only when it is sent (not for every request: about 10 us each)."""
        await _error(413, f"request body over {self.limit} bytes")(scope, receive, send)


def _filters(genre: str | None, min_year: int | None, exclude: Sequence[str]) -> Filters:
    ids = []
    for value in exclude:
        for part in value.replace(",", " ").split():
            if not part.isdigit() or not 1 <= int(part) <= MAX_ID:
                raise DataError(f"exclude: {part!r} is not a movie id (a positive integer)")
            ids.append(int(part))
    return Filters(genre=genre or None, min_year=min_year, exclude=tuple(ids))


def _json(body: dict[str, Any]) -> Response:
    """The hot path's answer, serialized directly: the route's response_model documents the same shape (and the
    tests check it against the schema), but validating our own output again cost a third of the request's time."""
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


#: A record's keys in the dataclass's order; its values are scalars, so no deep copy is needed (asdict's deep
#: copy was 40% of a stored list's CPU).
_RECORD_FIELDS = tuple(f.name for f in fields(RecommendedMovie))


def _records(recs: Sequence[RecommendedMovie]) -> list[dict[str, Any]]:
    return [{name: getattr(r, name) for name in _RECORD_FIELDS} for r in recs]


def create_app(database_url: str, *, cors_origins: Sequence[str] = (), models_dir: str | None = None) -> FastAPI:
    """The ASGI application over the store at ``database_url`` (migrated on open)."""
    from recae.serving.live_model import ModelCache

    engine = open_store(database_url)
    models = ModelCache(engine, models_dir=models_dir)
    app = FastAPI(title="recae", version=__version__, docs_url=None, redoc_url=None,  # their pages load a CDN
                  description="Movie recommendations from autoencoders: precomputed lists, fold-in, similar films.")
    app.state.engine = engine
    app.state.models = models
    _add_error_handlers(app)
    _add_routes(app, database_url, engine, models)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory in each worker: the settings ``serve`` put in the environment."""
    from recae.serving.live_model import steady_allocator

    url = os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise RuntimeError(f"{DATABASE_URL_ENV} is not set; start the server with `recae serve`")
    steady_allocator()
    return create_app(url, cors_origins=json.loads(os.environ.get(CORS_ENV, "[]")),
                      models_dir=os.environ.get(MODELS_DIR_ENV) or None)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RecaeError)
    async def recae_error(request: Request, err: RecaeError) -> JSONResponse:
        status = next((code for kind, code in _STATUS.items() if isinstance(err, kind)), 500)
        return _error(status, str(err))

    @app.exception_handler(OperationalError)
    async def store_down(request: Request, err: OperationalError) -> JSONResponse:
        log.error("%s %s: the store did not answer: %s", request.method, request.url.path, err.orig)
        return _error(503, "the store did not answer; try again (the server log has the details)")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                   for e in err.errors()]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"][1:]) or "request"
        return _error(422, f"{where}: {first['msg']}", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 400:  # FastAPI's "error parsing the body" (JSON nested too deep): bad input, as any
            return _error(422, f"request body: {err.detail}")
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(err).__name__, err)
        return _error(500, "internal error; the server log has the details")


def _add_routes(app: FastAPI, database_url: str, engine: Engine, models: ModelCache) -> None:
    @app.get("/v1/users/{user_id}/recommendations", response_model=RecommendationList, responses=_ERRORS,
             response_model_exclude_unset=True, tags=["recommendations"])
    def user_recommendations(
        user_id: UserId, n: Count = 10,
        genre: Annotated[str | None, Query(max_length=64, description="Only films of this genre.")] = None,
        min_year: Annotated[int | None, Query(ge=0, le=9999)] = None,
        exclude: Annotated[list[str], Query(max_length=MAX_N, description="Movie ids, repeated or comma-separated.")
                           ] = [],  # noqa: B006 - FastAPI copies defaults
    ) -> Response:
        """A known user's list: precomputed at publish time (no model work), or scored when filters exhaust it."""
        from recae.serving.recommend import Answer, answer_with_model

        filters = _filters(genre, min_year, exclude)
        # a SQLite store's list through sqlite3 alone, as `recae recommend --user` reads it; else the full path
        stored = stored_answer(database_url, user_id, n, filters)
        if stored is not None:
            version, answer = stored[0], Answer(stored[1], "precomputed")
        else:
            with engine.connect() as conn:
                version = champion_version(conn)
            recs = recommend_from_store(engine, user_id, n, filters, version)
            if recs is not None:
                answer = Answer(recs, "precomputed")
            else:
                with models.scoring:
                    answer = answer_with_model(engine, models.get(version), user_id, {}, n, filters)
        return _json({"version": version, "user_id": user_id, "source": answer.source,
                      **({"note": answer.note} if answer.note else {}), "recommendations": _records(answer.films)})

    @app.post("/v1/recommendations", response_model=RecommendationList, responses=_ERRORS,
              response_model_exclude_unset=True, tags=["recommendations"], dependencies=[Depends(unique_keys)])
    def fold_in(request: FoldInRequest) -> dict[str, Any]:
        """A new visitor's list from their ratings (fold-in, no retraining); ``explain`` adds "because you rated"."""
        from recae.serving.recommend import answer_with_model

        filters = _filters(request.genre, request.min_year, [str(m) for m in request.exclude])
        with engine.connect() as conn:
            version = champion_version(conn)
        fresh = {int(m): float(r) for m, r in request.ratings.items()}
        with models.scoring:
            trained = models.get(version)
            try:
                answer = answer_with_model(engine, trained, None, fresh, request.n, filters)
            except UnknownMovieError as err:  # a bad id in the body is bad input, not a missing page
                raise DataError(str(err)) from None
            records = _records(answer.films)
            if request.explain:
                _explain(engine, trained, fresh, answer.scores, answer.films, records)
        return {"version": version, "user_id": None, "source": answer.source,
                **({"note": answer.note} if answer.note else {}), "recommendations": records}

    @app.get("/v1/movies/{movie_id}/similar", response_model=SimilarList, responses=_ERRORS, tags=["movies"])
    def similar(movie_id: MovieIdPath, n: Count = 10) -> dict[str, Any]:
        """Films nearest to this one in the model's latent space (cosine similarity)."""
        from recae.serving.similar import similar_films

        with engine.connect() as conn:
            version = champion_version(conn)
        with models.scoring:
            answer = similar_films(engine, models.get(version), movie_id, n)
        return {"version": version, "movie_id": movie_id, "title": answer.title, "similar": answer.films}

    @app.get("/v1/movies", response_model=MovieList, responses=_ERRORS, tags=["movies"])
    def search(query: Annotated[str, Query(min_length=1, max_length=200, description="Words of the title.")],
               limit: Annotated[int, Query(ge=1, le=50)] = 20) -> dict[str, Any]:
        """Films whose title contains the query (case-insensitive), titles starting with it first."""
        from recae.serving.catalogue import search_titles

        return {"query": query, "movies": [asdict(m) for m in search_titles(engine, query, limit)]}

    @app.get("/v1/model", response_model=ModelInfo, responses=_ERRORS, tags=["model"])
    def model() -> dict[str, Any]:
        """The serving model: version, when it was trained, its metrics."""
        from recae.serving.registry import get_version

        info = get_version(engine)
        return {"version": info.version, "model": info.model, "orientation": info.orientation,
                "split": info.split, "seed": info.seed, "trained_at": info.created_at, "metrics": info.metrics}

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True, tags=["operations"])
    def healthz() -> dict[str, Any]:
        """The process answers (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Health, responses=_ERRORS, tags=["operations"])
    def readyz() -> dict[str, Any]:
        """The store answers and the champion loads (readiness), so every route can answer: 503 with the reason
        otherwise. The first call loads the champion into this worker (as the first fold-in would)."""
        with engine.connect() as conn:
            version = champion_version(conn)
        models.get(version)
        return {"status": "ready", "version": version}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers=_PAGE_HEADERS)


def _explain(engine: Engine, trained: TrainedModel, fresh: dict[int, float], scores: np.ndarray,
             recs: Sequence[RecommendedMovie], records: list[dict[str, Any]]) -> None:
    """Fill each record's ``because`` by leave-one-out through the ranking that ordered the list (for EASE this is
    exactly each rated film's term x_i B_ij of the score)."""
    from recae.serving.explain import MAX_EXPLAINED, leave_one_out
    from recae.serving.foldin import fold_in_ranks

    if len(fresh) > MAX_EXPLAINED or not recs:
        return
    cols = [trained.index.movie_col(r.movie_id) for r in recs]
    reasons = leave_one_out(lambda ratings: fold_in_ranks(trained, ratings), fresh, scores, cols)
    titles = movie_details(engine, list(fresh))
    for record, found in zip(records, reasons, strict=True):
        record["because"] = [{**asdict(c), "title": titles.get(c.movie_id, (None,))[0]} for c in found]


def check_address(host: str, port: int) -> None:
    """RecaeError (exit 1) in one line when ``host:port`` cannot be listened on: in use, not this machine's, or
    not allowed. uvicorn would otherwise log several lines and exit 3, a code the CLI does not document.

    Each address ``host`` resolves to is bound the way uvicorn binds it (SO_REUSEADDR, IPv6 only on IPv6) and
    released at once; an address family the machine lacks is skipped while another resolves.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        raise RecaeError(f"cannot listen on {host}:{port}: {host!r} is not an address of this machine ({err})"
                         ) from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise RecaeError(f"port {port} on {host} is already in use (another server?); stop it or "
                                     "choose another with --port") from None
                if err.errno == errno.EADDRNOTAVAIL and len(infos) > 1:
                    continue
                raise RecaeError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def serve(database_url: str, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          cors_origins: Sequence[str] = (), log_level: str = "info", models_dir: str | None = None) -> None:
    """Run uvicorn until interrupted; each worker builds its app with ``app_from_env``."""
    import uvicorn

    open_store(database_url).dispose()  # fail fast (bad URL, server down) and migrate once, before the workers
    check_address(host, port)
    os.environ[DATABASE_URL_ENV] = database_url
    os.environ[CORS_ENV] = json.dumps(list(cors_origins))
    os.environ[MODELS_DIR_ENV] = models_dir or ""  # the home's models (a PostgreSQL store has no folder beside it)
    try:
        uvicorn.run("recae.serving.http:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, server_header=False, access_log=log_level == "debug")
    except SystemExit as stop:  # uvicorn's 3: startup failed after the check (the port taken since, ...)
        if stop.code in (0, None):
            raise
        raise RecaeError(f"the server could not start on {host}:{port} (the lines above say why)") from None
