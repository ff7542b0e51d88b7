"""Parse and validate ratings and catalogue files: every reject names its exact file and line.

Ratings are parsed in blocks of whole lines with pandas' C parser (explicit dtypes) and checked with numpy;
a block that does not parse cleanly is re-read line by line, so every reject names its exact file and line.
Memory stays bounded whatever a file holds: blocks of ``BLOCK_BYTES``, lines of at most ``MAX_LINE_BYTES``.
Nothing here touches the store (``recae.store.ingest`` loads what this yields; ``recae.store.writers`` writes it).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from recae.errors import DataError
from recae.store.datasets import DatasetFormat, DataSource, RatingScale

MAX_ID = 2**31 - 1  # ids must fit a 32-bit INTEGER (PostgreSQL)
MAX_TIMESTAMP = 2**53
BLOCK_BYTES = 16 << 20  # ~700k ratings lines per parsed block
#: Longest ratings line read (MovieLens lines are under 64 bytes): a file without line breaks is refused after this
#: many bytes instead of being held whole in memory (a 157 KB zip can expand to a 100 MB line-less u.data).
MAX_LINE_BYTES = 1 << 16
REJECTS_KEPT = 10
YEAR_AT_END = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{4})?\)\s*$")
#: The one rule for ids and timestamps, on every line and both parse paths: ASCII digits only (``1e1``, ``1.0``,
#: ``+1`` or a non-ASCII digit is not an integer id); ratings are ASCII decimal numbers (no ``_``, no other digits).
INTEGER = re.compile(r"[0-9]+")
DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
#: Bytes the fast path lets through in the id and timestamp fields: digits and blanks (stripped, as the slow path does).
_INTEGER_FIELD_TEXT = b"0123456789 \t\r\n"
_INTEGER_FIELD_BYTES = np.zeros(256, dtype=bool)
_INTEGER_FIELD_BYTES[np.frombuffer(_INTEGER_FIELD_TEXT, dtype=np.uint8)] = True


@dataclass(frozen=True)
class Reject:
    """One refused input line."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file} line {self.line}: {self.reason}"


@dataclass
class RejectLog:
    """The rejects of one ingest: under --skip-bad counted, the first REJECTS_KEPT kept for the report."""

    skip_bad: bool
    count: int = 0
    first: list[Reject] = field(default_factory=list)

    def add(self, reject: Reject) -> None:
        """Keep the reject under --skip-bad; otherwise it ends the ingest."""
        if not self.skip_bad:
            raise DataError(str(reject))
        self.count += 1
        if len(self.first) < REJECTS_KEPT:
            self.first.append(reject)


@dataclass(frozen=True)
class RatingsLayout:
    """How to read one ratings file: separator, number of fields, scale, and whether a timestamp is required."""

    label: str
    sep: str
    n_fields: int
    scale: RatingScale
    timestamp_required: bool


@dataclass(frozen=True)
class RatingsChunk:
    """The valid ratings of one parsed block, in file order: what ``recae.store.writers`` takes."""

    user_id: np.ndarray  # (n,) int64
    movie_id: np.ndarray  # (n,) int64
    rating: np.ndarray  # (n,) float64
    timestamp: np.ndarray  # (n,) float64, NaN = unknown
    line: np.ndarray  # (n,) int64, the file line each rating came from (for messages about one rating)

    def rows(self) -> Iterator[tuple[int, int, float, int | None]]:
        """DBAPI tuples; timestamp None where unknown."""
        ts = self.timestamp
        unknown = np.isnan(ts)
        if unknown.any():
            ts_list = ts.astype(object)
            ts_list[unknown] = None
            ts_list[~unknown] = ts[~unknown].astype(np.int64).tolist()
            stamps = ts_list.tolist()
        else:
            stamps = ts.astype(np.int64).tolist()
        return zip(self.user_id.tolist(), self.movie_id.tolist(), self.rating.tolist(), stamps)


