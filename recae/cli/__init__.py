"""The ``recae`` command line: a thin click layer; each command calls one library function.

Exit codes: 0 ok, 1 error, 2 usage, 65 bad input data, 75 another run holds the lock.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from recae import __version__
from recae.errors import EXIT_ERROR, RecaeError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = "Exit codes: 0 ok, 1 error, 2 usage, 65 bad input data, 75 another run holds the lock."
format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
    help="How to print the result on stdout.",
)


def rating_scale_options(what: str) -> Callable[[F], F]:
    """``--scale LOW HIGH`` and ``--step`` for plain ratings files (``what`` names them in the help)."""

    def decorate(command: F) -> F:
        command = click.option("--step", type=float, default=0.5, show_default=True,
                               help=f"Allowed increment above LOW in {what} (0 allows any value).")(command)
        return click.option("--scale", nargs=2, type=float, default=(0.5, 5.0), show_default=True,
                            metavar="LOW HIGH", help=f"Allowed ratings in {what}.")(command)

    return decorate


@dataclass(frozen=True)
class Context:
    """What every command needs: where the store and models live, and how verbose to be."""

    home: str | None
    db_url: str | None
    verbose: int

    def paths(self):  # type: ignore[no-untyped-def]
        from recae.paths import resolve_paths

        return resolve_paths(self.home, self.db_url)

    def engine(self):  # type: ignore[no-untyped-def]
        from recae.store.db import open_store

        return open_store(self.paths().database_url)


pass_context = click.make_pass_decorator(Context)


def echo_data(text: str) -> None:
    """Print data on stdout."""
    click.echo(text)


def echo_info(text: str) -> None:
    """Print a human message on stderr (never mixed into data)."""
    click.echo(text, err=True)


class RecaeGroup(click.Group):
    """Turns RecaeError into its one-line message and exit code; ``-v`` shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RecaeError as err:
            if _verbosity(ctx) > 0:
                logging.getLogger("recae").exception("failed")
            click.echo(f"Error: {err}", err=True)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted; nothing was half-applied.", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as err:  # noqa: BLE001 - last line of defence: one line, not a traceback
            from recae.store.db import store_error

            known = store_error(err)  # a busy or read-only store: one line, never raw SQL and parameters
            if known is not None:
                if _verbosity(ctx) > 0:
                    logging.getLogger("recae").exception("failed")
                click.echo(f"Error: {known}", err=True)
                ctx.exit(known.exit_code)
            if _verbosity(ctx) > 0:
                raise
            click.echo(f"Error: {type(err).__name__}: {err} (run with -v for the traceback)", err=True)
            ctx.exit(EXIT_ERROR)


def _verbosity(ctx: click.Context) -> int:
    obj = ctx.find_object(Context)
    return obj.verbose if obj else 0


@click.group(cls=RecaeGroup, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="RECAE_HOME", type=click.Path(file_okay=False),
              help="Folder for the store and models (env RECAE_HOME; default: the user data dir).")
@click.option("--db", "db_url", envvar="RECAE_DATABASE_URL",
              help="Database URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB (needs recae[postgres]) "
                   "(env RECAE_DATABASE_URL; default: sqlite in --home).")
@click.option("-v", "--verbose", count=True, help="More logging on stderr; -v also shows tracebacks.")
@click.version_option(__version__, prog_name="recae")
@click.pass_context
def cli(ctx: click.Context, home: str | None, db_url: str | None, verbose: int) -> None:
    """recae: movie recommendations from autoencoders.

    \b
    Start here:
      recae quickstart                 # ingest ml-100k, train, evaluate, recommend
      recae ingest ml-100k --path ~/Downloads/ml-100k.zip
      recae recommend --user 42

    Shell completion (bash): eval "$(_RECAE_COMPLETE=bash_source recae)"
    """
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = Context(home=home, db_url=db_url, verbose=verbose)


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


def _parse_rate(values: tuple[str, ...]) -> dict[int, float]:
    ratings: dict[int, float] = {}
    for value in values:
        movie, sep, rating = value.partition("=")
        try:
            if not sep:
                raise ValueError
            ratings[int(movie)] = float(rating)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not MOVIE_ID=RATING (e.g. 50=5)", param_hint="--rate") from None
    return ratings


def _parse_ids(values: tuple[str, ...]) -> tuple[int, ...]:
    try:
        return tuple(int(v) for value in values for v in value.replace(",", " ").split())
    except ValueError:
        message = f"movie ids must be integers, got {' '.join(values)!r}"
        raise click.BadParameter(message, param_hint="--exclude") from None


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
@click.option("--model", "version", help="Model version to use (default: the champion).")
@format_option
@pass_context
def recommend(obj: Context, user_id: int | None, n: int, genre: str | None, min_year: int | None,
              exclude: tuple[str, ...], rate: tuple[str, ...], ratings_file: str | None, version: str | None,
              fmt: str) -> None:
    """Recommend the films a user has not rated, in the ranker's order, with the predicted rating of each.

    The order is the model's top-N ranker (EASE, chosen on validation: it ranks 2-3x better than sorting by
    predicted rating); `predicted_rating` is the rating autoencoder's, `score` the ranker's. Known users are
    answered from lists precomputed when the model was published (fast, no torch). Fresh ratings (--rate,
    --ratings-file) are folded into both models without retraining.

    \b
    Examples:
      recae recommend --user 42
      recae recommend --user 42 -n 5 --genre Comedy --min-year 1990 --format json
      recae recommend --rate 50=5 --rate 172=4 --rate 133=1      # a new user
    """
    from dataclasses import asdict, fields

    from recae.cli.output import render
    from recae.serving.recommend import Filters, RecommendedMovie, recommend_from_store

    fresh = _parse_rate(rate)
    if ratings_file:
        from recae.serving.recommend import read_fresh_ratings

        fresh.update(read_fresh_ratings(ratings_file))
    if user_id is None and not fresh:
        raise click.UsageError("give --user ID, or fresh ratings with --rate MOVIE_ID=RATING / --ratings-file")
    filters = Filters(genre=genre, min_year=min_year, exclude=_parse_ids(exclude))
    engine = obj.engine()
    recs = None
    if user_id is not None and not fresh:
        recs = recommend_from_store(engine, user_id, n, filters, version)
    if recs is None:
        from recae.serving.recommend import recommend_live

        recs = recommend_live(engine, user_id, fresh, n, filters, version, models_dir=obj.paths().models_dir)
    who = f"user {user_id}" if user_id is not None else "the new user"
    if not recs:
        echo_info(f"no film matched for {who}: every candidate was rated, excluded or filtered out")
    echo_data(render([asdict(r) for r in recs], fmt, title=f"Top {len(recs)} for {who}",
                     columns=[f.name for f in fields(RecommendedMovie)]))


