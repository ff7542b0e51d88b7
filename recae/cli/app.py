"""The ``recae`` group: global options, the context every command receives, and the error boundary.

The boundary turns library errors into one line on stderr and a documented exit code, never a traceback (``-v``
shows it). The command modules register on ``cli``; this module imports none of them, so there is no loop: the
group imports a command's module by name only when that command is asked for (``COMMANDS``), so that
``recae --help`` and ``recae recommend --user 42`` pay for no module they do not run.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from recae import __version__
from recae.errors import EXIT_ERROR, RecaeError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from recae.artifacts.trained_model import TrainedModel
    from recae.paths import Paths

EXIT_CODES_HELP = "Exit codes: 0 ok, 1 error, 2 usage, 65 bad input data, 75 another run holds the lock."


@dataclass(frozen=True)
class Context:
    """What every command needs: where the store and models live, and how verbose to be."""

    home: str | None
    db_url: str | None
    verbose: int

    def paths(self) -> Paths:
        from recae.paths import resolve_paths

        return resolve_paths(self.home, self.db_url)

    def engine(self) -> Engine:
        from recae.store.db import open_store

        return open_store(self.paths().database_url)

    def load_model(self, version: str | None) -> tuple[Engine, TrainedModel]:
        """The engine and the asked-for version (default: the champion)."""
        from recae.serving.registry import load_champion, load_version

        engine, models_dir = self.engine(), self.paths().models_dir
        return engine, (load_version(engine, version, models_dir) if version else load_champion(engine, models_dir))


pass_context = click.make_pass_decorator(Context)


def echo_data(text: str) -> None:
    """Print data on stdout."""
    click.echo(text)


def echo_info(text: str) -> None:
    """Print a human message on stderr (never mixed into data)."""
    click.echo(text, err=True)


#: Every top-level command: the modules that define it (importing them registers it on ``cli``) and its short help,
#: so that ``recae --help`` lists the commands without importing them. tests/cli/test_cli_lazy.py checks this table
#: against what the modules register. ``models history`` lives in retrain.py, so ``models`` needs both.
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "anomalies": (("recae.cli.insight",), "Users whose ratings the model rebuilds worst: candidate bots, shilling "
                                           "profiles or data errors."),
    "db": (("recae.cli.data",), "Manage the store's schema."),
    "embed": (("recae.cli.insight",), "Export the latent code of every user or movie (id, n_ratings, code_0..) for "
                                      "other tools."),
    "evaluate": (("recae.cli.train",), "RMSE and MAE on the held-out ratings of the model's own split, beside the "
                                       "baselines."),
    "ingest": (("recae.cli.data",), "Load a MovieLens DATASET or a plain ratings CSV into the store (all or nothing; "
                                    "re-runs change nothing)."),
    "models": (("recae.cli.models", "recae.cli.retrain"), "See the published models, choose which one serves, prune "
                                                          "old or orphaned ones."),
    "plot": (("recae.cli.insight",), "Draw PNG figures of a model: learning curves, the latent space, error by user "
                                     "activity."),
    "quickstart": (("recae.cli.train",), "Ingest MovieLens 100K, train the default model on fold u1, evaluate it "
                                         "beside the baselines, recommend."),
    "recommend": (("recae.cli.serve",), "Recommend the films a user has not rated, in the ranker's order, with the "
                                        "predicted rating of each."),
    "retrain": (("recae.cli.retrain",), "Nightly job: ingest the inbox, retrain, publish the challenger only if it "
                                        "beats the champion."),
    "serve": (("recae.cli.serve",), "Serve recommendations over HTTP (JSON API, OpenAPI at /openapi.json) and a web "
                                    "page at /."),
    "similar": (("recae.cli.serve",), "Films nearest to a film in the model's learned latent space (cosine "
                                      "similarity)."),
    "synth": (("recae.cli.data",), "Write synthetic ratings shaped like MovieLens to a plain CSV that `recae ingest "
                                   "--ratings` loads."),
    "train": (("recae.cli.train",), "Train an autoencoder on the store's ratings, evaluate it on the split's test "
                                    "part, and publish it."),
    "vae": (("recae.cli.train",), "Train Mult-VAE (Liang et al."),  # click's short help stops at "al."
}


def load_all_commands() -> None:
    """Import every command module (what tests and tools that walk the whole tree need)."""
    for modules, _ in COMMANDS.values():
        for module in modules:
            importlib.import_module(module)


class RecaeGroup(click.Group):
    """Loads a command's module only when that command runs (or shows its own help), lists the commands from
    ``COMMANDS`` without loading any, and turns RecaeError into its one-line message and exit code; ``-v`` shows
    the traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            for module in COMMANDS[cmd_name][0]:
                importlib.import_module(module)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's own listing, with the short help of a command not loaded yet taken from ``COMMANDS``."""
        names = self.list_commands(ctx)
        loaded = {name: self.commands[name] for name in names if name in self.commands}
        names = [name for name in names if name not in loaded or not loaded[name].hidden]
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        shown = {name: loaded.get(name) or click.Command(name, help=COMMANDS[name][1]) for name in names}
        rows = [(name, command.get_short_help_str(limit)) for name, command in shown.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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

            known = store_error(err, _store_path(ctx))  # busy, read-only, full: one line, never SQL or values
            if known is not None:
                if _verbosity(ctx) > 0:
                    logging.getLogger("recae").exception("failed")
                click.echo(f"Error: {known}", err=True)
                ctx.exit(known.exit_code)
            if _verbosity(ctx) > 0:
                raise
            click.echo(f"Error: {type(err).__name__}: {err} (run with -v for the traceback)", err=True)
            ctx.exit(EXIT_ERROR)


def _store_path(ctx: click.Context) -> Path | None:
    """The store's SQLite file, else its home: where a full disk is reported."""
    obj = ctx.find_object(Context)
    try:
        paths = obj.paths() if obj else None
    except Exception:  # noqa: BLE001 - only a hint for a message
        return None
    if paths is None:
        return None
    database = paths.database_url.removeprefix("sqlite:///")
    return Path(database) if database != paths.database_url else paths.home


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


def main() -> None:
    """Console-script entry point (``recae.cli:main``)."""
    cli(prog_name="recae")
