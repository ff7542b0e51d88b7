"""Getting ratings in: the store's schema (``db``), MovieLens or CSV ingest, and synthetic ratings files."""

from __future__ import annotations

import sys

import click

from recae.cli.app import Context, cli, echo_data, echo_info, pass_context
from recae.cli.options import rating_scale_options, summary_format_option


@cli.group()
def db() -> None:
    """Manage the store's schema.

    \b
    Example:
      recae db upgrade
    """


@db.command("upgrade")
@pass_context
def db_upgrade(obj: Context) -> None:
    """Apply Alembic migrations up to the newest schema (also done automatically on first use).

    \b
    Example:
      recae --db sqlite:///ratings.db db upgrade
    """
    from recae.store.db import current_revision, make_engine, upgrade

    engine = make_engine(obj.paths().database_url)
    upgrade(engine)
    echo_info(f"store at schema revision {current_revision(engine)}: {engine.url.render_as_string()}")



@cli.command("ingest")
@click.argument("dataset", required=False, metavar="[DATASET]")
@click.option("--path", "path", type=click.Path(exists=True, dir_okay=True),
              help="The GroupLens zip or its extracted folder (default: download DATASET into the cache).")
@click.option("--ratings", "ratings_file", type=click.Path(exists=True, dir_okay=False),
              help="A plain CSV user_id,movie_id,rating[,timestamp] (header optional) instead of a DATASET.")
@rating_scale_options("a --ratings file")
@click.option("--skip-bad", is_flag=True, help="Load the good rows and report the rejected lines.")
@click.option("--replace", is_flag=True,
              help="Replace the store's ratings and films with this data (one transaction); needed to load "
                   "another MovieLens release into a home that holds one. Models trained before stop serving.")
@summary_format_option
@pass_context
def ingest_command(obj: Context, dataset: str | None, path: str | None, ratings_file: str | None,
                   scale: tuple[float, float], step: float, skip_bad: bool, replace: bool, fmt: str) -> None:
    """Load a MovieLens DATASET or a plain ratings CSV into the store (all or nothing; re-runs change nothing).

    DATASET is one of ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest, ml-latest-small. A home holds
    one release (their ids mean different films): another is refused (exit 65) unless --replace is given.
    Plain CSVs add ratings to the films already there.

    \b
    Examples:
      recae ingest ml-100k --path ~/Downloads/ml-100k.zip
      recae ingest ml-latest-small                  # download (cached, sha256-checked)
      recae ingest --ratings new.csv --scale 1 5 --step 1 --skip-bad
      recae ingest ml-latest-small --replace        # this home now holds ml-latest-small only
    """
    from dataclasses import asdict

    from recae.cli.output import render
    from recae.store.datasets import FORMATS
    from recae.store.ingest import ingest_dataset, ingest_ratings_file

    if (dataset is None) == (ratings_file is None):
        raise click.UsageError("give either a DATASET name or --ratings FILE")
    if dataset is not None and dataset not in FORMATS:
        raise click.BadParameter(f"{dataset!r}; choose one of {', '.join(FORMATS)}", param_hint="DATASET")
    if ratings_file is not None and path is not None:
        raise click.UsageError("--path goes with a DATASET; a ratings file is given by --ratings FILE")
    engine = obj.engine()
    progress = sys.stderr.isatty()
    if dataset is not None:
        report = ingest_dataset(engine, dataset, path, downloads_dir=obj.paths().downloads_dir,
                                skip_bad=skip_bad, progress=progress, replace=replace)
    else:
        report = ingest_ratings_file(engine, ratings_file, scale=scale, step=step or None, skip_bad=skip_bad,
                                     progress=progress, replace=replace)
    if report.replaced:
        echo_info(f"replaced the store's ratings and films with {report.dataset}; models trained on another "
                  "catalogue no longer serve: run `recae train`")
    if report.already_ingested:
        echo_info(f"{report.source}: already ingested (sha256 {report.sha256[:12]}...); nothing changed")
    if report.movies_untitled:
        echo_info(f"{report.movies_untitled} rated movies were not in the catalogue; added with no title")
    if report.rows_rejected:
        echo_info(f"skipped {report.rows_rejected} bad lines, first: " + "; ".join(map(str, report.rejects[:3])))
    record = asdict(report)
    if fmt == "json":
        echo_data(render(record, "json"))
    else:
        record["rejects"] = "; ".join(map(str, report.rejects))
        echo_data(render([{"field": k, "value": v} for k, v in record.items()], "table", title="ingest"))


