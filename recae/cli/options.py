"""Options, parameter types and argument checks that several commands share.

Torch-free: choices that come from a registry behind torch (the models) are read when first needed (help,
parsing), so that starting the command line stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from recae.cli.output import FORMATS, SUMMARY_FORMATS

F = TypeVar("F", bound=Callable[..., Any])

format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
    help="How to print the result on stdout.",
)
summary_format_option = click.option(
    "--format", "fmt", type=click.Choice(SUMMARY_FORMATS), default="table", show_default=True,
    help="How to print the summary on stdout.",
)


def version_option(help_text: str = "Model version (default: the champion).") -> Callable[[F], F]:
    """``--model VERSION``: which published version a command reads."""
    return click.option("--model", "version", help=help_text)


def rating_scale_options(what: str) -> Callable[[F], F]:
    """``--scale LOW HIGH`` and ``--step`` for plain ratings files (``what`` names them in the help)."""

    def decorate(command: F) -> F:
        command = click.option("--step", type=float, default=0.5, show_default=True,
                               help=f"Allowed increment above LOW in {what} (0 allows any value).")(command)
        return click.option("--scale", nargs=2, type=float, default=(0.5, 5.0), show_default=True,
                            metavar="LOW HIGH", help=f"Allowed ratings in {what}.")(command)

    return decorate


def side_options(command: F) -> F:
    """``--users`` / ``--movies`` into one ``side`` parameter (default movies)."""
    command = click.option("--movies", "side", flag_value="movies", default=True,
                           help="Movies (the default).")(command)
    return click.option("--users", "side", flag_value="users", help="Users instead of movies.")(command)


def png_option(default: str) -> Callable[[F], F]:
    """``--out FILE.png`` with a default name."""
    return click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), default=default,
                        show_default=True, help="PNG file to write (replaced when complete).")


class LazyChoice(click.Choice):
    """A click.Choice whose choices come from ``load`` the first time they are needed (help, parsing, completion).

    The split names live beside numpy-heavy code; reading them at import would slow every command's start.
    """

    def __init__(self, load: Callable[[], Iterable[str]], case_sensitive: bool = True) -> None:
        self._load = load
        self._choices: tuple[str, ...] | None = None
        self.case_sensitive = case_sensitive

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        if self._choices is None:
            self._choices = tuple(self._load())
        return self._choices


def split_names() -> tuple[str, ...]:
    """The splits ``--split`` can generate or read: recae.evaluation.splits' generated splits and canonical folds."""
    from recae.evaluation.splits import CANONICAL_FOLDS, GENERATED_SPLITS

    return GENERATED_SPLITS + CANONICAL_FOLDS


class CountOrShare(click.ParamType):
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


def parse_rate(values: tuple[str, ...]) -> dict[int, float]:
    """``--rate MOVIE_ID=RATING`` values -> {movie_id: rating}; a usage error names the bad one."""
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


def parse_ids(values: tuple[str, ...]) -> tuple[int, ...]:
    """``--exclude`` values (repeated or comma-separated) -> movie ids."""
    try:
        return tuple(int(v) for value in values for v in value.replace(",", " ").split())
    except ValueError:
        message = f"movie ids must be integers, got {' '.join(values)!r}"
        raise click.BadParameter(message, param_hint="--exclude") from None


def refuse_with(flag: str, *others: tuple[str, str]) -> None:
    """Usage error when any of ``others`` (parameter name, flag) was given on the command line beside ``flag``."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = [shown for name, shown in others if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)]
    if given:
        raise click.UsageError(f"{flag} does not go with {given[0]}: the file is the test set")
