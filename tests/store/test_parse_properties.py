"""Property tests of the ratings parser: valid lines round-trip, and one rule judges every line.

The parser has two paths (pandas over a whole block, and line by line when a block does not parse cleanly); a
line must get the same verdict and the same values whichever path reads it, whatever else its block holds.
Invalid input through the CLI gives exit 65 and one line naming the file and line, never a traceback.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from recae.cli import cli
from recae.errors import DataError
from recae.store.datasets import RatingScale
from recae.store.parse import MAX_ID, RatingsLayout, RejectLog, _check_line, read_ratings

HALF_STARS = RatingScale(0.5, 5.0, 0.5)
LAYOUT = RatingsLayout("r.csv", ",", 4, HALF_STARS, timestamp_required=False)

ids = st.integers(1, MAX_ID)
ratings = st.integers(1, 10).map(lambda k: k / 2)
stamps = st.one_of(st.none(), st.integers(1, 2**53 - 1))
valid_rows = st.lists(st.tuples(ids, ids, ratings, stamps), min_size=1, max_size=40)

#: Fields that are no id, rating or timestamp by the rule, next to ones that are; each invalid one is refused.
NOT_INTEGERS = ["1e1", "1.0", "+1", "-1", "0", "1_0", "0x1", "\u0661", "\uff11", "NA", "nan", "1 2", '"', "x",
                str(MAX_ID + 1), "99999999999999999999999"]
NOT_RATINGS = ["NA", "nan", "inf", "-inf", "0_5", "\u0664", "4,5", "x", "5.5", "0", "4.25", "1e1", ""]
NOT_STAMPS = ["1e3", "1.5", "+5", "-0", "-1", "NA", "x", str(2**53), "\u0661"]


def _line(u: object, m: object, r: object, t: object) -> str:
    return f"{u},{m},{r}" + ("" if t is None else f",{t}")


def _parse(text: str, *, skip_bad: bool = True) -> tuple[list[tuple[int, int, float, float, int]], RejectLog]:
    """Every accepted rating as (user, movie, rating, timestamp, line) and the reject log."""
    rejects = RejectLog(skip_bad)
    rows = []
    for chunk, _ in read_ratings(io.BytesIO(text.encode()), LAYOUT, rejects, header=False):
        rows.extend(zip(chunk.user_id.tolist(), chunk.movie_id.tolist(), chunk.rating.tolist(),
                        chunk.timestamp.tolist(), chunk.line.tolist()))
    return rows, rejects


def _same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == b


@settings(max_examples=150, deadline=None)
@given(valid_rows, st.sampled_from(["", " ", "0"]))
def test_valid_lines_round_trip(rows: list[tuple[int, int, float, int | None]], pad: str) -> None:
    """Written as text (optionally zero-padded or with blanks around fields), read back exactly, in file order."""
    text = "".join(_line(f"{pad}{u}" if pad == "0" else f"{pad}{u}{pad}", m, r, t) + "\n" for u, m, r, t in rows)
    parsed, rejects = _parse(text, skip_bad=False)
    assert rejects.count == 0
    assert [(u, m, r, line) for u, m, r, _, line in parsed] == [(u, m, r, k + 1) for k, (u, m, r, _) in
                                                                  enumerate(rows)]
    assert all(_same(ts, float("nan") if t is None else float(t)) for (*_, ts, _), (*_, t) in zip(parsed, rows))


def _mutated(draw: st.DrawFn) -> str:
    """One line, valid or with one field replaced by something the rule refuses (or some other noise)."""
    u, m, r, t = draw(ids), draw(ids), draw(ratings), draw(stamps)
    fields: list[object] = [u, m, r, t]
    where = draw(st.sampled_from(["none", "user", "movie", "rating", "stamp", "text"]))
    if where == "user":
        fields[0] = draw(st.sampled_from(NOT_INTEGERS))
    elif where == "movie":
        fields[1] = draw(st.sampled_from(NOT_INTEGERS))
    elif where == "rating":
        fields[2] = draw(st.sampled_from(NOT_RATINGS))
    elif where == "stamp":
        fields[3] = draw(st.sampled_from(NOT_STAMPS))
    elif where == "text":
        return draw(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
                            max_size=30))
    return _line(*fields)


lines = st.lists(st.composite(lambda draw: _mutated(draw))(), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines)
def test_one_rule_for_every_line_whatever_its_block_holds(block: list[str]) -> None:
    """Each line's verdict and values are those of the line read alone by the exact rule (``_check_line``)."""
    parsed, rejects = _parse("".join(line + "\n" for line in block))
    expected, refused = [], []
    for number, line in enumerate(block, start=1):
        if not line.strip():
            continue
        verdict = _check_line(line, LAYOUT)
        if isinstance(verdict, str):
            refused.append(number)
        else:
            expected.append((*verdict, number))
    assert [line for *_, line in parsed] == [line for *_, line in expected]
    for got, want in zip(parsed, expected):
        assert got[:3] == want[:3] and _same(got[3], want[3])
    assert rejects.count == len(refused)
    assert [r.line for r in rejects.first] == refused[:len(rejects.first)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(ids, ids, ratings, stamps), min_size=0, max_size=20),
       st.sampled_from(NOT_INTEGERS[:3] + ["\u0661"]), st.sampled_from(["user", "movie"]))
def test_an_id_that_is_no_integer_is_refused_naming_its_line_among_valid_lines(
        rows: list[tuple[int, int, float, int | None]], bad: str, column: str) -> None:
    """Issue 30 row 9: ``1e1``, ``1.0``, ``+1`` were taken as ids when the rest of the block was valid."""
    at = len(rows) // 2
    good = [_line(*row) for row in rows]
    good.insert(at, _line(bad, 7, 4, None) if column == "user" else _line(7, bad, 4, None))
    with pytest.raises(DataError) as caught:
        _parse("".join(line + "\n" for line in good), skip_bad=False)
    assert str(caught.value) == f"r.csv line {at + 1}: {column} id {bad!r} is not an integer in 1..{MAX_ID}"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.composite(lambda draw: _mutated(draw))(), min_size=1, max_size=8), st.data())
def test_cli_refuses_invalid_files_with_exit_65_and_one_line(home: Path, block: list[str], data: st.DataObject
                                                             ) -> None:
    verdicts = [_check_line(line, LAYOUT) if line.strip() else () for line in block]  # blank lines are skipped
    assume(any(isinstance(v, str) for v in verdicts))
    first_bad = next(k for k, v in enumerate(verdicts, start=1) if isinstance(v, str))
    # line 1 may be taken for a header when no field of it is a number; keep the file's own first line valid
    path = home / f"in-{data.draw(st.integers(0, 10**9))}.csv"
    path.write_text("1,1,4\n" + "".join(line + "\n" for line in block))
    result = CliRunner().invoke(cli, ["--home", str(home), "ingest", "--ratings", str(path)])
    assert result.exit_code == 65, result.output
    message = result.stderr
    assert message.count("\n") == 1 and "Traceback" not in message
    assert message.startswith(f"Error: {path.name} line {first_bad + 1}: "), message