@cli.group()
def models() -> None:
    """See the published models and choose which one serves.

    \b
    Examples:
      recae models list
      recae models show            # the champion
      recae models use 20261123-101500-stacked
    """


@models.command("list")
@format_option
@pass_context
def models_list(obj: Context, fmt: str) -> None:
    """List published model versions, newest first; * marks the champion.

    \b
    Example:
      recae models list --format json
    """
    from recae.cli.output import render
    from recae.serving.registry import list_versions

    versions = list_versions(obj.engine())
    if not versions:
        echo_info("no models published yet; run `recae train`")
    echo_data(render([v.summary() for v in versions], fmt, title="Models"))


@models.command("show")
@click.argument("version", required=False)
@format_option
@pass_context
def models_show(obj: Context, version: str | None, fmt: str) -> None:
    """Show one version's metrics and configuration (default: the champion).

    \b
    Example:
      recae models show 20261123-101500-stacked --format json
    """
    from dataclasses import asdict, replace

    from recae.cli.output import render
    from recae.serving.registry import get_version, version_folder

    info = get_version(obj.engine(), version)
    info = replace(info, path=str(version_folder(info.path, obj.paths().models_dir)))
    record = asdict(info)
    if fmt != "json":
        config = {k: v for k, v in info.config.items() if k != "tune"}
        record = {**info.summary(), "path": info.path, "metrics": info.metrics, "config": config}
        if info.config.get("tune"):
            record["tune"] = tune_summary(info.config["tune"])
    echo_data(render(record, fmt, title=f"Model {info.version}"))
    if fmt == "table" and info.config.get("tune"):
        echo_data(tune_tables(info.config["tune"]))


@models.command("use")
@click.argument("version")
@pass_context
def models_use(obj: Context, version: str) -> None:
    """Make VERSION the champion that serves recommendations (rollback).

    \b
    Example:
      recae models use 20261122-020000-stacked
    """
    from recae.serving.registry import use_version

    info = use_version(obj.engine(), version)
    echo_info(f"model {info.version} now serves recommendations")


@cli.command("ingest")
@click.argument("dataset", required=False, metavar="[DATASET]")
@click.option("--path", "path", type=click.Path(exists=True, dir_okay=True),
              help="The GroupLens zip or its extracted folder (default: download DATASET into the cache).")
@click.option("--ratings", "ratings_file", type=click.Path(exists=True, dir_okay=False),
              help="A plain CSV user_id,movie_id,rating[,timestamp] (header optional) instead of a DATASET.")
