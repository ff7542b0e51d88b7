"""Errors a user can act on, each with the process exit code the CLI turns it into.

Only ``recae.cli`` converts these into exits; library code raises them and never prints.

Exit codes (also documented in ``recae --help``):
    0  success
    1  error (no model, unknown user, corrupt artifact, ...)
    2  usage error (bad flags; click's own code)
    65 bad input data (malformed file, rating out of scale); ``EX_DATAERR`` from sysexits.h
    75 another run holds the lock; try again later (``EX_TEMPFAIL``)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DATA = 65
EXIT_LOCKED = 75


class RecaeError(Exception):
    """Base class: a one-line message meant for the user, and an exit code.

    Example:
        >>> try:
        ...     model.recommend(user=999999)
        ... except recae.RecaeError as err:
        ...     print(err.exit_code, err)
        1 user 999999 is unknown; known users are 1..150 (150 users)
    """

    exit_code: int = EXIT_ERROR


class DataError(RecaeError):
    """Input data is malformed or out of range; the message names file and line (a DataFrame's row).

    Example:
        >>> store.ingest(ratings.assign(rating=7))
        Traceback (most recent call last):
        recae.errors.DataError: ratings row 0 (index 0): rating 7 is not on the scale (every 0.5 on 0.5..5); ...
    """

    exit_code = EXIT_DATA


class ArgumentError(RecaeError, ValueError):
    """A Python API call got a value it does not take (an unknown split, source or option); the CLI's usage error.

    Example:
        >>> store.train(split="u9")
        Traceback (most recent call last):
        recae.errors.ArgumentError: unknown split 'u9'; choose one of random, per-user, temporal, ...
    """

    exit_code = EXIT_USAGE


class DownloadError(RecaeError):
    """A dataset could not be fetched or failed its checksum."""


class UnknownUserError(RecaeError):
    """A user id is not in the store or not in the model.

    Example:
        >>> model.recommend(user=999999)
        Traceback (most recent call last):
        recae.errors.UnknownUserError: user 999999 is unknown; known users are 1..150 (150 users)
    """


class UnknownMovieError(RecaeError):
    """A movie id is not in the catalogue or not in the model.

    Example:
        >>> model.similar(movie=999999)
        Traceback (most recent call last):
        recae.errors.UnknownMovieError: movie 999999 is unknown; known movies are 1..120
    """


class UnknownGenreError(RecaeError):
    """A genre filter names no genre of the catalogue."""


class ModelNotFoundError(RecaeError):
    """No trained model (or not the requested version) is published.

    Example:
        >>> store.model("20200101-000000-denoising")
        Traceback (most recent call last):
        recae.errors.ModelNotFoundError: model version '20200101-000000-denoising' is unknown; published versions: ...
    """


class CorruptArtifactError(RecaeError):
    """Model files on disk are missing, truncated or inconsistent with their metadata."""


class EmptyStoreError(RecaeError):
    """The store holds no ratings yet."""


class TrainingError(RecaeError):
    """Training diverged (NaN loss) or could not start: a bad or unknown setting among them.

    Example:
        >>> store.train(epoch=3)
        Traceback (most recent call last):
        recae.settings.UnknownSettingError: unknown setting 'epoch'; known settings are activation, ...
    """


class LockHeldError(RecaeError):
    """Another run holds the lock."""

    exit_code = EXIT_LOCKED


STORE_BUSY = "the store is busy: another process (a retrain, an ingest, a training) is writing to it"


class StoreBusyError(LockHeldError):
    """Another process held the store's write lock longer than the busy timeout; nothing was written."""
