"""IdIndex and RatingMatrix: id <-> position, CSR construction, subsets, fingerprints and loading from a real store."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from recae.errors import EmptyStoreError, UnknownMovieError, UnknownUserError
from recae.store.db import Rating
from recae.store.matrix import IdIndex, RatingMatrix, _matrix_from_sorted_columns
from recae.store.readers import _NotEncodable, _pg_array, _read_generic, _read_postgresql, _read_sqlite
from tests.support.synthetic import planted_low_rank


def _triples(matrix: RatingMatrix) -> set[tuple[int, int, float, int]]:
    rows, cols, values = matrix.coo()
    users, movies = matrix.index.user_ids[rows], matrix.index.movie_ids[cols]
    return set(zip(users.tolist(), movies.tolist(), values.tolist(), matrix.timestamps.tolist(), strict=True))


def _insert_ratings(engine, users, movies, values, stamps) -> None:  # type: ignore[no-untyped-def]
    rows = [
        {"user_id": int(u), "movie_id": int(m), "rating": float(r), "timestamp": None if t is None else int(t)}
        for u, m, r, t in zip(users, movies, values, stamps, strict=True)
    ]
    with engine.begin() as conn:
        conn.execute(insert(Rating), rows)


# ------------------------------------------------------------------------------------------------ IdIndex


def test_unknown_user_names_the_known_range() -> None:
    index = IdIndex(np.arange(1, 944), np.arange(1, 1683))
    with pytest.raises(UnknownUserError, match=r"user 9999 is unknown; known users are 1\.\.943"):
        index.user_row(9999)
    with pytest.raises(UnknownMovieError, match=r"movie 0 is unknown; known movies are 1\.\.1682"):
        index.movie_col(0)
    with pytest.raises(UnknownUserError, match="user 5000"):
        index.user_rows(np.array([1, 5000, 2]))
    assert index.user_row(943) == 942 and index.movie_col(1) == 0


def test_index_rejects_unsorted_or_repeated_ids() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        IdIndex(np.array([1, 3, 2]), np.array([1]))
    with pytest.raises(ValueError, match="strictly increasing"):
        IdIndex(np.array([1]), np.array([4, 4]))


@settings(max_examples=60, deadline=None)
@given(
    ids=st.sets(st.one_of(st.integers(0, 300), st.integers(-(2**40), 2**40)), min_size=1, max_size=60),
    queries=st.lists(st.integers(-(2**41), 2**41), max_size=30),
)
def test_vectorised_lookup_agrees_with_a_dict(ids: set[int], queries: list[int]) -> None:
    """Compact ids use a dense table, sparse ids a binary search; both must give the same answers."""
    sorted_ids = np.array(sorted(ids), dtype=np.int64)
    index = IdIndex(sorted_ids, sorted_ids)
    position = {v: i for i, v in enumerate(sorted(ids))}
    probe = np.array(queries + sorted(ids)[:5], dtype=np.int64)
    expected = np.array([position.get(int(q), -1) for q in probe], dtype=np.int64)
    assert np.array_equal(index.lookup_users(probe), expected)
    assert np.array_equal(index.lookup_movies(probe), expected)
    known = probe[expected >= 0]
    assert np.array_equal(index.user_rows(known), expected[expected >= 0])
    for q, e in zip(probe.tolist(), expected.tolist(), strict=True):
        assert index.has_user(q) == (e >= 0)


def test_index_json_round_trip() -> None:
    index = IdIndex(np.array([3, 7, 100]), np.array([1, 2, 5000]))
    again = IdIndex.from_json(index.to_json())
    assert np.array_equal(again.user_ids, index.user_ids) and np.array_equal(again.movie_ids, index.movie_ids)
    assert again.movie_col(5000) == 2


# ------------------------------------------------------------------------------------------------ build


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_from_ids_round_trips_any_order(data: st.DataObject) -> None:
    pairs = data.draw(st.sets(st.tuples(st.integers(1, 40), st.integers(1, 25)), min_size=1, max_size=80))
    pairs_list = sorted(pairs)
    values = data.draw(st.lists(st.sampled_from([0.5, 1.0, 2.5, 4.0, 5.0]), min_size=len(pairs_list),
                                max_size=len(pairs_list)))
    stamps = data.draw(st.lists(st.integers(0, 2**40), min_size=len(pairs_list), max_size=len(pairs_list)))
    perm = data.draw(st.permutations(range(len(pairs_list))))
    users = np.array([p[0] for p in pairs_list])
    movies = np.array([p[1] for p in pairs_list])
    sorted_matrix = RatingMatrix.from_ids(users, movies, np.array(values), np.array(stamps))
    shuffled = RatingMatrix.from_ids(users[perm], movies[perm], np.array(values)[perm], np.array(stamps)[perm])
    expected = set(zip(users.tolist(), movies.tolist(), values, stamps, strict=True))
    assert _triples(sorted_matrix) == expected == _triples(shuffled)
    assert sorted_matrix.fingerprint() == shuffled.fingerprint()
    assert sorted_matrix.csr.has_sorted_indices and sorted_matrix.csr.dtype == np.float32
    assert sorted_matrix.nnz == len(pairs_list) and sorted_matrix.timestamps.dtype == np.int64
    dense = sorted_matrix.csr.toarray()
    for u, m, v in zip(users, movies, values, strict=True):
        assert dense[sorted_matrix.index.user_row(u), sorted_matrix.index.movie_col(m)] == np.float32(v)


def test_duplicates_are_rejected_naming_user_and_movie() -> None:
    with pytest.raises(ValueError, match="duplicate rating for user 7 and movie 3"):
        RatingMatrix.from_ids(np.array([7, 1, 7]), np.array([3, 3, 3]), np.array([1.0, 2.0, 3.0]))


def test_fingerprint_changes_with_any_rating_or_timestamp() -> None:
    base = planted_low_rank(n_users=30, n_movies=20, seed=1).observed
    rows, cols, values = base.coo()
    same = RatingMatrix.from_positions(rows, cols, values.copy(), base.timestamps.copy(), base.index)
    assert same.fingerprint() == base.fingerprint()
    changed_value = values.copy()
    changed_value[5] += 0.5
    changed_time = base.timestamps.copy()
    changed_time[5] += 1
    assert RatingMatrix.from_positions(rows, cols, changed_value, base.timestamps, base.index).fingerprint() \
        != base.fingerprint()
    assert RatingMatrix.from_positions(rows, cols, values, changed_time, base.index).fingerprint() \
        != base.fingerprint()


def test_subset_keeps_index_and_exactly_the_masked_ratings() -> None:
    base = planted_low_rank(n_users=40, n_movies=30, seed=2).observed
    mask = np.random.default_rng(0).random(base.nnz) < 0.3
    part, rest = base.subset(mask), base.subset(~mask)
    assert part.index is base.index and rest.index is base.index
    assert part.nnz == int(mask.sum()) and rest.nnz == base.nnz - part.nnz
    assert _triples(part) | _triples(rest) == _triples(base)
    assert not _triples(part) & _triples(rest)
    assert np.allclose((part.csr + rest.csr).toarray(), base.csr.toarray())


def test_rating_scale_and_empty_matrix() -> None:
    m = RatingMatrix.from_ids(np.array([1, 2]), np.array([5, 6]), np.array([0.5, 4.5]))
    assert m.rating_scale() == (0.5, 4.5)
    with pytest.raises(EmptyStoreError):
        m.subset(np.zeros(2, dtype=bool)).rating_scale()


# ------------------------------------------------------------------------------------------------ from_db
# Tests marked with both backends run on SQLite and on a throwaway PostgreSQL server (tests/support/pg_server.py).

BOTH = pytest.mark.backends("sqlite", "postgresql")


@BOTH
def test_from_db_matches_from_ids_on_a_real_store(engine) -> None:  # type: ignore[no-untyped-def]
    planted = planted_low_rank(n_users=60, n_movies=40, seed=3).observed
    rows, cols, values = planted.coo()
    users = planted.index.user_ids[rows] * 7 + 11  # non-contiguous ids
    movies = planted.index.movie_ids[cols] * 3
    halves = np.round(values * 2) / 2
    stamps = [None if i % 17 == 0 else int(t) for i, t in enumerate(planted.timestamps)]
    order = np.random.default_rng(0).permutation(rows.size)  # insertion order must not matter
    _insert_ratings(engine, users[order], movies[order], halves[order], [stamps[i] for i in order])

    loaded = RatingMatrix.from_db(engine)
    expected_stamps = np.array([0 if t is None else t for t in stamps])
    expected = RatingMatrix.from_ids(users, movies, halves, expected_stamps)
    assert loaded.fingerprint() == expected.fingerprint()
    assert _triples(loaded) == _triples(expected)
    assert (loaded.timestamps == 0).sum() == sum(t is None for t in stamps)
    assert RatingMatrix.from_db(engine).fingerprint() == loaded.fingerprint()  # stable


@pytest.mark.backends("sqlite")  # 64-bit ids: PostgreSQL's INTEGER columns cannot hold them
def _assert_fast_path_exact(engine, read_fast, users: list, movies: list, values: list,  # type: ignore[no-untyped-def]
                            stamps: list) -> None:
    """Store the ratings; the fast reader must read them (not step aside) exactly as the generic one and as given."""
    _insert_ratings(engine, users, movies, values, stamps)
    fast = read_fast(engine)
    generic = _read_generic(engine)
    assert fast is not None  # every value given can be read exactly by the fast path
    from_fast, from_generic = _matrix_from_sorted_columns(fast), _matrix_from_sorted_columns(generic)
    assert from_fast.fingerprint() == from_generic.fingerprint()
    expected = RatingMatrix.from_ids(np.array(users), np.array(movies), np.array(values),
                                     np.array([0 if t is None else t for t in stamps]))
    assert RatingMatrix.from_db(engine).fingerprint() == expected.fingerprint()
    assert _triples(from_fast) == _triples(expected)


def test_fast_and_generic_paths_agree_on_unusual_values(engine) -> None:  # type: ignore[no-untyped-def]
    """Off-grid ratings, huge and negative ids, pre-1970 timestamps: the fast path must stay exact or step aside."""
    users = [1, 1, 2, 5_000_000_000, -3]
    movies = [10**12, 2, 2, 7, 1]
    values = [3.7, 4.5, 1.0, 0.25, 5.0]
    stamps = [None, -86_400, 2**40, 0, 1_000_000_000]
    _assert_fast_path_exact(engine, _read_sqlite, users, movies, values, stamps)


@pytest.mark.backends("postgresql")
def test_postgresql_fast_and_generic_paths_agree_on_unusual_values(  # type: ignore[no-untyped-def]
    engine, monkeypatch
) -> None:
    """Off-grid ratings, extreme and negative 32-bit ids, pre-1970 and huge timestamps, unknown ones."""
    import recae.store.readers as readers_module

    monkeypatch.setattr(readers_module, "_PG_CHUNK_ROWS", 2)  # several ranges, spread over both readers
    users = [1, 1, 2, 2**31 - 1, -3, -(2**31), 7]
    movies = [2**31 - 1, 2, 2, 7, 1, 1, -5]
    values = [3.7, 4.5, 1.0, 0.25, 5.0, 1e-3, 2.0 / 3.0]
    stamps = [None, -86_400, 2**40, 0, 1_000_000_000, 2**62, None]
    _assert_fast_path_exact(engine, _read_postgresql, users, movies, values, stamps)


def test_pg_array_refuses_what_it_cannot_read_exactly() -> None:
    import struct

    def array(values: list[int], has_nulls: int = 0, width: int = 4) -> bytes:
        body = b"".join(struct.pack(">ii", width, v) if width == 4 else struct.pack(">iq", width, v) for v in values)
        return struct.pack(">iiiii", 1, has_nulls, 23, len(values), 1) + body

    assert _pg_array(array([3, -1, 2**31 - 1]), ">i4", 4).tolist() == [3, -1, 2**31 - 1]
    assert _pg_array(None, ">i4", 4).size == 0
    with pytest.raises(_NotEncodable):
        _pg_array(array([1, 2], has_nulls=1), ">i4", 4)
    with pytest.raises(_NotEncodable):
        _pg_array(array([1, 2], width=8), ">i4", 4)
    for cut in (3, 8):
        with pytest.raises(_NotEncodable):
            _pg_array(array([1, 2])[:-cut], ">i4", 4)  # truncated


@pytest.mark.backends("postgresql")
def test_postgresql_readers_share_one_snapshot(engine, store_url, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A commit landing between the first reader's start and the others' must be invisible to all of them."""
    from sqlalchemy import create_engine, text

    import recae.store.readers as readers_module

    monkeypatch.setattr(readers_module, "_PG_CHUNK_ROWS", 5)
    planted = planted_low_rank(n_users=40, n_movies=10, seed=5).observed
    rows, cols, values = planted.coo()
    users, movies = planted.index.user_ids[rows], planted.index.movie_ids[cols]
    _insert_ratings(engine, users, movies, np.round(values), planted.timestamps)
    other = create_engine(store_url)
    real_snapshot = readers_module._PostgresSnapshot

    def snapshot_then_commit(engine_, snapshot_id):  # type: ignore[no-untyped-def]
        made = real_snapshot(engine_, snapshot_id)
        if snapshot_id is None:  # the exporter exists; change every rating before the importers start
            with other.begin() as conn:
                conn.execute(text("UPDATE ratings SET rating = rating + 100"))
        return made

    monkeypatch.setattr(readers_module, "_PostgresSnapshot", snapshot_then_commit)
    try:
        loaded = RatingMatrix.from_db(engine)
    finally:
        other.dispose()
    assert float(loaded.csr.data.max()) <= 5.0  # no reader saw the later commit
    expected = RatingMatrix.from_ids(users, movies, np.round(values), planted.timestamps)
    assert loaded.fingerprint() == expected.fingerprint()
    assert float(RatingMatrix.from_db(engine).csr.data.min()) >= 100  # and a new load does