@rating_scale_options("a --ratings file")
@click.option("--skip-bad", is_flag=True, help="Load the good rows and report the rejected lines.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="How to print the summary on stdout.")
@pass_context
def ingest_command(obj: Context, dataset: str | None, path: str | None, ratings_file: str | None,
                   scale: tuple[float, float], step: float, skip_bad: bool, fmt: str) -> None:
    """Load a MovieLens DATASET or a plain ratings CSV into the store (all or nothing; re-runs change nothing).

    DATASET is one of ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest, ml-latest-small.

    \b
    Examples:
      recae ingest ml-100k --path ~/Downloads/ml-100k.zip
      recae ingest ml-latest-small                  # download (cached, sha256-checked)
      recae ingest --ratings new.csv --scale 1 5 --step 1 --skip-bad
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
                                skip_bad=skip_bad, progress=progress)
    else:
        report = ingest_ratings_file(engine, ratings_file, scale=scale, step=step or None, skip_bad=skip_bad,
                                     progress=progress)
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
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="How to print the summary on stdout.")
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
    from recae.synth import InvalidSpec, SynthSpec, generate, summarize, write_csv

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


@cli.command()
@click.option("--model", "version", help="Model version (default: the champion).")
@click.option("--split", "split_name", help="Score on another split instead of the model's own (e.g. u2).")
@click.option("--test-fraction", type=float, default=0.1, show_default=True, help="With --split: held-out share.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --split: the split's seed.")
@click.option("--ratings", "ratings_file", type=click.Path(exists=True, dir_okay=False),
              help="Score on this CSV user_id,movie_id,rating (the ingest --ratings format) of ratings the model "
                   "never read, instead of its split's held-out part.")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="Ranking cut-off.")
@format_option
@pass_context
def evaluate(obj: Context, version: str | None, split_name: str | None, test_fraction: float, seed: int,
             ratings_file: str | None, k: int, fmt: str) -> None:
    """RMSE and MAE on the held-out ratings of the model's own split, beside the baselines.

    Predictions are clipped to the rating scale. Ranking quality (precision, recall, NDCG at k) counts held-out
    ratings >= 4 as relevant and never ranks films the model read in training. Baselines (global mean,
    user+item biases, truncated SVD) are fitted on the same training ratings.

    With --ratings FILE the held-out ratings are the file's (they need not be in the store: last month's ratings
    kept aside, a published test set); pairs whose user or film the model does not know are skipped and counted
    (n_skipped); a pair the model read in training is refused (exit 65).

    \b
    Examples:
      recae evaluate
      recae evaluate --model 20261123-101500-stacked --format json
      recae evaluate --ratings last-month.csv --format json
    """
    from recae.cli.output import render
    from recae.evaluate import evaluate_model
    from recae.splits import SplitSpec

    held = None
    if ratings_file is not None:
        _refuse_with("--ratings", ("split_name", "--split"), ("test_fraction", "--test-fraction"), ("seed", "--seed"))
        from recae.store.ingest import read_ratings_file

        held = read_ratings_file(ratings_file)
    spec = SplitSpec(split_name, test_fraction, seed) if split_name else None
    report = evaluate_model(obj.engine(), version, spec, k=k, models_dir=obj.paths().models_dir, held=held)
    if report.note:
        echo_info(f"note: {report.note}")
    if fmt == "json":
        echo_data(render(report.to_json(), fmt))
    else:
        source = f"{held.label}" if held is not None else f"split {report.split}"
        echo_data(render(report.rows(), fmt, title=f"Held-out ratings of {source} (n={report.n_test})"))


@cli.command()
@click.option("--path", type=click.Path(exists=True), help="ml-100k zip or folder you already have (else downloaded).")
@click.option("--user", "user_id", type=int, default=42, show_default=True, help="Whom to recommend for at the end.")
@click.option("--epochs", type=click.IntRange(1), help="Cap on training epochs (default: the model's own).")
@pass_context
def quickstart(obj: Context, path: str | None, user_id: int, epochs: int | None) -> None:
    """Ingest MovieLens 100K, train the default model on fold u1, evaluate it beside the baselines, recommend.

    Works on the default SQLite store with no other setup; run it again and the ingest is skipped.

    \b
    Examples:
      recae quickstart
      recae quickstart --path ~/Downloads/ml-100k.zip
    """
    import dataclasses

    from recae.cli.output import render
    from recae.evaluate import evaluate_model
    from recae.serving.publish import train_and_publish
    from recae.serving.recommend import recommend_from_store
    from recae.splits import SplitSpec
    from recae.store.ingest import ingest_dataset
    from recae.training.config import default_configs

    engine = obj.engine()
    paths = obj.paths()
    echo_info("1/4 ingesting ml-100k ...")
    report = ingest_dataset(engine, "ml-100k", path, downloads_dir=paths.downloads_dir, progress=True)
    echo_info("    already in the store" if report.already_ingested else f"    {report.rows_loaded:,} ratings loaded")
    echo_info("2/4 training the default model on fold u1 ...")
    model_cfg, train_cfg = default_configs()
    if epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
    run = train_and_publish(engine, paths.models_dir, SplitSpec("u1"), model_cfg, train_cfg,
                            on_progress=lambda message: echo_info(f"    {message}"))
    if run is None:  # a secondary torchrun rank: rank 0 publishes and reports
        return
    echo_info(f"    published {run.published.version} in {run.result.metrics.get('seconds', 0):.1f} s")
    echo_info("3/4 evaluating on the held-out ratings of u1 ...")
    evaluation = evaluate_model(engine, run.published.version, k=10, models_dir=paths.models_dir)
    echo_data(render(evaluation.rows(), "table", title=f"Test RMSE on u1 (n={evaluation.n_test})"))
    echo_info(f"4/4 recommending for user {user_id} ...")
    recs = recommend_from_store(engine, user_id, 10) or []
    echo_data(render([dataclasses.asdict(r) for r in recs], "table", title=f"Top 10 for user {user_id}"))


@cli.command("train")
@click.option("--model", "model_name", type=click.Choice(["stacked", "sparse", "denoising", "contractive", "rbm"]),
              help="Autoencoder to train, or rbm (the RBM for CF) (default: the config file's, else denoising).")
@click.option("--pretrain", type=click.Choice(["autoencoder", "rbm"]),
              help="Greedy layer-wise pretraining of the stack by autoencoders or RBMs (default: config's, else none).")
@click.option("--orientation", type=click.Choice(["item", "user"]),
              help="item: each movie's vector over users (I-AutoRec; default); user: each user's over movies.")
@click.option("--split", "split_name", default="random", show_default=True,
              type=click.Choice(["random", "per-user", "temporal", "temporal-per-user",
                                 "u1", "u2", "u3", "u4", "u5", "ua", "ub"]),
              help="Held-out test ratings, stored with the model (u1..u5, ua, ub: canonical ml-100k folds).")
@click.option("--test-fraction", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Share of ratings held out for test (generated splits only).")
@click.option("--test-ratings", "test_ratings", type=click.Path(exists=True, dir_okay=False),
              help="CSV user_id,movie_id,rating (the ingest --ratings format) of stored ratings to hold out as the "
                   "test set instead of a --split; the model keeps the file's path and sha256.")
@click.option("--seed", type=int, help="Seed of the split and the validation carves (default: the config's, else 0).")
@click.option("--init-seed", type=int,
              help="Seed of initialisation, shuffles and dropout (default: --seed): spread over it on a fixed split.")
@click.option("--epochs", type=click.IntRange(min=1), help="Most epochs (default: the config's).")
@click.option("--ensemble", type=click.IntRange(min=1), help="Members averaged into the model (default: config's).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="TOML file with [model] and [train] tables of settings; flags override it.")
@click.option("--deterministic", is_flag=True, default=None,
              help="Deterministic algorithms and a fixed thread count (reproducible weights).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to train (default auto).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run with the same settings and data.")
@click.option("--tune", is_flag=True,
              help="First search lambda, hidden units, noise, learning rate, members and the ranker's settings on "
                   "carves of the training part, then train the best; the search is kept with the model.")
@click.option("--budget", type=click.FloatRange(0.0, min_open=True), metavar="MINUTES",
              help="With --tune: minutes for the search and the final training together (default 10).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="How to print the summary on stdout.")
@pass_context
def train_command(obj: Context, model_name: str | None, pretrain: str | None, orientation: str | None,
                  split_name: str, test_fraction: float, seed: int | None, init_seed: int | None,
                  test_ratings: str | None,
                  epochs: int | None, ensemble: int | None,
                  config_file: str | None, deterministic: bool | None, device: str | None, resume: bool,
                  tune: bool, budget: float | None, fmt: str) -> None:
    """Train an autoencoder on the store's ratings, evaluate it on the split's test part, and publish it.

    Validation for early stopping is carved from the training part, never the test part. The new version
    becomes the champion (the model `recae recommend` serves). Progress goes to stderr.

    \b
    Examples:
      recae train                                   # defaults: denoising I-AutoRec, random 90/10 split
      recae train --split u1                        # the canonical ml-100k fold
      recae train --split u1 --init-seed 3          # same split and carves, another initialisation
      recae train --test-ratings heldout.csv        # these stored ratings are the test set, the rest trains
      recae train --split random --test-fraction 0.1 --seed 0 --epochs 50 --deterministic
      recae train --config run.toml --resume        # [model] hidden = [500], [train] lr = 0.002
      recae train --model rbm --split u1            # I-RBM (RBM for CF); --orientation user: U-RBM
      recae train --model stacked --pretrain rbm    # deep AE pretrained as a stack of RBMs, then fine-tuned
      recae train --tune --budget 20                # settings searched on validation carves, 20 minutes in all
    """
    from recae.cli.output import render
    from recae.models.autoencoders import model_config
    from recae.serving.publish import train_and_publish
    from recae.splits import SplitSpec
    from recae.training.config import DEFAULT_MODEL, TrainConfig, load_config_file

    if test_ratings is not None:
        _refuse_with("--test-ratings", ("split_name", "--split"), ("test_fraction", "--test-fraction"))
    if budget is not None and not tune:
        raise click.UsageError("--budget sets the time of --tune; add --tune")
    if tune and resume:
        raise click.UsageError("--resume continues one run's training; a --tune run searches again: drop one")
    if tune and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise click.UsageError("--tune runs in one process (its search follows the clock); tune first, then "
                               "train the chosen settings under torchrun")
    model_part, train_part = load_config_file(config_file) if config_file else ({}, {})
    name = model_name or model_part.pop("name", DEFAULT_MODEL)
    model_part.pop("name", None)
    if orientation:
        model_part["orientation"] = orientation
    if pretrain:
        from recae.models.rbm import DEFAULT_PRETRAIN_EPOCHS

        model_part["pretrain"] = pretrain
        model_part["pretrain_epochs"] = model_part.get("pretrain_epochs") or DEFAULT_PRETRAIN_EPOCHS
    flags = {"seed": seed, "init_seed": init_seed, "epochs": epochs, "ensemble": ensemble,
             "deterministic": deterministic, "device": device}
    train_cfg = TrainConfig.from_json({**train_part, **{k: v for k, v in flags.items() if v is not None}})
    model_cfg = model_config(name, **model_part)
    model_cfg.validate()
    train_cfg.validate()
    if test_ratings is not None:
        from recae.store.ingest import read_ratings_file

        spec = SplitSpec.of_file(read_ratings_file(test_ratings))
    else:
        spec = SplitSpec(split_name, test_fraction=test_fraction, seed=train_cfg.seed)
    held_out = f"the ratings of {os.path.basename(spec.path)}" if spec.is_file else f"{spec.name} split"

    def announce(split) -> None:  # type: ignore[no-untyped-def]
        echo_info(f"training {model_cfg.name} ({model_cfg.orientation}) on {split.train.nnz} ratings, "
                  f"testing on {split.test.nnz} ({held_out})")

    secondary_rank = int(os.environ.get("RANK", "0")) > 0  # torchrun: only rank 0 reports and publishes
    from recae.training.tune import DEFAULT_BUDGET_MINUTES

    budget_s = 60.0 * (budget or DEFAULT_BUDGET_MINUTES) if tune else None
    progress = _train_progress(train_cfg.epochs, quiet=secondary_rank)
    with progress as (on_epoch, on_progress):
        on_tune_step = progress.budget_bar(budget_s) if budget_s is not None else None
        run = train_and_publish(obj.engine(), obj.paths().models_dir, spec, model_cfg, train_cfg, resume=resume,
                                on_epoch=on_epoch, on_progress=on_progress,
                                on_split=None if secondary_rank else announce, tune_budget_s=budget_s,
                                on_tune_step=on_tune_step)
    if run is None:
        return
    published, result = run.published, run.result
    metrics = result.metrics
    summary = {
        "version": published.version, "model": published.model, "orientation": published.orientation,
        "split": published.split, "best_epoch": metrics.get("best_epoch"), "val_rmse": metrics.get("val_rmse"),
        "test_rmse": metrics.get("test_rmse"), "test_mae": metrics.get("test_mae"),
        "test_ndcg@10": metrics.get("test_ndcg@10"), "ranker_lambda": metrics.get("ranker_lambda"),
        "seconds": metrics.get("seconds"), "champion": published.is_champion,
    }
    if result.trained.tune_search:
        summary["tuned"] = tune_summary(result.trained.tune_search)
    echo_data(render(summary, fmt) if fmt == "json" else render(
        [{"field": k, "value": v} for k, v in summary.items()], "table", title="train"))


def _refuse_with(flag: str, *others: tuple[str, str]) -> None:
    """Usage error when any of ``others`` (parameter name, flag) was given on the command line beside ``flag``."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = [shown for name, shown in others if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)]
    if given:
        raise click.UsageError(f"{flag} does not go with {given[0]}: the file is the test set")