def _blocks(stream: BinaryIO, on_bytes: Callable[[int], None], label: str) -> Iterator[bytes]:
    """Whole-line blocks of about BLOCK_BYTES, each ending in a newline; DataError (nothing more read) when a line
    grows past MAX_LINE_BYTES, so memory stays bounded whatever the file holds."""
    rest = b""
    lines = 0
    while data := stream.read(BLOCK_BYTES):
        on_bytes(len(data))
        data = rest + data
        cut = data.rfind(b"\n") + 1
        if cut:
            lines += data.count(b"\n", 0, cut)
            yield data[:cut]
        rest = data[cut:]
        if len(rest) > MAX_LINE_BYTES:
            raise DataError(f"{label} line {lines + 1}: longer than {MAX_LINE_BYTES:,} bytes without a line break; "
                            "not a ratings file (one rating per line)")
    if rest:
        yield rest + b"\n"


def _fields(line: str, sep: str) -> list[str]:
    """The fields of one line; ValueError saying why when it is not a line of ``sep``-separated values."""
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"the line is longer than {MAX_LINE_BYTES:,} characters")
    if "\r" in line:
        raise ValueError("a carriage return inside the line (bare-CR line endings?); use LF or CRLF line endings")
    if sep == ",":
        try:
            return next(csv.reader([line]), [])
        except csv.Error as err:
            raise ValueError(f"not a CSV line ({err})") from None
    return line.split(sep)


def _is_number(value: str) -> bool:
    try:
        float(value.strip().strip('"'))
    except ValueError:
        return False
    return True


def _check_line(line: str, layout: RatingsLayout) -> tuple[int, int, float, float] | str:
    """Values of one ratings line, or the reason it is refused (the slow, exact path)."""
    try:
        parts = [p.strip() for p in _fields(line, layout.sep)]
    except ValueError as err:
        return str(err)
    n_ok = len(parts) == layout.n_fields or (len(parts) == 3 and not layout.timestamp_required)
    if not n_ok:
        expected = f"{layout.n_fields}" if layout.timestamp_required else "3 or 4"
        return f"expected {expected} fields separated by {layout.sep!r}, found {len(parts)}"
    ids = []
    for name, value in (("user id", parts[0]), ("movie id", parts[1])):
        if not INTEGER.fullmatch(value) or not 1 <= int(value) <= MAX_ID:
            return f"{name} {value!r} is not an integer in 1..{MAX_ID}"
        ids.append(int(value))
    if not DECIMAL.fullmatch(parts[2]):
        return f"rating {parts[2]!r} is not a number"
    rating = float(parts[2])
    scale = layout.scale
    if not np.isfinite(rating) or not scale.low <= rating <= scale.high:
        return f"rating {parts[2]} is outside {scale.describe()}"
    steps = (rating - scale.low) / scale.step if scale.step else 0.0
    if abs(steps - round(steps)) > 1e-9:
        return f"rating {parts[2]} is not a step of {scale.step:g} on {scale.describe()}"
    stamp = parts[3] if len(parts) > 3 else ""
    if stamp == "":
        if layout.timestamp_required:
            return "timestamp is missing"
        return ids[0], ids[1], rating, float("nan")
    if not INTEGER.fullmatch(stamp) or int(stamp) >= MAX_TIMESTAMP:
        return f"timestamp {stamp!r} is not a whole number of seconds >= 0"
    return ids[0], ids[1], rating, float(stamp) if int(stamp) else float("nan")


def _slow_block(lines: list[str], first_line: int, layout: RatingsLayout,
                rejects: RejectLog) -> tuple[RatingsChunk, int]:
    values: list[tuple[int, int, float, float]] = []
    numbers: list[int] = []
    n_read = 0
    for offset, line in enumerate(lines):
        if not line.strip():
            continue
        n_read += 1
        parsed = _check_line(line.rstrip("\r"), layout)
        if isinstance(parsed, str):
            rejects.add(Reject(layout.label, first_line + offset, parsed))
        else:
            values.append(parsed)
            numbers.append(first_line + offset)
    arr = np.array(values, dtype=np.float64).reshape(-1, 4)
    return RatingsChunk(arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2], arr[:, 3],
                        np.asarray(numbers, dtype=np.int64)), n_read