@BOTH
def test_from_db_reads_many_ranges(engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Small chunks force many user-id ranges, including empty ones; nothing may be lost or repeated."""
    import recae.store.readers as readers_module

    monkeypatch.setattr(readers_module, "_SQLITE_CHUNK_ROWS", 7)
    monkeypatch.setattr(readers_module, "_PG_CHUNK_ROWS", 7)
    planted = planted_low_rank(n_users=50, n_movies=12, seed=4).observed
    rows, cols, values = planted.coo()
    users = planted.index.user_ids[rows] ** 2  # gaps between user ids leave some ranges empty
    _insert_ratings(engine, users, planted.index.movie_ids[cols], np.round(values), planted.timestamps)
    loaded = RatingMatrix.from_db(engine)
    assert loaded.nnz == planted.nnz
    assert loaded.fingerprint() == RatingMatrix.from_ids(
        users, planted.index.movie_ids[cols], np.round(values), planted.timestamps
    ).fingerprint()


@BOTH
def test_from_db_on_an_empty_store_says_what_to_do(engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EmptyStoreError, match="recae ingest"):
        RatingMatrix.from_db(engine)


@pytest.mark.backends("postgresql")
def test_from_db_on_postgresql_ignores_uncommitted_writes(engine, store_url) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine, text

    _insert_ratings(engine, [1, 1, 2], [10, 20, 10], [4.0, 3.5, 2.0], [1, 2, 3])
    other = create_engine(store_url)
    try:
        with other.connect() as writer:
            writer.execute(text('INSERT INTO ratings (user_id, movie_id, rating, "timestamp") VALUES (3, 30, 5.0, 4)'))
            writer.execute(text("UPDATE ratings SET rating = 1.0 WHERE user_id = 1"))  # row locks held
            loaded = RatingMatrix.from_db(engine)
            writer.rollback()
    finally:
        other.dispose()
    assert _triples(loaded) == {(1, 10, 4.0, 1), (1, 20, 3.5, 2), (2, 10, 2.0, 3)}


@pytest.mark.backends("sqlite")  # SQLite's write lock; PostgreSQL's case is the test above
def test_from_db_while_another_connection_holds_the_write_lock(  # type: ignore[no-untyped-def]
    engine, store_url, monkeypatch
) -> None:
    """A writer mid-transaction must neither block the load for long nor leak its uncommitted rows into it."""
    import sqlite3

    import recae.store.readers as readers_module

    monkeypatch.setattr(readers_module, "_SNAPSHOT_LOCK_WAIT_MS", 50)
    _insert_ratings(engine, [1, 1, 2], [10, 20, 10], [4.0, 3.5, 2.0], [1, 2, 3])
    writer = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO ratings (user_id, movie_id, rating, timestamp) VALUES (3, 30, 5.0, 4)")
        loaded = RatingMatrix.from_db(engine)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert _triples(loaded) == {(1, 10, 4.0, 1), (1, 20, 3.5, 2), (2, 10, 2.0, 3)}


def test_from_db_on_an_in_memory_store_takes_the_generic_path() -> None:
    from recae.store.db import open_store

    engine = open_store("sqlite://")
    try:
        _insert_ratings(engine, [2, 1], [5, 5], [1.5, 4.0], [None, 7])
        loaded = RatingMatrix.from_db(engine)
    finally:
        engine.dispose()
    assert _triples(loaded) == {(1, 5, 4.0, 7), (2, 5, 1.5, 0)}
