"""Train/test splits of a RatingMatrix as pure functions: no database (except the two loaders at the end), no torch.

Every split returns a frozen :class:`Split` whose ``train`` and ``test`` share the input's IdIndex, are
disjoint, and together hold every input rating. Randomness comes only from ``numpy.random.default_rng(seed)``,
so a split is reproduced from its :class:`SplitSpec` (name, test fraction, seed) and the data. Cost is
O(nnz) apart from short per-user sorts done in C (``scipy.sparse`` ``sort_indices``).

Split names:
    random             each rating goes to test with the same chance; exactly round(f * nnz) test ratings
    per-user           round(f * n_u) of each user's ratings, at random; a user with >= 2 ratings keeps >= 1
    temporal           one global time cut: the latest round(f * nnz) ratings by timestamp are the test set
    temporal-per-user  each user's latest round(f * n_u) ratings; a user with >= 2 ratings keeps >= 1
    u1..u5, ua, ub     the canonical ml-100k folds: test = the listed (user_id, movie_id) pairs
    file               the pairs of a ratings CSV (``recae train --test-ratings``); each must be a stored rating
                       with the same value. The spec keeps the file's absolute path and sha256: the split is
                       rebuilt from that file, and refused (DataError) once the file is gone or changed.

Timestamp 0 means "unknown": such a rating cannot be placed in time, so the temporal splits always keep it
in train (and never count it as one of the latest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recae.errors import ArgumentError, DataError
from recae.store.matrix import RatingMatrix

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.engine import Engine

    from recae.store.ingest import RatingsFile

CANONICAL_FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
GENERATED_SPLITS = ("random", "per-user", "temporal", "temporal-per-user")
FILE_SPLIT = "file"
SPLIT_NAMES = GENERATED_SPLITS + CANONICAL_FOLDS + (FILE_SPLIT,)


@dataclass(frozen=True)
class SplitSpec:
    """How to split: a name from SPLIT_NAMES, the share of ratings for test, and the random seed.

    ``test_fraction`` is ignored by the canonical folds and file splits (their test sets are fixed); ``seed`` by
    the temporal, canonical and file splits (they are deterministic). A file split also carries the test file's
    absolute ``path`` and ``sha256``, so a stored spec names exactly which file held the test ratings.
    """

    name: str
    test_fraction: float = 0.1
    seed: int = 0
    path: str = ""  # file split only: the test ratings file
    sha256: str = ""  # file split only: its sha256 when the split was made

    def __post_init__(self) -> None:
        if self.name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {self.name!r}; choose one of {', '.join(SPLIT_NAMES)}")
        _check_fraction(self.test_fraction, "test_fraction")
        if self.is_file != bool(self.path and self.sha256):
            raise ValueError("a file split needs the test file's path and sha256, and only a file split has them")

    @property
    def is_canonical(self) -> bool:
        return self.name in CANONICAL_FOLDS

    @property
    def is_file(self) -> bool:
        return self.name == FILE_SPLIT

    @classmethod
    def of_file(cls, held: RatingsFile) -> SplitSpec:
        """The spec of a split whose test set is ``held`` (see ``file_split``)."""
        return cls(FILE_SPLIT, path=str(held.path), sha256=held.sha256)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "test_fraction": self.test_fraction, "seed": self.seed}
        if self.is_file:
            data.update(path=self.path, sha256=self.sha256)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SplitSpec:
        return cls(name=str(data["name"]), test_fraction=float(data.get("test_fraction", 0.1)),
                   seed=int(data.get("seed", 0)), path=str(data.get("path", "")), sha256=str(data.get("sha256", "")))


@dataclass(frozen=True, eq=False)
class Split:
    """Disjoint train and test ratings that together make the matrix they came from (one shared IdIndex)."""

    spec: SplitSpec
    train: RatingMatrix
    test: RatingMatrix


def _check_fraction(fraction: float, what: str) -> None:
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"{what} must be between 0 and 1 (exclusive), got {fraction}")


def _split_by_mask(matrix: RatingMatrix, spec: SplitSpec, test_mask: np.ndarray) -> Split:
    return Split(spec=spec, train=matrix.subset(~test_mask), test=matrix.subset(test_mask))


def _sample_mask(n: int, k: int, rng: np.random.Generator, candidates: np.ndarray | None = None) -> np.ndarray:
    """(n,) bool with exactly ``k`` True entries drawn uniformly (among ``candidates`` positions if given)."""
    mask = np.zeros(n, dtype=bool)
    pool = n if candidates is None else candidates.size
    k = min(k, pool)
    if k > 0:
        picked = rng.choice(pool, size=k, replace=False)
        mask[picked if candidates is None else candidates[picked]] = True
    return mask


def _local_positions(indptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, local): for every stored entry its row and its position inside that row; both (nnz,) int64."""
    lengths = np.diff(indptr)
    rows = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    local = np.arange(int(indptr[-1]), dtype=np.int64) - np.repeat(indptr[:-1].astype(np.int64), lengths)
    return rows, local