def _integer_fields_plain(data: bytes, sep: str) -> bool:
    """True when every byte outside the rating (the third field) is a digit, a blank, ``sep`` or a line end.

    pandas reads ``1e1``, ``1.0``, ``+1`` or ``NA`` into an int64 or float64 column; the line-by-line rule does
    not. A block where such a byte sits in an id or timestamp field goes the slow way, so one rule judges every
    line. Cost: one table lookup per byte, then two binary searches per remaining byte (about one per line when
    ratings have a decimal point).
    """
    rest = data.translate(None, _INTEGER_FIELD_TEXT + sep.encode())
    if not rest:
        return True  # digits, blanks and separators only (integer ratings): no byte needs placing
    codes = np.frombuffer(data, dtype=np.uint8)
    if rest.count(b".") == len(rest):  # the usual half-star file: only decimal points to place
        odd = np.flatnonzero(codes == ord("."))
    else:
        odd = np.flatnonzero(~_INTEGER_FIELD_BYTES[codes] & (codes != ord(sep)))
    seps = np.flatnonzero(codes == ord(sep))
    ends = np.flatnonzero(codes == ord("\n"))
    line = np.searchsorted(ends, odd)  # the line of each odd byte; its start is one past the previous line end
    starts = np.where(line > 0, ends[np.maximum(line - 1, 0)] + 1, 0)
    field = np.searchsorted(seps, odd) - np.searchsorted(seps, starts)
    return bool(np.all(field == 2))


def _fast_block(block: bytes, n_lines: int, layout: RatingsLayout) -> pd.DataFrame | None:
    """The block parsed by pandas with explicit dtypes, or None when it needs the line-by-line path."""
    data, sep = (block.replace(b"::", b"\t"), "\t") if layout.sep == "::" else (block, layout.sep)
    if not _integer_fields_plain(data, sep):
        return None
    dtypes = {0: np.int64, 1: np.int64, 2: np.float64, 3: np.float64}
    try:
        frame = pd.read_csv(io.BytesIO(data), sep=sep, header=None, dtype=dtypes, engine="c", quoting=csv.QUOTE_NONE,
                            skip_blank_lines=False)
    except (ValueError, pd.errors.ParserError, OverflowError):
        return None
    if len(frame) != n_lines or frame.shape[1] not in (layout.n_fields, 3 if not layout.timestamp_required else -1):
        return None
    return frame


def _valid_mask(user: np.ndarray, movie: np.ndarray, rating: np.ndarray, ts: np.ndarray,
                layout: RatingsLayout) -> np.ndarray:
    """Vectorised form of ``_check_line``: True where a row is acceptable."""
    scale = layout.scale
    ok = (user >= 1) & (user <= MAX_ID) & (movie >= 1) & (movie <= MAX_ID)
    with np.errstate(invalid="ignore"):
        ok &= np.isfinite(rating) & (rating >= scale.low) & (rating <= scale.high)
        if scale.step is not None:
            steps = (rating - scale.low) / scale.step
            ok &= np.abs(steps - np.round(steps)) <= 1e-9
        known = ~np.isnan(ts)
        ok &= ~known | ((ts >= 0) & (ts < MAX_TIMESTAMP) & (ts == np.floor(ts)))
    if layout.timestamp_required:
        ok &= known
    return ok