def tune_summary(record: dict[str, Any]) -> str:
    """One line on a --tune search: trials, time, why it stopped, and the chosen setting."""
    chosen = {k: v for k, v in record.get("chosen", {}).items() if k not in ("trial", "val_rmse")}
    settings = ", ".join(f"{k} {v}" for k, v in chosen.items())
    return (f"{len(record.get('trials', []))} trials in {record.get('search_seconds')} s of a "
            f"{record.get('budget_s')} s budget ({record.get('stopped')}); chose trial "
            f"{record.get('chosen', {}).get('trial')} (validation RMSE {record.get('chosen', {}).get('val_rmse')}): "
            f"{settings}")


def tune_tables(record: dict[str, Any]) -> str:
    """The --tune search as tables: every trial (settings, validation RMSE, seconds), then the ranker's lambdas."""
    from recae.cli.output import render

    trials = [{k: (" x ".join(map(str, v)) if isinstance(v, list) else v) for k, v in trial.items()}
              for trial in record.get("trials", [])]
    ranker = [{"input": search["input"], "lambda": t["lambda"], "ndcg@10": t["ndcg@10"]}
              for search in record.get("ranker_trials", []) for t in search.get("trials", [])]
    parts = [render(trials, "table", title=f"Tuning trials (members: {record.get('members')})")]
    if ranker:
        parts.append(render(ranker, "table", title="Ranker trials (EASE lambda, NDCG@10 on its carve)"))
    return "\n".join(parts)


