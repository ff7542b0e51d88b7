"""Ratings as pandas DataFrames (or a scipy sparse matrix): the columns the Python API reads and writes.

A DataFrame of ratings is checked here, naming its row, then written as the CSV ``recae ingest --ratings`` reads
and ingested by that one path (``recae.store.ingest.ingest_ratings_file``): a notebook's ratings are validated
and stored exactly as a file's. Columns are ``user_id, movie_id, rating[, timestamp]`` (the CSV's header); ``user``
and ``movie`` are read as their ``_id`` names. A sparse matrix is users x films: row ``i`` is user ``i + 1``,
column ``j`` film ``j + 1`` (ids start at 1, as MovieLens's do), each stored value a rating.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recae.errors import ArgumentError, DataError
from recae.store.parse import MAX_ID, MAX_TIMESTAMP

RATING_COLUMNS = ("user_id", "movie_id", "rating")
ALIASES = {"user": "user_id", "movie": "movie_id"}
#: A half-star scale, as ``recae ingest --ratings`` takes by default.
DEFAULT_SCALE, DEFAULT_STEP = (0.5, 5.0), 0.5


def frame_from_matrix(matrix: Any) -> pd.DataFrame:
    """A users x films sparse matrix as ratings: row ``i`` is user ``i + 1``, column ``j`` film ``j + 1``."""
    coo = sp.coo_matrix(matrix)
    return pd.DataFrame({"user_id": coo.row.astype(np.int64) + 1, "movie_id": coo.col.astype(np.int64) + 1,
                         "rating": coo.data.astype(np.float64)})


def _named(data: Any, what: str, needed: tuple[str, ...]) -> pd.DataFrame:
    """``data`` as a DataFrame with the ``_id`` column names; DataError naming a missing column."""
    if sp.issparse(data):
        data = frame_from_matrix(data)
    if not isinstance(data, pd.DataFrame):
        raise ArgumentError(f"{what} must be a pandas DataFrame or a scipy sparse matrix, not {type(data).__name__}")
    frame = data.rename(columns={old: new for old, new in ALIASES.items()
                                 if old in data.columns and new not in data.columns})
    for column in needed:
        if column not in frame.columns:
            has = ", ".join(map(str, data.columns)) or "none"
            raise DataError(f"{what} has no {column!r} column (columns: {has}); expected "
                            f"{', '.join(needed)}{'[, timestamp]' if 'rating' in needed else ''}")
    if frame.empty:
        raise DataError(f"{what} has no rows")
    return frame


def _bad_row(what: str, frame: pd.DataFrame, bad: np.ndarray, reason: str | Callable[[int], str]) -> DataError:
    """DataError naming the first flagged row by position and index label, and why (``reason(position)``)."""
    at = int(np.flatnonzero(bad)[0])
    return DataError(f"{what} row {at} (index {frame.index[at]!r}): {reason(at) if callable(reason) else reason}")


def _ids(frame: pd.DataFrame, column: str, what: str) -> np.ndarray:
    """(n,) int64 ids of a column; DataError naming the first row that is not an integer in 1..MAX_ID."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values != np.floor(values)) | (values < 1) | (values > MAX_ID)
    if bad.any():
        raise _bad_row(what, frame, bad, lambda at: f"{column} {frame[column].iloc[at]!r} is not an integer in "
                                                    f"1..{MAX_ID}")
    return values.astype(np.int64)


def ratings_frame(data: Any, what: str = "ratings", scale: tuple[float, float] = DEFAULT_SCALE,
                  step: float | None = DEFAULT_STEP) -> pd.DataFrame:
    """``data`` checked as ratings on ``scale`` (every ``step`` from its low end; None: any value), as a new
    DataFrame of ``user_id``, ``movie_id`` (int64), ``rating`` (float64) and ``timestamp`` (Int64, missing allowed).

    Raises DataError in one line naming the row and the value (a missing column, an id that is not a whole number
    from 1, a rating off the scale), ArgumentError when ``data`` is not a DataFrame or sparse matrix.
    """
    low, high = float(scale[0]), float(scale[1])
    if not low < high:
        raise ArgumentError(f"rating scale {low:g}..{high:g} is empty; give scale=(low, high) with low < high")
    frame = _named(data, what, RATING_COLUMNS)
    users, movies = _ids(frame, "user_id", what), _ids(frame, "movie_id", what)
    ratings = pd.to_numeric(frame["rating"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        off = ~np.isfinite(ratings) | (ratings < low) | (ratings > high)
        if step:
            steps = (ratings - low) / step
            off |= np.abs(steps - np.round(steps)) > 1e-9
    if off.any():
        on = f"every {step:g} on {low:g}..{high:g}" if step else f"{low:g}..{high:g}"
        raise _bad_row(what, frame, off, lambda at: f"rating {ratings[at]:g} is not on the scale ({on}); "
                                                    "pass scale=(low, high) and step= for another scale")
    out = pd.DataFrame({"user_id": users, "movie_id": movies, "rating": ratings})
    if "timestamp" in frame.columns:
        stamps = pd.to_numeric(frame["timestamp"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            bad = ~np.isnan(stamps) & ((stamps < 0) | (stamps >= MAX_TIMESTAMP) | (stamps != np.floor(stamps)))
        if bad.any():
            raise _bad_row(what, frame, bad, "timestamp is not a whole number of seconds >= 0")
        out["timestamp"] = pd.array(np.where(np.isnan(stamps), 0, stamps).astype(np.int64), dtype="Int64")
        out.loc[np.isnan(stamps), "timestamp"] = pd.NA
    return out


def pairs_frame(data: Any, what: str = "pairs") -> pd.DataFrame:
    """(user_id, movie_id) pairs to predict: ``data``'s columns (other columns kept), ids checked as integers."""
    frame = _named(data, what, ("user_id", "movie_id")).copy()
    frame["user_id"], frame["movie_id"] = _ids(frame, "user_id", what), _ids(frame, "movie_id", what)
    return frame.reset_index(drop=True)


def write_ratings_csv(frame: pd.DataFrame, path: Path) -> Path:
    """A checked ratings frame (``ratings_frame``) as the ``user_id,movie_id,rating[,timestamp]`` CSV that
    ``recae ingest --ratings`` reads, with a header."""
    columns = [c for c in (*RATING_COLUMNS, "timestamp") if c in frame.columns]
    frame.to_csv(path, columns=columns, index=False, float_format="%.10g")
    return path