_SYNTH_FLAGS = {"n_users": "--users", "n_movies": "--movies", "n_ratings": "--ratings", "rank": "--rank",
                "start_user_id": "--start-user-id"}


@cli.command("synth")
@click.option("--users", "n_users", type=int, default=943, show_default=True, help="Number of users.")
@click.option("--movies", "n_movies", type=int, default=1682, show_default=True,
              help="Number of movies (ids 1..MOVIES; the least popular may get no rating).")
@click.option("--ratings", "n_ratings", type=int, default=100_000, show_default=True,
              help="Exact number of ratings (unique user-movie pairs), at least USERS.")
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), default="synth-ratings.csv",
              show_default=True, help="CSV file to write (replaced atomically when complete).")
@click.option("--rank", type=int, default=8, show_default=True, help="Rank of the planted user/movie factors.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed and sizes, same file.")
@click.option("--start-user-id", type=int, default=1, show_default=True,
              help="First user id (to add new users to a store without clashing).")
@summary_format_option
def synth_command(n_users: int, n_movies: int, n_ratings: int, out: str, rank: int, seed: int,
                  start_user_id: int, fmt: str) -> None:
    """Write synthetic ratings shaped like MovieLens to a plain CSV that `recae ingest --ratings` loads.

    Film popularity follows a power law, user activity is heavy-tailed (at least 20 ratings per user when
    there are enough), rows are sorted by user then time, and ratings (0.5..5 in half stars) come from a
    planted low-rank model plus noise, so models can learn them. The defaults have ml-100k's sizes.

    \b
    Examples:
      recae synth --out small.csv                        # 943 users, 1,682 movies, 100,000 ratings
      recae synth --users 162541 --movies 62423 --ratings 25000095 --out ml25m_synth.csv
      recae ingest --ratings ml25m_synth.csv
    """
    import time
    from dataclasses import asdict
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from recae.cli.output import render
    from recae.ratings_csv import write_csv
    from recae.synth import InvalidSpec, SynthSpec, generate, summarize

    try:
        spec = SynthSpec(n_users=n_users, n_movies=n_movies, n_ratings=n_ratings, rank=rank, seed=seed,
                         start_user_id=start_user_id)
    except InvalidSpec as err:
        raise click.BadParameter(str(err), param_hint=_SYNTH_FLAGS.get(err.field, err.field)) from None
    folder = Path(out).expanduser().resolve().parent
    if not folder.is_dir():
        raise click.BadParameter(f"folder {folder} does not exist", param_hint="--out")
    started = time.perf_counter()
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        generating = bar.add_task("generate", total=n_ratings)
        ratings = generate(spec, on_progress=lambda n: bar.advance(generating, n))
        writing = bar.add_task(f"write {out}", total=n_ratings)
        report = write_csv(ratings, out, on_progress=lambda n: bar.advance(writing, n))
    shape = summarize(ratings)
    seconds = round(time.perf_counter() - started, 2)
    if fmt == "json":
        echo_data(render({"file": report.path, "bytes": report.bytes, **asdict(shape), "seconds": seconds}, "json"))
    else:
        echo_data(f"wrote {shape.ratings:,} ratings to {report.path} ({report.bytes / 1e6:,.1f} MB) in {seconds} s: "
                  f"{shape.users:,} users rating {shape.min_per_user}..{shape.max_per_user} movies "
                  f"(median {shape.median_per_user:g}); {shape.movies_rated:,} of {spec.n_movies:,} movies rated, "
                  f"top 1% hold {shape.top1pct_movie_share:.0%}; mean rating {shape.mean_rating:.2f} "
                  f"(sd {shape.std_rating:.2f})")