def _rmse_fields(report) -> tuple[str, str, str]:  # type: ignore[no-untyped-def]
    return f"{report.train_loss:.4f}", f"{report.val_rmse:.4f}", f"{report.best_val_rmse:.4f}@{report.best_epoch}"


class _train_progress:  # noqa: N801 - used as a context manager factory
    """A rich progress bar on stderr (epoch, loss, validation metric); silent when stderr is not a terminal.

    ``fields(report)`` gives the (loss, validation, best) texts of one epoch's report.
    """

    def __init__(self, epochs: int, quiet: bool = False, metric: str = "val RMSE",
                 fields: Callable[..., tuple[str, str, str]] = _rmse_fields, label: str = "training") -> None:
        self.epochs, self.quiet, self.metric, self.fields, self.label = epochs, quiet, metric, fields, label

    def __enter__(self):  # type: ignore[no-untyped-def]
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.fields[unit]} {task.completed:.0f}/{task.total:.0f}"),
            TextColumn(f"loss {{task.fields[loss]}}  {self.metric} {{task.fields[val]}}  best {{task.fields[best]}}"),
            TimeElapsedColumn(), console=Console(stderr=True), disable=self.quiet or not sys.stderr.isatty(),
            transient=False,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task(self.label, total=self.epochs, loss="-", val="-", best="-", unit="epoch")

        def on_epoch(report) -> None:  # type: ignore[no-untyped-def]
            loss, val, best = self.fields(report)
            self.progress.update(self.task, completed=report.epoch, loss=loss, val=val, best=best)

        def on_progress(message: str) -> None:
            self.progress.update(self.task, description=message, completed=0)

        return on_epoch, on_progress

    def budget_bar(self, budget_s: float) -> Callable[[str, float, float | None], None]:
        """A bar over a time budget (``train --tune``): ``on_step(message, elapsed seconds, best val RMSE)``."""
        task = self.progress.add_task("tuning", total=budget_s, loss="-", val="-", best="-", unit="s")

        def on_step(message: str, elapsed_s: float, best: float | None) -> None:
            self.progress.update(task, description=message, completed=min(elapsed_s, budget_s),
                                 best="-" if best is None else f"{best:.4f}")

        return on_step

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]


@cli.command("retrain")
@click.option("--inbox", type=click.Path(file_okay=False),
              help="Folder of new ratings files (CSV user_id,movie_id,rating[,timestamp]); default HOME/inbox.")
@click.option("--margin", type=click.FloatRange(min=0.0), default=0.002, show_default=True,
              help="Publish the challenger only if its held-out RMSE is lower than the champion's by this much.")
@click.option("--ndcg-margin", type=click.FloatRange(min=0.0), default=0.005, show_default=True,
              help="... and only if its held-out NDCG@10 is not lower than the champion's by more than this.")
@click.option("--keep", type=click.IntRange(min=1), default=5, show_default=True,
              help="Published versions to keep for rollback (the champion always stays); older ones are pruned.")
@click.option("--warm-epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Most fine-tuning epochs when warm-starting from the champion (early stopping still applies).")
@click.option("--warm-lr-scale", type=click.FloatRange(min=0.0, min_open=True), default=0.02, show_default=True,
              help="Fine-tuning learning rate as a multiple of the champion's training rate.")
