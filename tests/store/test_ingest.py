"""Ingest: every MovieLens format round-trips, bad input is refused by file and line, nothing is half loaded.

Every test runs on SQLite and on PostgreSQL (a throwaway server, see tests/support/pg_server.py) unless marked
otherwise.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import Engine

from recae.cli import cli
from recae.errors import DataError
from recae.store import datasets, parse, writers
from recae.store.ingest import ingest_dataset, ingest_ratings_file
from recae.store.parse import parse_year

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.backends("sqlite", "postgresql")  # for every test that takes a store fixture

# movie_id, title, genres (ml-100k: names from its u.genre list below)
MOVIES = [
    (1, "Toy Story (1995)", "Animation|Comedy"),
    (2, "American President, The (1995)", "Comedy|Drama|Romance"),
    (3, "Café au lait (1994)", "Comedy"),
    (4, "Untitled Project", "unknown"),
    (5, 'Lady "Luck" (1999)', "Drama"),
]
GENRES_100K = ["unknown", "Action", "Animation", "Comedy", "Drama", "Romance"]
STAR_RATINGS = [(1, 1, 5, 881250949), (1, 2, 3, 881250950), (2, 1, 4, 0), (2, 3, 1, 881250999), (3, 5, 2, 891717742)]
HALF_RATINGS = [(1, 1, 4.5, 1112486027), (1, 2, 0.5, 1112484676), (2, 1, 5.0, 0), (2, 3, 3.5, 1112484819),
                (3, 5, 1.0, 1094785740)]
TOP_FOLDER = {"ml-10m": "ml-10M100K"}


def _ratings_text(name: str, rows: list[tuple[int, int, float, int]]) -> str:
    fmt = datasets.FORMATS[name]
    sep = fmt.sep
    eol = "\r\n" if name == "ml-latest-small" else "\n"
    value = (lambda r: f"{r:d}") if fmt.scale.step == 1.0 else (lambda r: f"{r:.1f}")
    header = f"userId,movieId,rating,timestamp{eol}" if fmt.header else ""
    return header + "".join(f"{u}{sep}{m}{sep}{value(r)}{sep}{t}{eol}" for u, m, r, t in rows)


def write_dataset(name: str, root: Path, ratings: list[tuple[int, int, float, int]] | None = None,
                  *, as_zip: bool = False) -> Path:
    """Write a tiny dataset in ``name``'s native layout (folder, or zip like GroupLens ships) under ``root``."""
    fmt = datasets.FORMATS[name]
    rows = ratings if ratings is not None else (STAR_RATINGS if fmt.scale.step == 1.0 else HALF_RATINGS)
    files: dict[str, bytes] = {fmt.ratings_file: _ratings_text(name, rows).encode()}
    if fmt.movies_kind == "item":
        lines = []
        for movie_id, title, genres in MOVIES:
            flags = "|".join("1" if g in genres.split("|") else "0" for g in GENRES_100K)
            lines.append(f"{movie_id}|{title}|01-Jan-1995||http://us.imdb.com/M/x|{flags}\n")
        files[fmt.movies_file] = "".join(lines).encode("latin-1")
        files["u.genre"] = ("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES_100K)) + "\n").encode()
        files["u1.test"] = _ratings_text(name, rows[:2]).encode()
        files["ua.test"] = _ratings_text(name, rows[4:]).encode()
    elif fmt.movies_kind == "dat":
        files[fmt.movies_file] = "".join(f"{m}::{t}::{_genres(g)}\n" for m, t, g in MOVIES).encode(fmt.encoding)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n" if name == "ml-latest-small" else "\n")
        writer.writerow(["movieId", "title", "genres"])
        writer.writerows((m, t, _genres(g)) for m, t, g in MOVIES)
        files[fmt.movies_file] = buffer.getvalue().encode("utf-8")
    top = TOP_FOLDER.get(name, name)
    root.mkdir(parents=True, exist_ok=True)
    if as_zip:
        path = root / f"{name}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for file, data in files.items():
                archive.writestr(f"{top}/{file}", data)
        return path
    folder = root / top
    folder.mkdir(parents=True, exist_ok=True)
    for file, data in files.items():
        (folder / file).write_bytes(data)
    return folder


def _genres(genres: str) -> str:
    return "(no genres listed)" if genres == "unknown" else genres


def snapshot(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Everything an ingest may change, in a comparable form."""
    with engine.connect() as conn:
        return {
            "ratings": [tuple(r) for r in conn.execute(text('SELECT user_id, movie_id, rating, "timestamp" FROM ratings'
                                                             " ORDER BY user_id, movie_id"))],
            "movies": [tuple(r) for r in conn.execute(text("SELECT * FROM movies ORDER BY movie_id"))],
            "folds": [tuple(r) for r in conn.execute(text("SELECT * FROM fold_tests ORDER BY 1, 2, 3"))],
            "succeeded": [tuple(r) for r in conn.execute(text(
                "SELECT dataset, sha256 FROM ingest_runs WHERE status = 'succeeded' ORDER BY id"))],
        }


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


# --------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
@pytest.mark.parametrize("name", list(datasets.FORMATS))
def test_every_format_round_trips(engine: Engine, tmp_path: Path, name: str, as_zip: bool) -> None:
    source = write_dataset(name, tmp_path, as_zip=as_zip)
    report = ingest_dataset(engine, name, source, downloads_dir=tmp_path / "dl")
    fmt = datasets.FORMATS[name]
    rows = STAR_RATINGS if fmt.scale.step == 1.0 else HALF_RATINGS
    state = snapshot(engine)
    assert state["ratings"] == sorted((u, m, float(r), t or None) for u, m, r, t in rows)
    genres = {m: (g if fmt.movies_kind == "item" else _genres(g)) for m, _, g in MOVIES}
    assert state["movies"] == [(m, t, parse_year(t), genres[m]) for m, t, _ in MOVIES]
    assert state["movies"][2][1] == "Café au lait (1994)"  # latin-1 and utf-8 decoded right
    assert (report.rows_read, report.rows_loaded, report.rows_rejected) == (5, 5, 0)
    assert (report.movies_loaded, report.movies_untitled, report.already_ingested) == (5, 0, False)
    assert state["succeeded"] == [(name, report.sha256)]
    expected_folds = sorted([("u1", u, m) for u, m, _, _ in rows[:2]] + [("ua", u, m) for u, m, _, _ in rows[4:]])
    assert state["folds"] == (expected_folds if name == "ml-100k" else [])


@pytest.mark.parametrize(("title", "year"), [("Toy Story (1995)", 1995), ("Untitled Project", None),
                                             ("Babylon 5 (1994-1998)", 1994), ("Heat (1995) ", 1995),
                                             ("1984 (1956)", 1956), ("(500) Days of Summer", None)])
def test_parse_year(title: str, year: int | None) -> None:
    assert parse_year(title) == year


def test_download_by_name_uses_the_checked_cache(engine: Engine, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    served = write_dataset("ml-latest-small", tmp_path / "server", as_zip=True)
    fmt = dataclasses.replace(datasets.FORMATS["ml-latest-small"], url=served.as_uri())
    monkeypatch.setitem(datasets.FORMATS, "ml-latest-small", fmt)
    report = ingest_dataset(engine, "ml-latest-small", downloads_dir=tmp_path / "dl")
    assert report.rows_loaded == len(HALF_RATINGS)
    assert (tmp_path / "dl" / "ml-latest-small.zip").read_bytes() == served.read_bytes()
    assert (tmp_path / "dl" / "ml-latest-small.zip.sha256").exists()


# --------------------------------------------------------------------------------------------- real data


def test_real_ml100k(engine: Engine, ml100k: Path, tmp_path: Path) -> None:
    report = ingest_dataset(engine, "ml-100k", ml100k, downloads_dir=tmp_path)
    with engine.connect() as conn:
        users, n = conn.execute(text("SELECT COUNT(DISTINCT user_id), COUNT(*) FROM ratings")).one()
        folds = dict(conn.execute(text("SELECT split, COUNT(*) FROM fold_tests GROUP BY split")).all())
        toy = conn.execute(text("SELECT title, year, genres FROM movies WHERE movie_id = 1")).one()
    assert (n, users, report.rows_loaded, report.movies_loaded) == (100_000, 943, 100_000, 1682)
    assert folds == {"u1": 20_000, "u2": 20_000, "u3": 20_000, "u4": 20_000, "u5": 20_000, "ua": 9430, "ub": 9430}
    assert tuple(toy) == ("Toy Story (1995)", 1995, "Animation|Children's|Comedy")


def test_real_ml1m(engine: Engine, ml1m: Path, tmp_path: Path) -> None:
    report = ingest_dataset(engine, "ml-1m", ml1m, downloads_dir=tmp_path)
    with engine.connect() as conn:
        users, n, unknown = conn.execute(text(
            'SELECT COUNT(DISTINCT user_id), COUNT(*), SUM(CASE WHEN "timestamp" IS NULL THEN 1 ELSE 0 END)'
            " FROM ratings")).one()
    assert (n, users, report.rows_loaded, report.movies_loaded) == (1_000_209, 6040, 1_000_209, 3883)
    assert unknown == 337_147  # timestamps written as 0 in this copy are stored as unknown


def test_real_ml_latest_small(engine: Engine, ml_latest_small: Path, tmp_path: Path) -> None:
    report = ingest_dataset(engine, "ml-latest-small", ml_latest_small, downloads_dir=tmp_path)
    with engine.connect() as conn:
        users, n = conn.execute(text("SELECT COUNT(DISTINCT user_id), COUNT(*) FROM ratings")).one()
        no_year = conn.execute(text("SELECT COUNT(*) FROM movies WHERE year IS NULL")).scalar_one()
    assert (n, users, report.movies_loaded, report.movies_untitled) == (100_836, 610, 9742, 0)
    assert 0 < no_year < 30  # a handful of titles carry no year


# --------------------------------------------------------------------------------------------- idempotence


def test_reingest_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    source = write_dataset("ml-1m", tmp_path, as_zip=True)
    first = ingest_dataset(engine, "ml-1m", source, downloads_dir=tmp_path)
    before = snapshot(engine)
    again = ingest_dataset(engine, "ml-1m", source, downloads_dir=tmp_path)
    assert again.already_ingested and again.rows_loaded == 0 and again.sha256 == first.sha256
    assert snapshot(engine) == before


@pytest.mark.parametrize("portable", [False, True], ids=["bulk-path", "portable-path"])
def test_update_keeps_the_latest_rating(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        portable: bool) -> None:
    if portable:
        monkeypatch.setattr(writers, "is_sqlite", lambda _engine: False)
        monkeypatch.setattr(writers, "is_postgresql", lambda _engine: False)
    first = write_csv(tmp_path / "a.csv", ["user_id,movie_id,rating,timestamp", "1,1,4.0,100", "1,2,3.0,100",
                                           "1,3,2.0,0", "2,1,3.0,300", "2,1,1.0,200", "2,2,2.0,", "2,2,2.5,50"])
    report = ingest_ratings_file(engine, first)
    assert report.rows_read == 7
    second = write_csv(tmp_path / "b.csv", ["1,1,2.0,50", "1,2,5.0,200", "1,3,1.0,0", "2,2,4.0,50", "3,1,0.5,7"])
    ingest_ratings_file(engine, second)
    assert snapshot(engine)["ratings"] == [
        (1, 1, 4.0, 100),  # an older rating does not replace a newer one
        (1, 2, 5.0, 200),  # a newer one does
        (1, 3, 1.0, None),  # unknown timestamps: the later ingest wins
        (2, 1, 3.0, 300),  # within one file, too, the newer timestamp wins
        (2, 2, 4.0, 50),  # equal timestamps: the later ingest wins
        (3, 1, 0.5, 7),
    ]


def _apply_rule(state: dict[tuple[int, int], tuple[float, int | None]], u: int, m: int, r: float,
                t: int | None) -> bool:
    """The documented upsert rule, one row at a time: the reference the bulk paths must match."""
    old = state.get((u, m))
    if old is None or t is None or old[1] is None or t >= old[1]:
        state[(u, m)] = (r, t)
        return True
    return False


@pytest.mark.parametrize("seed", range(4))
def test_bulk_upsert_matches_the_row_by_row_rule(engine: Engine, tmp_path: Path, seed: int) -> None:
    """Random files that repeat (user, movie) pairs, with unknown and equal timestamps, ingested one after
    another: the store must equal the rule applied row by row in file order (PostgreSQL reduces repeats in
    one statement, so this checks its reduction against the definition)."""
    import random

    rng = random.Random(seed)
    expected: dict[tuple[int, int], tuple[float, int | None]] = {}
    for number in range(3):
        lines, changed = [], set()
        for _ in range(rng.randint(1, 120)):
            u, m, r = rng.randint(1, 4), rng.randint(1, 5), rng.randint(1, 10) / 2
            t = rng.choice([None, 0, *range(1, 6)])  # 0 and missing both mean unknown
            lines.append(f"{u},{m},{r:.1f}" + ("" if t is None else f",{t}"))
            if _apply_rule(expected, u, m, r, t or None):
                changed.add((u, m))
        report = ingest_ratings_file(engine, write_csv(tmp_path / f"f{number}.csv", lines))
        assert report.rows_read == len(lines)
        assert snapshot(engine)["ratings"] == [(*key, *value) for key, value in sorted(expected.items())]


def test_ratings_for_unknown_movies_create_untitled_catalogue_rows(engine: Engine, tmp_path: Path) -> None:
    ingest_dataset(engine, "ml-latest-small", write_dataset("ml-latest-small", tmp_path), downloads_dir=tmp_path)
    report = ingest_ratings_file(engine, write_csv(tmp_path / "new.csv", ["7,1,4.0", "7,99,3.5", "8,98,1.0"]))
    assert report.movies_untitled == 2 and report.rows_loaded == 3
    movies = {row[0]: row for row in snapshot(engine)["movies"]}
    assert movies[99] == (99, None, None, "") and movies[98][1] is None and movies[1][1] == "Toy Story (1995)"


def test_plain_csv_with_three_columns_and_custom_scale(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", ["1,1,1", "1,2,5", "2,1,3"])
    report = ingest_ratings_file(engine, path, scale=(1, 5), step=1)
    assert report.rows_loaded == 3 and snapshot(engine)["ratings"][1] == (1, 2, 5.0, None)
    with pytest.raises(DataError, match=r"s.csv line 2: rating 3.5 is not a step of 1 on 1..5"):
        ingest_ratings_file(engine, write_csv(tmp_path / "s.csv", ["1,1,1", "1,2,3.5"]), scale=(1, 5), step=1)


def test_header_is_optional_but_bad_first_line_is_not_taken_for_one(engine: Engine, tmp_path: Path) -> None:
    with_header = ingest_ratings_file(engine, write_csv(tmp_path / "h.csv", ["user_id,movie_id,rating", "1,1,4"]))
    without = ingest_ratings_file(engine, write_csv(tmp_path / "n.csv", ["1,2,4", "1,3,4"]))
    assert (with_header.rows_read, without.rows_read) == (1, 2)
    with pytest.raises(DataError, match=r"^x\.csv line 1: user id 'x' is not an integer"):
        ingest_ratings_file(engine, write_csv(tmp_path / "x.csv", ["x,1,4", "1,4,4"]))
    folder = write_dataset("ml-20m", tmp_path / "d")
    write_csv(folder / "ratings.csv", ["1,1,4.0,5"])  # the header GroupLens always ships is missing
    with pytest.raises(DataError, match="ratings.csv line 1: expected a header line"):
        ingest_dataset(engine, "ml-20m", folder, downloads_dir=tmp_path)


# --------------------------------------------------------------------------------------------- bad input


BAD_100K = [
    (17, "7", "u.data line 17: rating 7 is outside 1..5"),
    (3, "x", "u.data line 3: user id 'x' is not an integer in 1..2147483647"),
    (5, "", "u.data line 5: expected 4 fields separated by '\\t', found 3"),
    (20, "3.5", "u.data line 20: rating 3.5 is not a step of 1 on 1..5"),
]


@pytest.mark.parametrize(("line", "bad", "message"), BAD_100K)
def test_malformed_line_is_named_and_nothing_is_loaded(engine: Engine, tmp_path: Path, line: int, bad: str,
                                                       message: str) -> None:
    ingest_ratings_file(engine, write_csv(tmp_path / "earlier.csv", ["1,1,4.0,5"]))
    before = snapshot(engine)
    rows = [f"{u}\t{m}\t3\t88125{m:04d}" for u in (1, 2) for m in range(1, 11)]
    user, movie, rating, stamp = rows[line - 1].split("\t")
    if bad == "x":
        rows[line - 1] = "\t".join(["x", movie, rating, stamp])
    elif bad == "":
        rows[line - 1] = "\t".join([user, movie, rating])
    else:
        rows[line - 1] = "\t".join([user, movie, bad, stamp])
    folder = write_dataset("ml-100k", tmp_path / "d")
    write_csv(folder / "u.data", rows)
    with pytest.raises(DataError) as caught:
        ingest_dataset(engine, "ml-100k", folder, downloads_dir=tmp_path)
    assert str(caught.value) == message
    assert snapshot(engine) == before


@pytest.mark.parametrize("bad_line", [2, 3_001, 9_999])
@pytest.mark.parametrize("kind", ["out-of-scale", "not-a-number", "too-many-fields"])
def test_line_numbers_are_exact_across_blocks(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              bad_line: int, kind: str) -> None:
    monkeypatch.setattr(parse, "BLOCK_BYTES", 4096)  # many blocks: the line count must carry over exactly
    lines = ["userId,movieId,rating,timestamp"] + [f"{i // 50 + 1},{i % 50 + 1},3.5,{1000 + i}" for i in range(9_999)]
    lines[bad_line - 1] = {"out-of-scale": "5,5,5.5,1", "not-a-number": "5,x5,3,1",
                           "too-many-fields": "5,5,3,1,9"}[kind]
    path = write_csv(tmp_path / "big.csv", lines)
    with pytest.raises(DataError, match=rf"^big\.csv line {bad_line}: "):
        ingest_ratings_file(engine, path)
    assert snapshot(engine)["ratings"] == []
    report = ingest_ratings_file(engine, path, skip_bad=True)
    assert (report.rows_read, report.rows_loaded, report.rows_rejected) == (9_999, 9_998, 1)
    assert [r.line for r in report.rejects] == [bad_line]


def test_skip_bad_loads_good_rows_and_reports_rejects(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", ["1,1,4", "1,2,9", "oops", "", "1,3,3.5,12", "2,x,1"] +
                     [f"3,{m},0" for m in range(1, 15)])
    report = ingest_ratings_file(engine, path, skip_bad=True)
    assert (report.rows_read, report.rows_loaded, report.rows_rejected) == (19, 2, 17)
    assert [(r.file, r.line) for r in report.rejects[:3]] == [("r.csv", 2), ("r.csv", 3), ("r.csv", 6)]
    assert len(report.rejects) == parse.REJECTS_KEPT
    assert "rating 9 is outside 0.5..5" in report.rejects[0].reason
    assert snapshot(engine)["ratings"] == [(1, 1, 4.0, None), (1, 3, 3.5, 12)]


def test_zip_slip_archive_writes_nothing_and_loads_nothing(engine: Engine, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = write_dataset("ml-1m", work, as_zip=True)
    with zipfile.ZipFile(archive, "a") as handle:
        handle.writestr("../escaped.txt", "x")
        handle.writestr("/tmp/absolute-escape.txt", "x")
    before_files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(DataError, match="unsafe member name '../escaped.txt'"):
        ingest_dataset(engine, "ml-1m", archive, downloads_dir=tmp_path / "dl")
    after_files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.name.startswith("recae.db"))
    assert after_files == [p for p in before_files if not p.name.startswith("recae.db")]
    assert not Path("/tmp/absolute-escape.txt").exists()
    assert snapshot(engine)["ratings"] == []


# --------------------------------------------------------------------------------------------- hostile files


@pytest.mark.parametrize(("content", "reason"), [
    (b"1,2,4\r2,3,5\r", "carriage return inside the line"),  # bare-CR line endings (old Mac)
    (b"1,2,4\n2,3,5\r1,1,1\n", "carriage return inside the line"),  # a stray CR on line 2
    (b"1,2,4\n" + b'3,"' + b"x" * 140_000 + b'",4\n', "longer than"),  # a field past csv's 131,072 limit
], ids=["bare-cr", "stray-cr", "huge-field"])
@pytest.mark.faults
def test_unparsable_csv_is_bad_data_named_by_line_and_loads_nothing(engine: Engine, tmp_path: Path, content: bytes,
                                                                     reason: str) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(content)
    before = snapshot(engine)
    with pytest.raises(DataError, match=reason) as caught:
        ingest_ratings_file(engine, path)
    assert str(caught.value).startswith("r.csv line ") and "\n" not in str(caught.value)
    assert snapshot(engine) == before


@pytest.mark.faults
def test_a_file_without_line_breaks_is_refused_after_one_line_of_reading() -> None:
    """Memory stays bounded: reading stops once a line passes MAX_LINE_BYTES (a 100 MB line-less u.data peaked at
    1.27 GB before), instead of the whole stream being held and parsed."""

    class Endless(io.RawIOBase):
        def __init__(self, total: int) -> None:
            self.left, self.served = total, 0

        def read(self, size: int = -1) -> bytes:
            n = min(size if size >= 0 else self.left, self.left)
            self.left -= n
            self.served += n
            return b"7" * n

    stream = Endless(20 * parse.BLOCK_BYTES)
    layout = parse.RatingsLayout("u.data", "\t", 4, datasets.RatingScale(1, 5, 1), timestamp_required=True)
    with pytest.raises(DataError, match=r"u.data line 1: longer than 65,536 bytes"):
        list(parse.read_ratings(stream, layout, parse.RejectLog(False), header=False))  # type: ignore[arg-type]
    assert stream.served <= parse.BLOCK_BYTES


@pytest.mark.faults
def test_a_small_zip_holding_a_line_less_u_data_is_refused_and_loads_nothing(engine: Engine, tmp_path: Path) -> None:
    """A 40 MB line-less u.data compresses to a tiny zip; it is refused as bad data without reading it all."""
    folder = write_dataset("ml-100k", tmp_path / "src")
    bomb = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in folder.iterdir():
            data = b"7" * (40 << 20) if file.name == "u.data" else file.read_bytes()
            archive.writestr(f"ml-100k/{file.name}", data)
    assert bomb.stat().st_size < 200_000
    before = snapshot(engine)
    with pytest.raises(DataError, match="u.data line 1: longer than 65,536 bytes without a line break"):
        ingest_dataset(engine, "ml-100k", bomb, downloads_dir=tmp_path)
    assert snapshot(engine) == before


def test_one_line_repeated_loads_one_rating(engine: Engine, tmp_path: Path) -> None:
    """``rows_loaded`` counts ratings inserted or changed, not lines: 5,000 copies of one line load one rating, and
    the same rating again later changes nothing."""
    report = ingest_ratings_file(engine, write_csv(tmp_path / "r.csv", ["1,2,4"] * 5000 + ["1,3,5"]))
    assert report.rows_read == 5001 and report.rows_loaded == 2
    again = ingest_ratings_file(engine, write_csv(tmp_path / "s.csv", ["1,2,4", "1,2,4", "1,3,2", "1,3,2"]))
    assert again.rows_loaded == 1  # only (1, 3) changed
    assert snapshot(engine)["ratings"] == [(1, 2, 4.0, None), (1, 3, 2.0, None)]


# --------------------------------------------------------------------------------------------- CLI


def test_cli_bad_data_exits_65_with_one_line(store_url: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", ["1,1,4", "1,2,4", "1,3,7"])
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "--db", store_url, "ingest", "--ratings",
                                      str(path)])
    assert result.exit_code == 65
    assert result.stderr.strip() == "Error: r.csv line 3: rating 7 is outside 0.5..5"
    assert result.stdout == ""


def test_cli_bare_cr_file_exits_65_with_one_line(store_url: str, tmp_path: Path) -> None:
    path = tmp_path / "cr.csv"
    path.write_bytes(b"1,2,4\r2,3,5\r")
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "--db", store_url, "ingest", "--ratings",
                                      str(path)])
    assert result.exit_code == 65, result.output
    assert result.stderr.startswith("Error: cr.csv line 1: a carriage return") and result.stderr.count("\n") == 1


def test_cli_ingests_and_reports_json_then_already_ingested(store_url: str, tmp_path: Path) -> None:
    import json

    folder = write_dataset("ml-100k", tmp_path)
    args = ["--home", str(tmp_path / "home"), "--db", store_url, "ingest", "ml-100k", "--path", str(folder),
            "--format", "json"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["rows_loaded"] == len(STAR_RATINGS)
    second = CliRunner().invoke(cli, args)
    assert json.loads(second.stdout)["already_ingested"] is True and "already ingested" in second.stderr


def test_cli_offline_message_says_use_path(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = dataclasses.replace(datasets.FORMATS["ml-100k"], url=(tmp_path / "offline.zip").as_uri())
    monkeypatch.setitem(datasets.FORMATS, "ml-100k", fmt)
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "--db", store_url, "ingest", "ml-100k"])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "--path" in result.stderr


@pytest.mark.parametrize("args", [[], ["ml-100k", "--ratings", "X"], ["--ratings", "X", "--path", "X"], ["ml-7m"]])
def test_cli_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "x.csv").write_text("1,1,1\n")
    args = [str(tmp_path / "x.csv") if a == "X" else a for a in args]
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "ingest", *args])
    assert result.exit_code == 2 and "Usage" in result.stderr


# --------------------------------------------------------------------------------------------- SIGKILL, concurrency

BIG_ROWS = 2_500_000


@pytest.fixture(scope="module")
def big_ratings_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~50 MB of ML-25M-shaped ratings (several 16 MiB blocks), made once for the module."""
    from tests.benchmarks.bench_ingest import write_ratings_csv

    return write_ratings_csv(tmp_path_factory.mktemp("big") / "big.csv", BIG_ROWS)


def _hold_write_lock(backend: str, store_url: str):  # type: ignore[no-untyped-def]
    """Another writer mid-transaction: SQLite's write lock, or PostgreSQL row locks on every rating."""
    from sqlalchemy import create_engine

    if backend == "sqlite":
        import sqlite3

        other = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        other.execute("BEGIN IMMEDIATE")
        return other
    other = create_engine(store_url).connect()
    other.execute(text("UPDATE ratings SET rating = rating"))  # row locks until rollback
    other.execute(text("INSERT INTO ratings (user_id, movie_id, rating) VALUES (2, 10, 1.0)"))
    return other


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("prefilled", [False, True], ids=["empty-store", "prefilled-store"])
def test_sigkill_mid_ingest_leaves_store_unchanged_and_rerun_succeeds(
    store_url: str, tmp_path: Path, big_ratings_csv: Path, monkeypatch: pytest.MonkeyPatch, prefilled: bool
) -> None:
    """A real second ingest while the first is mid-transaction gets exit 75 at once; killing the first leaves
    the store as it was; running it again loads everything."""
    from recae.errors import EXIT_LOCKED
    from recae.store import db
    from recae.store.db import open_store

    home = tmp_path / "home"
    command = [sys.executable, "-m", "recae", "--home", str(home), "--db", store_url, "ingest", "--ratings",
               str(big_ratings_csv)]
    if prefilled:
        small = write_csv(tmp_path / "small.csv", ["999998,1,4.0,5", "999999,7,2.0,9"])
        subprocess.run([*command[:-1], str(small)], check=True, capture_output=True, cwd=ROOT)
    engine = open_store(store_url)
    before = snapshot(engine)
    engine.dispose()
    # -vv logs each written block on stderr; stop the process after the first one, mid-transaction.
    process = subprocess.Popen([command[0], "-m", "recae", "-vv", *command[3:]], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    try:
        lines_read = 0
        for line in process.stderr:
            if "ratings written so far" in line:
                lines_read = int(line.split(" lines read, ")[0].rsplit(" ", 1)[1])
                break
        process.send_signal(signal.SIGSTOP)  # frozen while holding its transaction and locks
        assert 0 < lines_read < BIG_ROWS and process.poll() is None, "the ingest ended before it could be killed"
        monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 200)  # wait 0.2 s for SQLite's lock, not 30 s
        other = write_csv(tmp_path / "other.csv", ["1,1,4.0,5"])
        second = CliRunner().invoke(cli, ["--home", str(home), "--db", store_url, "ingest", "--ratings", str(other)])
        assert second.exit_code == EXIT_LOCKED, second.output
        assert "store is busy" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    engine = open_store(store_url)
    assert snapshot(engine) == before
    engine.dispose()
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    engine = open_store(store_url)
    with engine.connect() as conn:
        n_ratings = conn.execute(text("SELECT COUNT(*) FROM ratings")).scalar_one()
        n_succeeded = conn.execute(text("SELECT COUNT(*) FROM ingest_runs WHERE status = 'succeeded'")).scalar_one()
    assert n_ratings == BIG_ROWS + (2 if prefilled else 0)
    assert n_succeeded == len(before["succeeded"]) + 1
    engine.dispose()


@pytest.mark.faults
def test_a_store_busy_with_another_writer_gives_exit_75_and_loads_nothing(
    backend: str, store_url: str, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recae.errors import EXIT_LOCKED, LockHeldError
    from recae.store import db

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 200)  # wait 0.2 s for the lock, not 30 s
    monkeypatch.setattr(writers, "POSTGRES_LOCK_TIMEOUT_MS", 200)
    engine.dispose()  # new connections pick up the short SQLite timeout
    ingest_ratings_file(engine, write_csv(tmp_path / "old.csv", ["1,10,2,5"]))
    before = snapshot(engine)
    ratings = tmp_path / "new.csv"
    ratings.write_text("user_id,movie_id,rating\n1,10,4\n2,10,3\n")
    other = _hold_write_lock(backend, store_url)
    try:
        with pytest.raises(LockHeldError, match="store is busy") as caught:
            ingest_ratings_file(engine, ratings)
        assert caught.value.exit_code == EXIT_LOCKED and "\n" not in str(caught.value)
    finally:
        other.rollback()
        other.close()
    assert snapshot(engine) == before
    assert ingest_ratings_file(engine, ratings).rows_loaded == 2  # once the writer is gone, it loads


@pytest.mark.faults
@pytest.mark.backends("postgresql")
def test_postgresql_second_ingest_fails_fast_while_one_holds_the_ingest_lock(
    store_url: str, engine: Engine, tmp_path: Path
) -> None:
    """On PostgreSQL a concurrent ingest does not queue behind the first one (which may take minutes)."""
    import time

    from sqlalchemy import create_engine, func, select

    from recae.errors import LockHeldError
    from recae.store.db import POSTGRES_INGEST_LOCK

    holder = create_engine(store_url)
    try:
        with holder.begin() as conn:  # what a running ingest holds for its whole transaction
            conn.execute(select(func.pg_advisory_xact_lock(POSTGRES_INGEST_LOCK)))
            started = time.monotonic()
            with pytest.raises(LockHeldError, match="store is busy"):
                ingest_ratings_file(engine, write_csv(tmp_path / "r.csv", ["1,1,4"]))
            assert time.monotonic() - started < 5
        assert ingest_ratings_file(engine, tmp_path / "r.csv").rows_loaded == 1  # lock released at commit
    finally:
        holder.dispose()
    assert snapshot(engine)["ratings"] == [(1, 1, 4.0, None)]
