"""Dataset registry, downloads with sha256 checks (file:// URLs, no network), and safe archive reading."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from recae.errors import DataError, DownloadError
from recae.store import datasets
from recae.store.datasets import DataSource, check_member_name, fetch, get_format


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_registry_covers_every_release_with_official_urls() -> None:
    assert set(datasets.FORMATS) == {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest",
                                     "ml-latest-small"}
    for name, fmt in datasets.FORMATS.items():
        assert fmt.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert fmt.sha256 is None or len(fmt.sha256) == 64
    assert get_format("ml-1m").sep == "::" and get_format("ml-1m").encoding == "latin-1"
    assert get_format("ml-10m").encoding == "utf-8" and get_format("ml-10m").scale.step == 0.5
    with pytest.raises(DataError, match="unknown dataset 'ml-5m'"):
        get_format("ml-5m")


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil", "a/../../evil", "C:/evil", "a\\..\\evil"])
def test_unsafe_member_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match="unsafe member name"):
        check_member_name(tmp_path / "x.zip", name)


def test_safe_member_names_pass(tmp_path: Path) -> None:
    for name in ["ml-100k/u.data", "u.data", "ml-10M100K/ratings.dat", "a..b/c"]:
        check_member_name(tmp_path / "x.zip", name)


def test_source_finds_members_in_zip_and_folder(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "d.zip", {
        "ml-x/ratings.csv": b"a", "ml-x/sub/ratings.csv": b"deeper", "__MACOSX/ml-x/._movies.csv": b"junk"})
    with DataSource(archive) as source:
        assert source.has("ratings.csv") and not source.has("movies.csv")
        with source.open("ratings.csv") as stream:
            assert stream.read() == b"a"  # the shallowest copy wins
        with pytest.raises(DataError, match="has no movies.csv"):
            source.size("movies.csv")
    folder = tmp_path / "folder" / "inner"
    folder.mkdir(parents=True)
    (folder / "ratings.csv").write_bytes(b"b")
    with DataSource(tmp_path / "folder") as source, source.open("ratings.csv") as stream:
        assert stream.read() == b"b"
    with pytest.raises(DataError, match="no such file"):
        DataSource(tmp_path / "missing.zip")


def test_fetch_downloads_records_sha256_on_first_use_and_checks_it_later(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    served = _zip(tmp_path / "served.zip", {"ml-100k/u.data": b"1\t2\t3\t4\n"})
    fmt = dataclasses.replace(datasets.FORMATS["ml-100k"], url=served.as_uri(), md5=None)
    cache = tmp_path / "downloads"
    first = fetch(fmt, cache)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    assert first.sha256 == digest and first.checked_against.startswith("recorded now")
    assert json.loads((cache / "ml-100k.zip.sha256").read_text())["sha256"] == digest
    assert fetch(fmt, cache).checked_against == "recorded"
    (cache / "ml-100k.zip").write_bytes(b"tampered")  # a corrupted cache fails the recorded checksum
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(fmt, cache)
    assert not (cache / "ml-100k.zip").exists()
    assert fetch(fmt, cache).sha256 == digest  # downloaded afresh


def test_first_download_must_match_grouplens_md5(tmp_path: Path) -> None:
    served = _zip(tmp_path / "served.zip", {"ml-100k/u.data": b"1\t2\t3\t4\n"})
    fmt = dataclasses.replace(datasets.FORMATS["ml-100k"], url=served.as_uri())
    assert fmt.md5 == "0e33842e24a9c977be4e0107933c0723"
    with pytest.raises(DownloadError, match="published MD5"):
        fetch(fmt, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # nothing recorded, nothing cached
    good = dataclasses.replace(fmt, md5=hashlib.md5(served.read_bytes()).hexdigest())
    assert fetch(good, tmp_path / "cache").sha256 == hashlib.sha256(served.read_bytes()).hexdigest()


def test_fetch_rejects_a_download_that_does_not_match_the_registry(tmp_path: Path) -> None:
    served = _zip(tmp_path / "served.zip", {"u.data": b""})
    fmt = dataclasses.replace(datasets.FORMATS["ml-1m"], url=served.as_uri(), sha256="0" * 64)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(fmt, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    good = dataclasses.replace(fmt, sha256=hashlib.sha256(served.read_bytes()).hexdigest())
    assert fetch(good, tmp_path / "cache").checked_against == "registry"


def test_offline_download_says_to_use_path_in_one_line(tmp_path: Path) -> None:
    fmt = dataclasses.replace(datasets.FORMATS["ml-25m"], url=(tmp_path / "nowhere.zip").as_uri())
    with pytest.raises(DownloadError) as caught:
        fetch(fmt, tmp_path / "cache")
    message = str(caught.value)
    assert "\n" not in message and "--path" in message and "ml-25m" in message
    assert list((tmp_path / "cache").iterdir()) == []  # no half file left behind