@click.option("--cold", is_flag=True, help="Train the challenger from scratch with the champion's configuration.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="TOML [model]/[train] settings for the first champion (when none is published yet).")
@rating_scale_options("inbox files")
@pass_context
def retrain_command(obj: Context, inbox: str | None, margin: float, ndcg_margin: float, keep: int, warm_epochs: int,
                    warm_lr_scale: float, cold: bool, config_file: str | None, scale: tuple[float, float],
                    step: float) -> None:
    """Nightly job: ingest the inbox, retrain, publish the challenger only if it beats the champion.

    Takes a lock (a second run at the same time exits at once with code 75); moves each inbox file to
    inbox/processed/ or, with a FILE.reason.txt, to inbox/rejected/; exits 0 without training when no rating
    changed; otherwise fine-tunes the champion on the new data (and refits its ranker), compares both on the same
    fixed holdout, and publishes atomically when RMSE drops by at least --margin and NDCG@10 drops by at most
    --ndcg-margin. Prints one JSON summary line on stdout;
    `recae models history` lists past runs. With no champion yet, trains and publishes the first one.

    \b
    Examples:
      recae retrain
      recae retrain --inbox /srv/ratings/inbox --margin 0.002 --keep 5
      recae --home /var/lib/recae retrain >> /var/log/recae-retrain.jsonl
    """
    import json
    from pathlib import Path

    from recae.retrain.job import RetrainOptions, run_retrain

    model_cfg = train_cfg = None
    if config_file:
        from recae.models.autoencoders import model_config
        from recae.training.config import DEFAULT_MODEL, TrainConfig, load_config_file

        model_part, train_part = load_config_file(config_file)
        model_cfg = model_config(model_part.pop("name", DEFAULT_MODEL), **model_part)
        train_cfg = TrainConfig.from_json(train_part)
        model_cfg.validate()
        train_cfg.validate()
    paths = obj.paths()
    options = RetrainOptions(inbox=Path(inbox) if inbox else paths.home / "inbox", margin=margin,
                             ndcg_margin=ndcg_margin, keep=keep,
                             warm_epochs=warm_epochs, warm_lr_scale=warm_lr_scale, cold=cold, scale=scale,
                             step=step or None,
                             model_config=model_cfg, train_config=train_cfg)
    run_retrain(obj.engine(), paths.models_dir, paths.locks_dir, options,
                on_progress=lambda message: echo_info(f"retrain: {message}"),
                on_report=lambda report: echo_data(json.dumps(report.to_json(), separators=(",", ":"))))


@models.command("history")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs.")
@format_option
@pass_context
def models_history(obj: Context, limit: int, fmt: str) -> None:
    """Past `recae retrain` runs, newest first: files ingested, RMSEs, decision, duration.

    \b
    Examples:
      recae models history
      recae models history --limit 5 --format json
    """
    from recae.cli.output import render
    from recae.retrain.runs import run_history

    records = run_history(obj.engine(), limit)
    if not records:
        echo_info("no retrain runs yet; run `recae retrain`")
    if fmt == "json":
        echo_data(render([r.summary or r.row() for r in records], fmt))
    else:
        rows = [r.row() for r in records]
        if fmt == "table":  # the message is long; json and csv keep it
            rows = [{k: v for k, v in row.items() if k != "message"} for row in rows]
        echo_data(render(rows, fmt, title="Retrain runs"))


@cli.command()
@click.option("--movie", "movie_id", type=int, required=True, help="The film to find neighbours of.")
@click.option("-n", "n", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many films.")
@click.option("--model", "version", help="Model version (default: the champion).")
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
    from recae.serving.recommend import movie_details
    from recae.serving.registry import load_champion, load_version
    from recae.serving.similar import similar_movies

    engine = obj.engine()
    models_dir = obj.paths().models_dir
    trained = load_version(engine, version, models_dir) if version else load_champion(engine, models_dir)
    neighbours = similar_movies(trained, movie_id, n)
    details = movie_details(engine, [movie_id, *(s.movie_id for s in neighbours)])
    records = []
    for neighbour in neighbours:
        title, year, genres = details.get(neighbour.movie_id, (None, None, ""))
        records.append({"rank": neighbour.rank, "movie_id": neighbour.movie_id, "title": title, "year": year,
                        "genres": genres, "similarity": neighbour.similarity})
    query_title = details.get(movie_id, (None, None, ""))[0] or f"movie {movie_id}"
    echo_data(render(records, fmt, title=f"Films like {query_title}"))


def _load_model(obj: Context, version: str | None):  # type: ignore[no-untyped-def]
    """The engine and the asked-for version (default: the champion)."""
    from recae.serving.registry import load_champion, load_version

    engine, models_dir = obj.engine(), obj.paths().models_dir
    return engine, (load_version(engine, version, models_dir) if version else load_champion(engine, models_dir))


def _side_options(command: F) -> F:
    """``--users`` / ``--movies`` into one ``side`` parameter (default movies)."""
    command = click.option("--movies", "side", flag_value="movies", default=True,
                           help="Movies (the default).")(command)
    return click.option("--users", "side", flag_value="users", help="Users instead of movies.")(command)


def _png_option(default: str) -> Callable[[F], F]:
    return click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), default=default,
                        show_default=True, help="PNG file to write (replaced when complete).")


def _plot_summary(record: dict[str, Any], fmt: str, title: str) -> None:
    from recae.cli.output import render

    echo_data(render(record, fmt) if fmt == "json" else render(
        [{"field": k, "value": v} for k, v in record.items()], fmt, title=title))


@cli.group("plot")
def plot_group() -> None:
    """Draw PNG figures of a model: learning curves, the latent space, error by user activity.

    Needs matplotlib: pip install "recae[plot]". Each command prints what it drew on stdout.

    \b
    Examples:
      recae plot curves --out curves.png
      recae plot latent --movies --out movies.png
      recae plot errors --out errors.png
    """


@plot_group.command("curves")
@_png_option("curves.png")
@click.option("--model", "version", help="Model version (default: the champion).")
@format_option
@pass_context
def plot_curves_command(obj: Context, out: str, version: str | None, fmt: str) -> None:
    """Training loss and validation RMSE per epoch (one line per ensemble member; dot: the epoch kept).

    \b
    Examples:
      recae plot curves
      recae plot curves --model 20261123T101500000000Z-denoising-item --out run.png
    """
    from dataclasses import asdict

    from recae.insight.plots import check_png_path, plot_curves

    check_png_path(out)
    _, trained = _load_model(obj, version)
    drawn = plot_curves(trained.history, out, title=f"{trained.model_config.name} ({trained.orientation})")
    _plot_summary({**asdict(drawn.file), "members": drawn.members, "epochs": drawn.epochs,
                   "best_epoch": drawn.best_epoch, "best_val_rmse": drawn.best_val_rmse}, fmt, "plot curves")


