"""MovieLens formats, downloads with sha256 checks, and safe reading of archives and folders.

Every GroupLens release is described once in ``FORMATS``: where its files are, how they are separated and
encoded, and the rating scale. Archives are read member by member straight from the zip: nothing is extracted,
and an archive with an absolute or ``..`` member name is refused outright (zip-slip).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

from recae.errors import DataError, DownloadError

log = logging.getLogger(__name__)

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class RatingScale:
    """Allowed ratings: ``low``, ``low + step``, ..., ``high``. ``step`` None allows any value in range."""

    low: float
    high: float
    step: float | None

    def describe(self) -> str:
        return f"{self.low:g}..{self.high:g}"


STARS = RatingScale(1.0, 5.0, 1.0)
HALF_STARS = RatingScale(0.5, 5.0, 0.5)


@dataclass(frozen=True)
class DatasetFormat:
    """How one MovieLens release is laid out.

    Attributes:
        name: the name users type (``ml-100k``).
        url: official GroupLens zip.
        sha256: the zip's known checksum, or None (then recorded on first download).
        md5: the checksum GroupLens publishes beside each zip (``<name>.zip.md5``); when there is no sha256, the
            first download must match it before its sha256 is recorded, so even the first fetch is verified.
        ratings_file / movies_file: member names (found at any folder depth inside the zip or folder).
        sep: field separator of the ratings and movies files (``\\t`` for u.data, ``|`` for u.item).
        header: whether ratings and movies files start with a header line.
        movies_kind: ``item`` (ml-100k genre flags), ``dat`` (``::``), ``csv`` (quoted titles).
        encoding: of the movies file (the ratings files are ASCII).
        fold_files: canonical test folds, name -> member (ml-100k only).
    """

    name: str
    url: str
    sha256: str | None
    ratings_file: str
    movies_file: str
    sep: str
    header: bool
    movies_kind: Literal["item", "dat", "csv"]
    encoding: str
    scale: RatingScale
    md5: str | None = None
    movies_sep: str = ""
    genre_file: str | None = None
    fold_files: tuple[tuple[str, str], ...] = ()


def _csv_format(name: str) -> DatasetFormat:
    return DatasetFormat(
        name=name, url=f"{GROUPLENS}/{name}.zip", sha256=None, ratings_file="ratings.csv",
        movies_file="movies.csv", sep=",", header=True, movies_kind="csv", encoding="utf-8", scale=HALF_STARS,
        md5=GROUPLENS_MD5.get(name),
    )


#: GroupLens's published MD5 of the stable releases (the same values appear in several independent projects).
#: ml-latest and ml-latest-small change over time, and ml-32m's was not found, so those are trust-on-first-use.
GROUPLENS_MD5 = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-10m": "ce571fd55effeba0271552578f2648bd",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
}

#: Every dataset ``recae ingest`` knows by name. The first download is checked against GroupLens's MD5 where one
#: is published, and its sha256 is recorded (``<name>.zip.sha256`` beside the cached zip); later ones must match.
FORMATS: dict[str, DatasetFormat] = {
    "ml-100k": DatasetFormat(
        name="ml-100k", url=f"{GROUPLENS}/ml-100k.zip", sha256=None, ratings_file="u.data",
        movies_file="u.item", sep="\t", header=False, movies_kind="item", encoding="latin-1", scale=STARS,
        movies_sep="|", genre_file="u.genre", md5=GROUPLENS_MD5["ml-100k"],
        fold_files=tuple((f"u{i}", f"u{i}.test") for i in range(1, 6)) + (("ua", "ua.test"), ("ub", "ub.test")),
    ),
    "ml-1m": DatasetFormat(
        name="ml-1m", url=f"{GROUPLENS}/ml-1m.zip", sha256=None, ratings_file="ratings.dat",
        movies_file="movies.dat", sep="::", header=False, movies_kind="dat", encoding="latin-1", scale=STARS,
        movies_sep="::", md5=GROUPLENS_MD5["ml-1m"],
    ),
    "ml-10m": DatasetFormat(
        name="ml-10m", url=f"{GROUPLENS}/ml-10m.zip", sha256=None, ratings_file="ratings.dat",
        movies_file="movies.dat", sep="::", header=False, movies_kind="dat", encoding="utf-8", scale=HALF_STARS,
        movies_sep="::", md5=GROUPLENS_MD5["ml-10m"],
    ),
    **{name: _csv_format(name) for name in ("ml-20m", "ml-25m", "ml-32m", "ml-latest", "ml-latest-small")},
}


def get_format(name: str) -> DatasetFormat:
    """The format registered as ``name``, or a DataError listing the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(FORMATS)}") from None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- sources


def check_member_name(archive: Path, name: str) -> None:
    """Refuse a member that would land outside an extraction folder: absolute, ``..``, drive or backslash."""
    posix = PurePosixPath(name)
    if (name.startswith(("/", "\\")) or posix.is_absolute() or ".." in posix.parts or "\\" in name
            or re.match(r"^[A-Za-z]:", name)):
        raise DataError(f"{archive.name}: unsafe member name {name!r} (absolute or '..'); archive refused")


