"""Synthetic MovieLens-shaped ratings: exact shape, valid CSV, power-law popularity, learnable planted structure."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from recae.cli import cli
from recae.evaluation.baselines import BiasBaseline, GlobalMean
from recae.ratings_csv import HEADER, format_rows, write_csv
from recae.store.matrix import RatingMatrix
from recae.synth import (
    InvalidSpec,
    SynthRatings,
    SynthSpec,
    _first_distinct,
    _heavy_films,
    _light_films,
    _Popularity,
    _shuffle_within_users,
    generate,
    summarize,
)

# An ML-shaped spec small enough for unit tests: 40 ratings per film and 60 per user on average.
ML_LIKE = SynthSpec(n_users=2000, n_movies=3000, n_ratings=120_000, seed=0)


@pytest.fixture(scope="module")
def ml_like() -> SynthRatings:
    return generate(ML_LIKE)


def per_user_counts(r: SynthRatings) -> np.ndarray:
    return np.bincount(r.user_ids - r.spec.start_user_id, minlength=r.spec.n_users)


def assert_well_formed(r: SynthRatings) -> None:
    """Exact count, ids in range, unique pairs, sorted by user then strictly by time, half stars in 0.5..5."""
    spec = r.spec
    assert r.user_ids.shape == r.movie_ids.shape == r.ratings.shape == r.timestamps.shape == (spec.n_ratings,)
    assert r.ratings.dtype == np.float32 and r.timestamps.dtype == np.int64
    assert r.user_ids.min() == spec.start_user_id and r.user_ids.max() == spec.start_user_id + spec.n_users - 1
    assert np.unique(r.user_ids).size == spec.n_users  # every user has ratings
    assert 1 <= r.movie_ids.min() and r.movie_ids.max() <= spec.n_movies
    pairs = r.user_ids * (spec.n_movies + 1) + r.movie_ids
    assert np.unique(pairs).size == spec.n_ratings
    assert np.all(np.diff(r.user_ids) >= 0)
    same_user = r.user_ids[1:] == r.user_ids[:-1]
    assert np.all(np.diff(r.timestamps)[same_user] > 0)
    assert r.ratings.min() >= 0.5 and r.ratings.max() <= 5.0
    assert np.array_equal(r.ratings * 2, np.round(r.ratings * 2))


@pytest.mark.parametrize("spec", [
    SynthSpec(300, 200, 9_000, seed=1, start_user_id=1000),  # typical
    SynthSpec(50, 100, 3_000, seed=2),  # mean 60 of 100 films: users take the Gumbel top-k path
    SynthSpec(20, 30, 600, seed=3),  # every user rates every film
    SynthSpec(7, 5, 7, seed=4),  # one rating each
    SynthSpec(100, 1000, 500, seed=5),  # too few ratings for 20 per user
])
def test_shape_is_exact_and_valid(spec: SynthSpec) -> None:
    assert_well_formed(generate(spec))


def test_every_user_has_the_minimum_or_the_lowered_one(ml_like: SynthRatings) -> None:
    counts = per_user_counts(ml_like)
    assert counts.min() == 20 and counts.max() <= 0.6 * ML_LIKE.n_movies
    assert counts.max() >= 10 * np.median(counts)  # heavy-tailed activity
    small = generate(SynthSpec(100, 1000, 500, seed=5))  # R / N = 5: the minimum drops to R // 2N = 2
    assert small.spec.effective_min_per_user == 2 and per_user_counts(small).min() == 2


def test_full_matrix_has_every_pair_once() -> None:
    r = generate(SynthSpec(20, 30, 600, seed=3))
    assert np.array_equal(np.sort(r.user_ids * 100 + r.movie_ids),
                          np.sort((np.arange(1, 21)[:, None] * 100 + np.arange(1, 31)[None, :]).ravel()))


def test_popularity_follows_a_power_law(ml_like: SynthRatings) -> None:
    per_movie = np.sort(np.bincount(ml_like.movie_ids, minlength=ML_LIKE.n_movies + 1)[1:])[::-1]
    top_share = per_movie[: ML_LIKE.n_movies // 100].sum() / ML_LIKE.n_ratings
    assert top_share > 0.10  # 1% under uniform popularity; measured 0.16 (ml-1m: 0.09, ml-latest-small: 0.16)
    assert summarize(ml_like).top1pct_movie_share == pytest.approx(top_share)
    # Log-log slope of count against rank over the middle of the ranking is about -exponent (-1).
    ranks = np.arange(30, 1000)
    slope = np.polyfit(np.log(ranks + ML_LIKE.popularity_offset), np.log(per_movie[ranks]), 1)[0]
    assert -1.4 < slope < -0.6


def test_light_and_heavy_samplers_draw_the_same_distribution() -> None:
    """Drop-repeats sampling and Gumbel top-k are both successive sampling: same inclusion frequencies."""
    pop = _Popularity(1.0, 2.0, 40, np.random.default_rng(0).permutation(40).astype(np.int64))
    log_w = np.log(pop.probabilities())
    rng = np.random.default_rng(1)
    users, cols = _light_films(np.full(3000, 8), pop, rng)
    assert np.array_equal(np.bincount(users), np.full(3000, 8))
    light = np.bincount(cols, minlength=40) / 3000
    heavy = np.bincount(np.concatenate([_heavy_films(8, log_w, rng) for _ in range(3000)]), minlength=40) / 3000
    assert np.abs(light - heavy).max() < 0.05  # binomial sd <= 0.013 each
    assert light.max() > 0.5 and light.min() < 0.1  # and the weights matter


def test_packed_sorts_match_their_slow_fallbacks() -> None:
    """The int64-packed sorts and the argsort fallbacks (taken when keys would overflow) agree."""
    rng = np.random.default_rng(2)
    users = np.sort(rng.integers(0, 50, 2000))
    cols = rng.integers(0, 30, 2000)
    fast = _first_distinct(users, cols, 30)
    slow = _first_distinct(users, cols, 2**50)  # the same pairs, but keys too wide to pack
    assert np.array_equal(fast[0], slow[0]) and np.array_equal(fast[1], slow[1])
    pairs = users[fast[1]] * 30 + cols[fast[1]]
    assert np.unique(pairs).size == pairs.size == np.unique(users * 30 + cols).size
    for n_movies in (30, 2**50):  # 2**50 leaves too few random bits: the lexsort fallback
        shuffled_users, shuffled_cols = _shuffle_within_users(users, cols, n_movies, rng)
        assert np.array_equal(shuffled_users, users)
        assert np.array_equal(np.sort(shuffled_users * 2**52 + shuffled_cols), np.sort(users * 2**52 + cols))
        assert not np.array_equal(shuffled_cols, cols)


def test_planted_structure_is_learnable(ml_like: SynthRatings) -> None:
    matrix = RatingMatrix.from_ids(ml_like.user_ids, ml_like.movie_ids, ml_like.ratings, ml_like.timestamps)
    held_out = np.random.default_rng(0).random(matrix.nnz) < 0.1
    train, test = matrix.subset(~held_out), matrix.subset(held_out)
    rows, cols, truth = test.coo()

    def rmse(predicted: np.ndarray) -> float:
        return float(np.sqrt(np.mean((predicted - truth) ** 2)))

    global_mean = rmse(GlobalMean().fit(train).predict(rows, cols))
    biases = rmse(BiasBaseline().fit(train).predict(rows, cols))
    planted = ml_like.planted
    user_rows = matrix.index.user_ids[rows] - ML_LIKE.start_user_id
    movie_rows = matrix.index.movie_ids[cols] - 1
    oracle = rmse(np.clip(np.round(planted.expected(user_rows, movie_rows) * 2) / 2, 0.5, 5.0))
    # Measured on seeds 0..2: global mean 0.98-1.00, biases 0.78-0.81, planted truth 0.52.
    assert biases < 0.9 * global_mean
    assert oracle < 0.8 * biases  # the low-rank part carries signal beyond the biases


def test_same_seed_same_file_and_another_seed_another(tmp_path: Path) -> None:
    spec = SynthSpec(200, 300, 6_000, seed=7)
    first, second, other = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    write_csv(generate(spec), first, chunk_rows=1000)
    write_csv(generate(spec), second, chunk_rows=2500)
    write_csv(generate(SynthSpec(200, 300, 6_000, seed=8)), other)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_csv_matches_pandas_and_reads_back(tmp_path: Path) -> None:
    r = generate(SynthSpec(150, 400, 5_000, seed=9, start_user_id=99_995))
    report = write_csv(r, tmp_path / "r.csv", chunk_rows=777)
    data = (tmp_path / "r.csv").read_bytes()
    assert report.rows == 5_000 and report.bytes == len(data) and data.startswith(HEADER)
    frame = pd.read_csv(io.BytesIO(data))
    assert list(frame.columns) == ["user_id", "movie_id", "rating", "timestamp"]
    assert np.array_equal(frame.user_id, r.user_ids) and np.array_equal(frame.movie_id, r.movie_ids)
    assert np.array_equal(frame.rating, r.ratings) and np.array_equal(frame.timestamp, r.timestamps)
    expected = pd.DataFrame({"user_id": r.user_ids, "movie_id": r.movie_ids, "rating": r.ratings,
                             "timestamp": r.timestamps}).to_csv(index=False, float_format="%.1f", lineterminator="\n")
    assert data.decode() == expected


def test_format_rows_edge_values() -> None:
    ids = np.array([0, 9, 10, 99, 100, 2**31 - 1])
    ratings = np.array([0.5, 1.0, 2.5, 4.5, 5.0, 0.0], np.float32)
    text = format_rows(ids, ids[::-1], ratings, ids * 3).decode()
    assert text.splitlines() == [f"{u},{m},{r:.1f},{t}" for u, m, r, t in zip(ids, ids[::-1], ratings, ids * 3)]
    with pytest.raises(ValueError, match="half-star"):
        format_rows(ids[:1], ids[:1], np.array([3.25]), ids[:1])


def test_interrupted_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "r.csv"

    def stop(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_csv(generate(SynthSpec(100, 100, 3_000)), target, chunk_rows=500, on_progress=stop)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("kwargs", "field", "words"), [
    ({"n_users": 2, "n_movies": 3, "n_ratings": 7}, "n_ratings", "do not fit 2 users x 3 movies"),
    ({"n_users": 10, "n_movies": 3, "n_ratings": 9}, "n_ratings", "at least 10"),
    ({"n_users": 0, "n_movies": 3, "n_ratings": 9}, "n_users", "users must be at least 1"),
    ({"n_users": 5, "n_movies": -1, "n_ratings": 9}, "n_movies", "movies must be at least 1"),
    ({"n_users": 5, "n_movies": 5, "n_ratings": 9, "rank": 0}, "rank", "rank must be at least 1"),
    ({"n_users": 5, "n_movies": 5, "n_ratings": 9, "start_user_id": 2**31 - 2}, "start_user_id", "32 bits"),
    ({"n_users": 5, "n_movies": 10**9, "n_ratings": 9}, "n_movies", "at most 100,000,000"),
])
def test_nonsense_specs_are_refused(kwargs: dict, field: str, words: str) -> None:
    with pytest.raises(InvalidSpec, match=words) as caught:
        SynthSpec(**kwargs)
    assert caught.value.field == field


def test_cli_writes_a_file_that_ingest_loads(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "synth.csv"
    made = runner.invoke(cli, ["synth", "--users", "120", "--movies", "300", "--ratings", "4321", "--out", str(out),
                               "--seed", "3", "--start-user-id", "500", "--format", "json"])
    assert made.exit_code == 0, made.output
    summary = json.loads(made.stdout)
    assert summary["ratings"] == 4321 and summary["users"] == 120 and summary["file"] == str(out)
    loaded = runner.invoke(cli, ["--home", str(tmp_path / "home"), "ingest", "--ratings", str(out), "--format", "json"])
    assert loaded.exit_code == 0, loaded.output
    report = json.loads(loaded.stdout[loaded.stdout.index("{"):])
    assert report["rows_read"] == report["rows_loaded"] == 4321 and report["rows_rejected"] == 0
    table = runner.invoke(cli, ["synth", "--users", "120", "--movies", "300", "--ratings", "4321", "--out",
                                str(tmp_path / "again.csv"), "--seed", "3", "--start-user-id", "500"])
    assert table.exit_code == 0 and len(table.stdout.strip().splitlines()) == 1 and "4,321 ratings" in table.stdout
    assert (tmp_path / "again.csv").read_bytes() == out.read_bytes()


@pytest.mark.parametrize(("args", "out", "words"), [
    (["--users", "2", "--movies", "3", "--ratings", "7"], "x.csv", "Invalid value for --ratings: 7 ratings do not fit"),
    (["--users", "0"], "x.csv", "Invalid value for --users"),
    ([], "no/such/folder/x.csv", "Invalid value for --out"),
])
def test_cli_refuses_nonsense_in_one_line(tmp_path: Path, args: list[str], out: str, words: str) -> None:
    result = CliRunner().invoke(cli, ["synth", *args, "--out", str(tmp_path / out)])
    assert result.exit_code == 2
    assert words in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_help_has_an_example() -> None:
    result = CliRunner().invoke(cli, ["synth", "--help"])
    assert result.exit_code == 0 and "recae synth --users" in result.output