@plot_group.command("latent")
@_side_options
@click.option("--colour", "--color", "colour", type=click.Choice(["auto", "genre", "activity", "mean-rating"]),
              default="auto", show_default=True,
              help="What colours the points: genre (movies; each film's least common genre), activity "
                   "(number of ratings), mean-rating; auto = genre for movies when known, else activity.")
@click.option("--genre", help="Colour films of this genre against the rest (e.g. Horror).")
@_png_option("latent.png")
@click.option("--model", "version", help="Model version (default: the champion).")
@format_option
@pass_context
def plot_latent_command(obj: Context, side: str, colour: str, genre: str | None, out: str, version: str | None,
                        fmt: str) -> None:
    """Users or movies in two dimensions from the model's latent codes, beside PCA of the raw ratings.

    The side the model encodes (movies for item models, users for user models) is shown from its code layer
    (as is when it has 2 units, else by its first two principal components); the other side from its rows of
    output weights. With categories (genres) each panel reports its 10-NN accuracy and silhouette: how well the
    map separates them. As in Hinton and Salakhutdinov (2006), Science 313:504.

    \b
    Examples:
      recae plot latent --out movies.png
      recae plot latent --movies --genre Horror --out horror.png
      recae plot latent --users --colour mean-rating --out users.png
    """
    from dataclasses import asdict

    from recae.insight.latent import colouring, latent_map, separation
    from recae.insight.plots import check_png_path, plot_latent

    check_png_path(out)
    engine, trained = _load_model(obj, version)
    latent = latent_map(trained, side)
    colours = colouring(engine, latent, colour, genre)
    if colours.note:
        echo_info(f"note: {colours.note}")
    scores = separation(latent, colours.values) if colours.categorical else None
    drawn = plot_latent(latent, colours, out, separation=scores)
    record: dict[str, Any] = {**asdict(drawn), "side": side, "points": int(latent.ids.size),
                              "source": latent.source, "code_dims": latent.code_dims, "colour": colours.name}
    if scores is not None:
        record.update({"knn_accuracy_autoencoder": scores.knn_autoencoder, "knn_accuracy_pca": scores.knn_pca,
                       "silhouette_autoencoder": scores.silhouette_autoencoder,
                       "silhouette_pca": scores.silhouette_pca, "scored_points": scores.n_points})
    _plot_summary(record, fmt, "plot latent")


@plot_group.command("errors")
@_png_option("errors.png")
@click.option("--model", "version", help="Model version (default: the champion).")
@format_option
@pass_context
def plot_errors_command(obj: Context, out: str, version: str | None, fmt: str) -> None:
    """Held-out RMSE by how many training ratings a user has (users with few ratings are the hard ones).

    Scores the model's own held-out ratings (its split, rebuilt from the store) and prints one row per bucket.

    \b
    Examples:
      recae plot errors
      recae plot errors --out errors.png --format csv
    """
    from dataclasses import asdict

    from recae.cli.output import render
    from recae.insight.plots import check_png_path, errors_by_activity, held_out_ratings, plot_errors

    check_png_path(out)
    engine, trained = _load_model(obj, version)
    buckets = errors_by_activity(trained, held_out_ratings(engine, trained))
    drawn = plot_errors(buckets, out)
    echo_info(f"wrote {drawn.path} ({drawn.bytes:,} bytes, {drawn.width}x{drawn.height})")
    rows = [{"ratings": b.label, **{k: v for k, v in asdict(b).items() if k not in ("low", "high")}}
            for b in buckets]
    echo_data(render(rows, fmt, title="Held-out error by user activity"))


@cli.command("anomalies")
@click.option("-n", "n", type=click.IntRange(1, 100_000), default=20, show_default=True, help="How many users.")
@click.option("--min-ratings", type=click.IntRange(min=1), default=20, show_default=True,
              help="Skip users with fewer training ratings (their error is too noisy to rank).")
@click.option("--model", "version", help="Model version (default: the champion).")
@format_option
@pass_context
def anomalies_command(obj: Context, n: int, min_ratings: int, version: str | None, fmt: str) -> None:
    """Users whose ratings the model rebuilds worst: candidate bots, shilling profiles or data errors.

    Each user's error is the RMSE of the model's reconstruction of their own training ratings; the z-score
    compares it with every user scored. A high score is a reason to look, not proof.

    \b
    Examples:
      recae anomalies
      recae anomalies -n 50 --min-ratings 50 --format csv
    """
    from dataclasses import asdict

    from recae.cli.output import render
    from recae.insight.anomalies import find_anomalies

    _, trained = _load_model(obj, version)
    found = find_anomalies(trained, n, min_ratings)
    echo_data(render([asdict(a) for a in found], fmt, title=f"Worst-rebuilt {len(found)} users"))


@cli.command("embed")
@_side_options
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True),
              help="FILE.csv or FILE.parquet (Parquet needs pyarrow); default SIDE-codes.csv.")