def read_ratings(stream: BinaryIO, layout: RatingsLayout, rejects: RejectLog, *, header: bool | None,
                 on_bytes: Callable[[int], None] = lambda n: None) -> Iterator[tuple[RatingsChunk, int]]:
    """Yield (valid ratings, lines read) per block. ``header`` None: a first line whose id is not a number."""
    next_line = 1
    for block in _blocks(stream, on_bytes, layout.label):
        if next_line == 1:
            block = block.removeprefix(b"\xef\xbb\xbf")
            first = block.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r").strip()
            try:
                looks_like_header = not any(_is_number(f) for f in _fields(first, layout.sep))
            except ValueError as err:
                raise DataError(f"{layout.label} line 1: {err}") from None
            if header and not looks_like_header:
                raise DataError(f"{layout.label} line 1: expected a header line, found {first[:80]!r}")
            if header or (header is None and looks_like_header):
                block = block.split(b"\n", 1)[1]
                next_line = 2
        n_lines = block.count(b"\n")
        if n_lines == 0:
            continue
        frame = _fast_block(block, n_lines, layout)
        if frame is None:
            lines = block.decode("utf-8", "replace").split("\n")[:n_lines]
            yield _slow_block(lines, next_line, layout, rejects)
        else:
            user, movie, rating = (frame[i].to_numpy() for i in range(3))
            ts = frame[3].to_numpy() if frame.shape[1] > 3 else np.full(len(frame), np.nan)
            ok = _valid_mask(user, movie, rating, ts, layout)
            if not ok.all():
                lines = block.split(b"\n")
                for row in np.flatnonzero(~ok):
                    reason = _check_line(lines[row].decode("utf-8", "replace").rstrip("\r"), layout)
                    rejects.add(Reject(layout.label, next_line + int(row), reason if isinstance(reason, str)
                                       else "value out of range"))
            ts = np.where(ts == 0, np.nan, ts)
            yield RatingsChunk(user[ok], movie[ok], rating[ok], ts[ok], next_line + np.flatnonzero(ok)), n_lines
        next_line += n_lines


def parse_year(title: str) -> int | None:
    """Year from a title ending in ``(1995)``; None when absent. The title itself is kept as is."""
    match = YEAR_AT_END.search(title)
    return int(match.group(1)) if match else None


def read_movies(source: DataSource, fmt: DatasetFormat, rejects: RejectLog) -> list[dict[str, object]]:
    """Catalogue rows (movie_id, title, year, genres) from the dataset's movies file."""
    genre_names: list[str] = []
    if fmt.genre_file:
        with source.open(fmt.genre_file) as stream:
            for line in stream.read().decode(fmt.encoding).splitlines():
                if line.strip():
                    genre_names.append(line.rsplit("|", 1)[0])
    with source.open(fmt.movies_file) as stream:
        content = stream.read().decode(fmt.encoding)
    if fmt.movies_kind == "csv":
        records: Iterator[list[str]] = csv.reader(io.StringIO(content, newline=""))
    else:
        records = (line.rstrip("\r").split(fmt.movies_sep) if line.strip() else [] for line in content.split("\n"))
    movies: list[dict[str, object]] = []
    expected = 5 + len(genre_names) if fmt.movies_kind == "item" else 3
    for number, parts in enumerate(records, start=1):
        if not parts or (number == 1 and fmt.header):
            continue
        if len(parts) != expected:
            rejects.add(Reject(fmt.movies_file, number, f"expected {expected} fields, found {len(parts)}"))
            continue
        if not INTEGER.fullmatch(parts[0]) or not 1 <= int(parts[0]) <= MAX_ID:
            rejects.add(Reject(fmt.movies_file, number, f"movie id {parts[0]!r} is not an integer in 1..{MAX_ID}"))
            continue
        if fmt.movies_kind == "item":
            genres = "|".join(name for name, flag in zip(genre_names, parts[5:]) if flag.strip() == "1")
        else:
            genres = parts[2]
        movies.append({"movie_id": int(parts[0]), "title": parts[1], "year": parse_year(parts[1]), "genres": genres})
    return movies


def plain_file_layout(path: str | Path, scale: RatingScale) -> tuple[Path, RatingsLayout]:
    """The file and its layout after a look at line 1: DataError unless it is a 3- or 4-field CSV."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    with open(file, "rb") as probe:
        first = probe.readline(MAX_LINE_BYTES + 1).removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace")
    try:
        n_fields = len(_fields(first.rstrip("\r\n").strip(), ","))
    except ValueError as err:
        raise DataError(f"{file.name} line 1: {err}") from None
    if n_fields not in (3, 4):
        raise DataError(f"{file.name} line 1: expected user_id,movie_id,rating[,timestamp], found {n_fields} fields")
    return file, RatingsLayout(file.name, ",", 4, scale, timestamp_required=False)

