"""Serving: ``recommend`` and ``similar`` from the command line, ``serve`` over HTTP."""

from __future__ import annotations

import os

import click

from recae.cli.app import Context, cli, echo_data, echo_info, pass_context
from recae.cli.options import format_option, parse_ids, parse_rate, version_option


@cli.command()
@click.option("--user", "user_id", type=int, help="Known user id to recommend for.")
@click.option("-n", "n", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many films.")
@click.option("--genre", help="Only films of this genre (e.g. Comedy).")
@click.option("--min-year", type=int, help="Only films released in or after this year.")
@click.option("--exclude", multiple=True, metavar="MOVIE_ID", help="Never recommend these (repeat or comma-separate).")
@click.option("--rate", multiple=True, metavar="MOVIE_ID=RATING",
              help="Fresh ratings to fold in without retraining (repeatable); alone, for a new user.")
@click.option("--ratings-file", type=click.Path(exists=True, dir_okay=False),
              help="CSV of movie_id,rating lines to fold in (header optional).")
@version_option("Model version to use (default: the champion).")
@format_option
@pass_context
def recommend(obj: Context, user_id: int | None, n: int, genre: str | None, min_year: int | None,
              exclude: tuple[str, ...], rate: tuple[str, ...], ratings_file: str | None, version: str | None,
              fmt: str) -> None:
    """Recommend the films a user has not rated, in the ranker's order, with the predicted rating of each.

    The order is the model's top-N ranker (EASE, chosen on validation: it ranks 2-3x better than sorting by
    predicted rating); `predicted_rating` is the rating autoencoder's, `score` the ranker's. Known users are
    answered from lists precomputed when the model was published (fast, no model loaded). Fresh ratings (--rate,
    --ratings-file) are folded into both models without retraining, with numpy (no torch).

    \b
    Examples:
      recae recommend --user 42
      recae recommend --user 42 -n 5 --genre Comedy --min-year 1990 --format json
      recae recommend --rate 50=5 --rate 172=4 --rate 133=1      # a new user
    """
    from dataclasses import asdict, fields

    from recae.cli.output import render
    from recae.serving.stored_lists import Filters, RecommendedMovie, stored_list

    fresh = parse_rate(rate)
    if ratings_file:
        from recae.serving.recommend import read_fresh_ratings

        fresh.update(read_fresh_ratings(ratings_file))
    if user_id is None and not fresh:
        raise click.UsageError("give --user ID, or fresh ratings with --rate MOVIE_ID=RATING / --ratings-file")
    filters = Filters(genre=genre, min_year=min_year, exclude=parse_ids(exclude))
    # a known user's stored list through sqlite3 alone (no SQLAlchemy, numpy or torch), else the full path
    recs = None if fresh or user_id is None else stored_list(obj.paths().database_url, user_id, n, filters, version)
    source, note = "precomputed", None
    if recs is None:
        from recae.serving.recommend import answer_films

        answer = answer_films(obj.engine(), user_id, fresh, n, filters, version, models_dir=obj.paths().models_dir)
        recs, source, note = answer.films, answer.source, answer.note
    who = f"user {user_id}" if user_id is not None else "the new user"
    if note:
        echo_info(f"Note: {note}")
    if not recs:
        echo_info(f"no film matched for {who}: every candidate was rated, excluded or filtered out")
    title = f"Top {len(recs)} for {who}" if source != "popular" else f"{len(recs)} most popular films"
    echo_data(render([asdict(r) for r in recs], fmt, title=title, columns=[f.name for f in fields(RecommendedMovie)]))


@cli.command()
@click.option("--movie", "movie_id", type=int, required=True, help="The film to find neighbours of.")
@click.option("-n", "n", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many films.")
@version_option()
@format_option
@pass_context
def similar(obj: Context, movie_id: int, n: int, version: str | None, fmt: str) -> None:
    """Films nearest to a film in the model's learned latent space (cosine similarity).

    \b
    Examples:
      recae similar --movie 50
      recae similar --movie 1 -n 5 --format json
    """
    from recae.cli.output import render
    from recae.serving.similar import similar_films

    engine, trained = obj.load_model(version)
    answer = similar_films(engine, trained, movie_id, n)
    columns = ["rank", "movie_id", "title", "year", "genres", "similarity"]
    records = [{name: film[name] for name in columns} for film in answer.films]
    echo_data(render(records, fmt, title=f"Films like {answer.title or f'movie {movie_id}'}"))


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; loopback by default (put a reverse proxy in front for the world).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="TCP port.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes (each holds the champion's model for fold-in).")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Allow browser calls from this origin (repeatable, e.g. https://films.example); off by default.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="uvicorn's log level on stderr (debug also logs each request).")
@pass_context
def serve_command(obj: Context, host: str, port: int, workers: int, cors_origins: tuple[str, ...],
                  log_level: str) -> None:
    """Serve recommendations over HTTP (JSON API, OpenAPI at /openapi.json) and a web page at /.

    A champion published by `recae train` or `recae retrain` serves from the next request on, without a
    restart. Needs the serve extra: pip install 'recae[serve]'.

    \b
    Examples:
      recae serve                                    # http://127.0.0.1:8000/
      recae serve --port 8080 --workers 2
      curl 'http://127.0.0.1:8000/v1/users/42/recommendations?n=5'
    """
    # one BLAS thread per worker (read when numpy loads, so before the import below): a worker answers many
    # requests at once and workers bring the parallelism; OPENBLAS_NUM_THREADS in the environment wins
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        from recae.serving.http import serve
    except ImportError as err:
        raise click.ClickException(f"recae serve needs FastAPI and uvicorn: pip install 'recae[serve]' ({err})")
    paths = obj.paths()
    serve(paths.database_url, host=host, port=port, workers=workers, cors_origins=cors_origins,
          log_level=log_level, models_dir=str(paths.models_dir))