def _order_within_rows(indptr: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Positions of all entries, each row's segment sorted by ``keys`` ascending, ties by position.

    Rows stay where they are, so the result is a permutation of 0..nnz-1 that only reorders inside rows.
    The per-row sorts run in C (CSR ``sort_indices``) on the key ``keys * max_row_length + local position``.
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    nnz = int(indptr[-1])
    if nnz == 0:
        return np.zeros(0, np.int64)
    rows, local = _local_positions(indptr)
    longest = int(np.diff(indptr).max())
    keys = np.asarray(keys, dtype=np.int64)
    if int(keys.min()) < 0 or int(keys.max()) >= (2**62) // longest:
        return np.lexsort((local, keys, rows))
    composite = keys * longest + local  # unique inside a row, so the order is fully determined
    table = sp.csr_matrix((np.arange(nnz, dtype=np.int64), composite, indptr),
                          shape=(indptr.size - 1, int(composite.max()) + 1))
    table.has_sorted_indices = False
    table.sort_indices()
    return np.asarray(table.data, dtype=np.int64)


def _first_per_row(matrix: RatingMatrix, keys: np.ndarray, take: np.ndarray) -> np.ndarray:
    """(nnz,) bool: in every row u, the ``take[u]`` entries with the smallest ``keys``."""
    indptr = matrix.csr.indptr
    order = _order_within_rows(indptr, keys)
    rows, local = _local_positions(indptr)
    mask = np.zeros(matrix.nnz, dtype=bool)
    mask[order[local < take[rows]]] = True  # ``order`` keeps row segments, so rows/local index it too
    return mask


def _per_user_quota(counts: np.ndarray, eligible: np.ndarray, fraction: float) -> np.ndarray:
    """round(fraction * n_u) per user, at most the eligible ratings and at most n_u - 1 (train keeps one)."""
    quota = np.rint(fraction * counts).astype(np.int64)
    return np.clip(np.minimum(quota, np.minimum(eligible, counts - 1)), 0, None)


def random_split(matrix: RatingMatrix, test_fraction: float = 0.1, seed: int = 0) -> Split:
    """Exactly round(test_fraction * nnz) ratings, drawn uniformly without replacement, go to test."""
    spec = SplitSpec("random", test_fraction, seed)
    rng = np.random.default_rng(seed)
    return _split_by_mask(matrix, spec, _sample_mask(matrix.nnz, round(test_fraction * matrix.nnz), rng))


def per_user_split(matrix: RatingMatrix, test_fraction: float = 0.1, seed: int = 0) -> Split:
    """Each user u holds out round(test_fraction * n_u) random ratings; users with >= 2 ratings keep >= 1."""
    spec = SplitSpec("per-user", test_fraction, seed)
    rng = np.random.default_rng(seed)
    counts = np.diff(matrix.csr.indptr).astype(np.int64)
    quota = _per_user_quota(counts, counts, test_fraction)
    keys = rng.integers(0, 2**40, matrix.nnz)
    return _split_by_mask(matrix, spec, _first_per_row(matrix, keys, quota))


def temporal_split(matrix: RatingMatrix, test_fraction: float = 0.1, seed: int = 0) -> Split:
    """One global cut: the round(test_fraction * nnz) latest ratings by timestamp form the test set.

    Ratings with an unknown timestamp (0) always stay in train. Ties at the cut go to test in CSR order
    (by user, then movie), so the split is deterministic; ``seed`` is recorded but unused.

    Raises:
        DataError: fewer ratings with a known timestamp than the test set needs.
    """
    spec = SplitSpec("temporal", test_fraction, seed)
    n_test = round(test_fraction * matrix.nnz)
    stamps = matrix.timestamps
    known = np.flatnonzero(stamps > 0)
    if known.size < max(n_test, 1):
        raise DataError(
            f"a temporal split with test_fraction {test_fraction} needs {max(n_test, 1)} ratings with a known "
            f"timestamp, but only {known.size} of {matrix.nnz} have one (timestamp 0 means unknown); "
            "use the 'random' or 'per-user' split instead"
        )
    mask = np.zeros(matrix.nnz, dtype=bool)
    if n_test > 0:
        known_stamps = stamps[known]
        cut = np.partition(known_stamps, known_stamps.size - n_test)[known_stamps.size - n_test]
        later = known[known_stamps > cut]
        at_cut = known[known_stamps == cut]
        mask[later] = True
        mask[at_cut[: n_test - later.size]] = True
    return _split_by_mask(matrix, spec, mask)


def temporal_per_user_split(matrix: RatingMatrix, test_fraction: float = 0.1, seed: int = 0) -> Split:
    """Each user u holds out their latest round(test_fraction * n_u) ratings with a known timestamp.

    Unknown timestamps (0) stay in train; users with >= 2 ratings keep >= 1; ties by movie order.
    Deterministic; ``seed`` is recorded but unused.
    """
    spec = SplitSpec("temporal-per-user", test_fraction, seed)
    indptr = matrix.csr.indptr
    counts = np.diff(indptr).astype(np.int64)
    stamps = matrix.timestamps
    known = stamps > 0
    rows, _ = _local_positions(indptr)
    known_per_user = np.bincount(rows[known], minlength=counts.size).astype(np.int64)
    quota = _per_user_quota(counts, known_per_user, test_fraction)
    newest = int(stamps.max()) if matrix.nnz else 0
    keys = np.where(known, newest - stamps, newest + 1)  # latest first; unknown last, never within the quota
    return _split_by_mask(matrix, spec, _first_per_row(matrix, keys, quota))


def canonical_split(
    matrix: RatingMatrix, name: str, test_user_ids: np.ndarray, test_movie_ids: np.ndarray
) -> Split:
    """The fixed fold ``name``: its (user_id, movie_id) pairs are the test set, every other rating is train.

    Raises:
        DataError: a listed pair is not a rating of ``matrix`` (the store and the fold disagree).
    """
    spec = SplitSpec(name)
    if not spec.is_canonical:
        raise ValueError(f"{name!r} is not a canonical fold; choose one of {', '.join(CANONICAL_FOLDS)}")
    users = np.asarray(test_user_ids, dtype=np.int64)
    movies = np.asarray(test_movie_ids, dtype=np.int64)
    if users.shape != movies.shape:
        raise ValueError("test_user_ids and test_movie_ids must have the same length")
    found, missing = _stored_positions(matrix, users, movies)
    if missing.any():
        k = int(np.flatnonzero(missing)[0])
        raise DataError(
            f"fold {name} lists {int(missing.sum())} ratings that are not in the data, e.g. user {users[k]} "
            f"movie {movies[k]}; re-ingest the dataset the fold came from"
        )
    mask = np.zeros(matrix.nnz, dtype=bool)
    mask[found] = True
    return _split_by_mask(matrix, spec, mask)


def _stored_positions(matrix: RatingMatrix, users: np.ndarray, movies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found, missing) for (user_id, movie_id) pairs: each pair's position in CSR order, and True where the
    matrix holds no such rating (``found`` is then meaningless). O((nnz + n) log nnz)."""
    index = matrix.index
    rows = index.lookup_users(users)
    cols = index.lookup_movies(movies)
    rows_all, cols_all, _ = matrix.coo()
    keys_all = rows_all * index.n_movies + cols_all  # ascending: CSR order is (row, col)
    wanted = rows * index.n_movies + cols
    found = np.minimum(np.searchsorted(keys_all, wanted), max(matrix.nnz - 1, 0))
    missing = (rows < 0) | (cols < 0) | (matrix.nnz == 0)
    if matrix.nnz:
        missing |= keys_all[found] != wanted
    return found, missing


def file_split(matrix: RatingMatrix, held: RatingsFile) -> Split:
    """The ratings listed in ``held`` are the test set, every other rating is train.

    The file only says which ratings to hold out; their values come from the store. A listed value that differs
    from the stored one is refused rather than silently replaced: the file and the store disagree.

    Raises:
        DataError: naming the file, line and first pair that is not a stored rating or has another value.
    """
    found, missing = _stored_positions(matrix, held.user_ids, held.movie_ids)
    if missing.any():
        k = int(np.flatnonzero(missing)[0])
        raise DataError(f"{held.where(k)} is not a stored rating ({int(missing.sum())} of the file's "
                        f"{missing.size} pairs are not); --test-ratings lists ratings already in the store")
    stored = matrix.csr.data[found].astype(np.float64)
    differs = ~np.isclose(stored, held.ratings, rtol=0.0, atol=1e-6)
    if differs.any():
        k = int(np.flatnonzero(differs)[0])
        raise DataError(f"{held.where(k)} is rated {held.ratings[k]:g} in the file but {stored[k]:g} in the store "
                        f"({int(differs.sum())} pairs differ); re-ingest the file or fix it")
    mask = np.zeros(matrix.nnz, dtype=bool)
    mask[found] = True
    return _split_by_mask(matrix, SplitSpec.of_file(held), mask)


def make_split(
    matrix: RatingMatrix, spec: SplitSpec, fold_pairs: tuple[np.ndarray, np.ndarray] | None = None,
    held: RatingsFile | None = None,
) -> Split:
    """Dispatch on ``spec.name``; canonical folds need ``fold_pairs`` = (user_ids, movie_ids) of the test set,
    file splits the test file ``held`` (read by ``recae.store.ingest.read_ratings_file``; use split_from_store)."""
    if spec.is_file:
        if held is None:
            raise ValueError("a file split needs its test file: use split_from_store or read_ratings_file")
        split = file_split(matrix, held)
        return Split(spec=spec, train=split.train, test=split.test)
    if spec.is_canonical:
        if fold_pairs is None:
            raise ValueError(f"fold {spec.name} needs its test pairs: use split_from_store or load_fold_pairs")
        split = canonical_split(matrix, spec.name, *fold_pairs)
        return Split(spec=spec, train=split.train, test=split.test)
    builders = {
        "random": random_split,
        "per-user": per_user_split,
        "temporal": temporal_split,
        "temporal-per-user": temporal_per_user_split,
    }
    return builders[spec.name](matrix, spec.test_fraction, spec.seed)


def holdout_validation(train: RatingMatrix, fraction: float, seed: int) -> tuple[RatingMatrix, RatingMatrix]:
    """(fit, validation): about ``fraction`` of the training ratings, drawn at random, for early stopping.

    One random rating of every user and one of every movie are kept in ``fit``, so every row and column that
    has training data still has some; when that leaves too few candidates the validation part is smaller.
    Only training ratings are used, never test ones.
    """
    _check_fraction(fraction, "fraction")
    rng = np.random.default_rng(seed)
    nnz = train.nnz
    protected = np.zeros(nnz, dtype=bool)
    if nnz:
        indptr = train.csr.indptr.astype(np.int64)
        counts = np.diff(indptr)
        rated = np.flatnonzero(counts > 0)
        protected[indptr[rated] + (rng.random(rated.size) * counts[rated]).astype(np.int64)] = True
        by_movie = sp.csr_matrix((np.arange(nnz, dtype=np.int64), train.csr.indices, indptr),
                                 shape=train.shape).tocsc()  # data = CSR position, grouped by column
        col_ptr = by_movie.indptr.astype(np.int64)
        col_counts = np.diff(col_ptr)
        watched = np.flatnonzero(col_counts > 0)
        pick = col_ptr[watched] + (rng.random(watched.size) * col_counts[watched]).astype(np.int64)
        protected[np.asarray(by_movie.data, dtype=np.int64)[pick]] = True
    mask = _sample_mask(nnz, round(fraction * nnz), rng, candidates=np.flatnonzero(~protected))
    return train.subset(~mask), train.subset(mask)


def load_fold_pairs(engine: Engine, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(user_ids, movie_ids) of canonical fold ``name``'s test set, read from the ``fold_tests`` table.

    Raises:
        DataError: the store has no such fold; the message lists the folds it has.
    """
    from sqlalchemy import select

    from recae.store.db import FoldTest

    with engine.connect() as conn:
        rows = conn.execute(
            select(FoldTest.user_id, FoldTest.movie_id)
            .where(FoldTest.split == name)
            .order_by(FoldTest.user_id, FoldTest.movie_id)
        ).all()
        if not rows:
            available = conn.execute(select(FoldTest.split).distinct().order_by(FoldTest.split)).scalars().all()
    if not rows:
        have = ", ".join(available) if available else "none"
        raise DataError(
            f"canonical fold {name!r} is not in the store (available folds: {have}); "
            "`recae ingest ml-100k` stores u1..u5, ua and ub"
        )
    pairs = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def load_test_file(spec: SplitSpec) -> RatingsFile:
    """The test file of a file split, read again from its recorded path; the same file or a DataError.

    A file split is only reproducible from the very file it was made with, so a moved or edited file is refused
    (not silently re-read): ``recae evaluate --ratings FILE`` scores a model on any file instead.
    """
    from pathlib import Path

    from recae.store.ingest import read_ratings_file

    if not Path(spec.path).is_file():
        raise DataError(f"the test ratings file {spec.path} of this split is gone (sha256 {spec.sha256[:12]}...); "
                        "put it back, or score the model with `recae evaluate --ratings FILE`")
    held = read_ratings_file(spec.path)
    if held.sha256 != spec.sha256:
        raise DataError(f"the test ratings file {spec.path} changed since the split was made (sha256 "
                        f"{spec.sha256[:12]}... then, {held.sha256[:12]}... now); restore it, or score the model "
                        "with `recae evaluate --ratings FILE`")
    return held


def split_from_store(engine: Engine, matrix: RatingMatrix, spec: SplitSpec) -> Split:
    """``make_split``, reading a canonical fold's test pairs from the store, or a file split's test file."""
    pairs = load_fold_pairs(engine, spec.name) if spec.is_canonical else None
    held = load_test_file(spec) if spec.is_file else None
    return make_split(matrix, spec, pairs, held)


def choose_split(split: str = "random", test_fraction: float = 0.1, seed: int = 0,
               test_file: str | Path | None = None) -> SplitSpec:
    """The split a training holds out or an evaluation scores, as ``recae train``, ``recae evaluate`` and the Python
    API name it: a named split (generated ones seeded by ``seed``), or the stored ratings listed in ``test_file``
    (``--test-ratings``).

    Raises ArgumentError for an unknown split or a fraction outside (0, 1), DataError for an unreadable file.
    """
    if test_file is not None:
        from recae.store.ingest import read_ratings_file

        return SplitSpec.of_file(read_ratings_file(test_file))
    try:
        return SplitSpec(split, test_fraction=test_fraction, seed=seed)
    except ValueError as err:
        raise ArgumentError(str(err)) from None
