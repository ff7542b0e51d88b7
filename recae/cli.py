"""The ``recae`` command line: a thin click layer; each command calls one library function.

Exit codes: 0 ok, 1 error, 2 usage, 65 bad input data, 75 another run holds the lock.
"""

from __future__ import annotations

import logging
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


@dataclass(frozen=True)
class Context:
    """What every command needs: where the store and models live, and how verbose to be."""

    home: str | None
    db_url: str | None
    verbose: int

    def paths(self):  # type: ignore[no-untyped-def]
        from recae.config import resolve_paths

        return resolve_paths(self.home, self.db_url)

    def engine(self):  # type: ignore[no-untyped-def]
        from recae.db import open_store

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
              help="SQLAlchemy database URL (env RECAE_DATABASE_URL; default: sqlite in --home).")
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
    from recae.db import current_revision, make_engine, upgrade

    engine = make_engine(obj.paths().database_url)
    upgrade(engine)
    echo_info(f"store at schema revision {current_revision(engine)}: {engine.url.render_as_string()}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="recae")