class DataSource:
    """The files of one dataset, from a zip (read in place) or a folder; members found by file name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, str] = {}  # file name -> member path (the shallowest one wins)
        if path.is_dir():
            for found in sorted(path.rglob("*"), key=lambda p: (len(p.parts), str(p))):
                if found.is_file() and "__MACOSX" not in found.parts:
                    self._members.setdefault(found.name, str(found))
        elif zipfile.is_zipfile(path):
            self._zip = zipfile.ZipFile(path)
            try:
                for info in self._zip.infolist():
                    check_member_name(path, info.filename)
            except DataError:
                self._zip.close()
                raise
            for info in sorted(self._zip.infolist(), key=lambda i: (i.filename.count("/"), i.filename)):
                if not info.is_dir() and not info.filename.startswith("__MACOSX"):
                    self._members.setdefault(PurePosixPath(info.filename).name, info.filename)
        elif path.exists():
            raise DataError(f"{path}: neither a folder nor a zip archive")
        else:
            raise DataError(f"{path}: no such file or folder")

    def has(self, file_name: str) -> bool:
        return file_name in self._members

    def size(self, file_name: str) -> int:
        """Uncompressed size in bytes (for progress)."""
        member = self._require(file_name)
        if self._zip is not None:
            return self._zip.getinfo(member).file_size
        return Path(member).stat().st_size

    @contextmanager
    def open(self, file_name: str) -> Iterator[BinaryIO]:
        """Binary stream of one member; a DataError names the missing file."""
        member = self._require(file_name)
        if self._zip is not None:
            with self._zip.open(member) as stream:
                yield stream  # type: ignore[misc]
        else:
            with open(member, "rb") as stream:
                yield stream

    def fingerprint(self, file_names: list[str]) -> str:
        """sha256 of the zip file itself, or for a folder over the names and contents of the files used."""
        if self._zip is not None:
            return sha256_file(self.path)
        digest = hashlib.sha256()
        for name in file_names:
            if self.has(name):
                digest.update(f"{name}\0{sha256_file(Path(self._members[name]))}\n".encode())
        return digest.hexdigest()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> DataSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require(self, file_name: str) -> str:
        try:
            return self._members[file_name]
        except KeyError:
            raise DataError(f"{self.path}: has no {file_name}; is this the right dataset?") from None


# --------------------------------------------------------------------------------------------- downloads


@dataclass(frozen=True)
class Download:
    """A cached archive and how its checksum was established."""

    path: Path
    sha256: str
    checked_against: Literal["registry", "recorded", "recorded now (trust on first use)"]


def fetch(fmt: DatasetFormat, downloads_dir: Path) -> Download:
    """The dataset's zip from the cache in ``downloads_dir``, downloaded first when absent; sha256 checked.

    The known checksum comes from the registry or, when it has none, from ``<name>.zip.sha256`` written at the
    first download (trust on first use). A mismatch removes the bad file and raises DownloadError.

    Raises:
        DownloadError: offline, HTTP error, or checksum mismatch; the message says to use ``--path``.
    """
    downloads_dir.mkdir(parents=True, exist_ok=True)
    target = downloads_dir / f"{fmt.name}.zip"
    record = downloads_dir / f"{fmt.name}.zip.sha256"
    expected = fmt.sha256 or _read_record(record)
    if not target.exists():
        _download(fmt, target)
    actual = sha256_file(target)
    if expected is None and fmt.md5 is not None and _md5_file(target) != fmt.md5:
        target.unlink()
        raise DownloadError(
            f"{fmt.name}: the download from {fmt.url} does not match GroupLens's published MD5 and was removed; "
            "try again, or use --path with a file you trust"
        )
    if expected is None:
        record.write_text(json.dumps({"url": fmt.url, "sha256": actual}) + "\n")
        log.warning("%s: no known checksum; recorded sha256 %s (trust on first use)", fmt.name, actual)
        return Download(target, actual, "recorded now (trust on first use)")
    if actual != expected:
        target.unlink()
        raise DownloadError(
            f"{fmt.name}: sha256 mismatch for {fmt.url} (got {actual[:12]}..., expected {expected[:12]}...); "
            f"the download was removed - try again, or use --path with a file you trust"
        )
    return Download(target, actual, "registry" if fmt.sha256 else "recorded")


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_record(record: Path) -> str | None:
    if not record.exists():
        return None
    try:
        return str(json.loads(record.read_text())["sha256"])
    except (ValueError, KeyError, TypeError):
        raise DownloadError(f"{record}: unreadable checksum record; delete it to download afresh") from None


def _download(fmt: DatasetFormat, target: Path) -> None:
    """Stream ``fmt.url`` into a temporary file beside ``target``, then rename: no half file is ever cached."""
    handle, temp_name = tempfile.mkstemp(prefix=f".{fmt.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(fmt.url, timeout=60) as response:  # noqa: S310
            shutil.copyfileobj(response, out, HASH_BLOCK)
        os.replace(temp_name, target)
    except (urllib.error.URLError, OSError, ValueError) as err:
        Path(temp_name).unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise DownloadError(
            f"cannot download {fmt.name} from {fmt.url} ({reason}); if offline, fetch the zip elsewhere and run "
            f"`recae ingest {fmt.name} --path FILE.zip`"
        ) from None
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