@click.option("--model", "version", help="Model version (default: the champion).")
@format_option
@pass_context
def embed_command(obj: Context, side: str, out: str | None, version: str | None, fmt: str) -> None:
    """Export the latent code of every user or movie (id, n_ratings, code_0..) for other tools.

    Codes come from the code layer for the side the model encodes (movies for item models) and from the
    output weights for the other side.

    \b
    Examples:
      recae embed --movies --out movie_codes.parquet
      recae embed --users --out user_codes.csv
    """
    from dataclasses import asdict

    from recae.insight.embed import export_codes, file_format

    target = out or f"{side}-codes.csv"
    file_format(target)
    _, trained = _load_model(obj, version)
    report = export_codes(trained, side, target)
    _plot_summary(asdict(report), fmt, "embed")


class _CountOrShare(click.ParamType):
    """A whole count >= 1, or a share strictly between 0 and 1."""

    name = "N|SHARE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a count (600) nor a share (0.1)", param, ctx)
        if not (0 < number < 1 or (number >= 1 and number == int(number))):
            self.fail(f"{value!r}: give a whole count >= 1 (600) or a share between 0 and 1 (0.1)", param, ctx)
        return number


@cli.command("vae")
@click.option("--heldout-users", "heldout", type=_CountOrShare(), default="0.1", show_default=True,
              help="Validation users, and again test users, never trained on: a count (600) or a share of users.")
@click.option("--threshold", type=float, default=3.5, show_default=True,
              help="A rating above this counts as a liked film (3.5: four stars and up).")
@click.option("--hide-fraction", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Share of each held-out user's liked films hidden and ranked (the rest read).")
@click.option("--epochs", type=click.IntRange(min=1), default=200, show_default=True,
              help="Most epochs (early stopping on validation NDCG@100 keeps the best).")
@click.option("--patience", type=click.IntRange(min=0), default=30, show_default=True,
              help="Stop after this many epochs without a better validation NDCG@100 (0: never).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the user split and training.")
@click.option("--batch-users", type=click.IntRange(min=1), default=500, show_default=True, help="Users per step.")
@click.option("--beta-cap", type=click.FloatRange(min=0.0), default=0.2, show_default=True,
              help="Largest weight of the KL term.")
@click.option("--anneal-steps", type=click.IntRange(min=0), default=200_000, show_default=True,
              help="Gradient steps over which the KL weight grows linearly from 0 to --beta-cap.")
@click.option("--hidden", type=click.IntRange(min=1), default=600, show_default=True, help="Hidden layer width.")
@click.option("--latent", type=click.IntRange(min=1), default=200, show_default=True, help="Latent dimension.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train.")
@click.option("--out", "out", type=click.Path(file_okay=False),
              help="New folder for the model (default: HOME/models/vae/<version>).")
@format_option
@pass_context
def vae_command(obj: Context, heldout: float, threshold: float, hide_fraction: float, epochs: int, patience: int,
                seed: int, batch_users: int, beta_cap: float, anneal_steps: int, hidden: int, latent: int,
                device: str, out: str | None, fmt: str) -> None:
    """Train Mult-VAE (Liang et al. 2018) for top-N on the liked films in the store; compare with popularity.

    Ratings above --threshold become clicks. Users are split into training, validation and test users; for
    each held-out user the model reads their clicks but a hidden --hide-fraction (20%) and ranks every other
    film. Prints Recall@20, Recall@100 (hits / min(k, hidden)), NDCG@20 and NDCG@100 on the test users for
    Mult-VAE and for ranking by popularity, and saves the model (safetensors + meta.json). Progress: stderr.

    \b
    Examples:
      recae vae                                     # 10% validation + 10% test users, 200 epochs at most
      recae vae --heldout-users 600 --epochs 100 --seed 1 --format json
      recae vae --beta-cap 0.3 --anneal-steps 2000 --out ./my-vae
    """
    from pathlib import Path

    from recae.cli.output import render
    from recae.models.multvae import (
        MultVAEConfig,
        MultVAETrainConfig,
        new_version_name,
        save_multvae,
        train_and_evaluate,
    )
    from recae.store.matrix import RatingMatrix

    config = MultVAEConfig(hidden=hidden, latent=latent)
    train_config = MultVAETrainConfig(epochs=epochs, patience=patience, seed=seed, batch_users=batch_users,
                                      beta_cap=beta_cap, total_anneal_steps=anneal_steps, device=device)
    config.validate()
    train_config.validate()
    matrix = RatingMatrix.from_db(obj.engine())

    def announce(split) -> None:  # type: ignore[no-untyped-def]
        echo_info(f"Mult-VAE: {split.train.shape[0]} training users ({split.train.nnz} liked films), "
                  f"{split.validation.n_users} validation and {split.test.n_users} test users, "
                  f"{split.n_items} films")

    with _train_progress(epochs, metric="val NDCG@100", label="Mult-VAE", fields=lambda r: (
            f"{r.loss:.2f}", f"{r.val_ndcg:.4f}", f"{r.best_val_ndcg:.4f}@{r.best_epoch}")) as (on_epoch, _):
        run = train_and_evaluate(matrix, threshold=threshold, heldout=heldout, hidden_fraction=hide_fraction,
                                 config=config, train_config=train_config, on_split=announce, on_epoch=on_epoch)
    folder = Path(out) if out else obj.paths().models_dir / "vae" / new_version_name()
    save_multvae(run.trained, folder)
    echo_info(f"best epoch {run.fit.best_epoch} of {len(run.fit.history)} "
              f"({run.fit.seconds_per_epoch:.2f} s/epoch); model saved in {folder}")
    echo_data(render(run.rows(), fmt, title=f"Top-N on {run.test.n_users} test users"))


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
    try:
        from recae.serving.http import serve
    except ImportError as err:
        raise click.ClickException(f"recae serve needs FastAPI and uvicorn: pip install 'recae[serve]' ({err})")
    paths = obj.paths()
    serve(paths.database_url, host=host, port=port, workers=workers, cors_origins=cors_origins,
          log_level=log_level, models_dir=str(paths.models_dir))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="recae")
