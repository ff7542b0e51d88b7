"""Synthetic ratings shaped like MovieLens, with a planted low-rank structure a model can learn.

Why: ML-25M-sized data for benchmarks and scale tests without downloading (or committing) MovieLens, and a
known right answer for accuracy tests. The defaults mimic ML-25M's shape:

* **Film popularity** is a power law: the film of popularity rank p (0-based) is drawn with probability
  ``w_p = F(p + 1) - F(p)``, where F is the CDF on [0, M) of the density ``(x + c)^-a`` (a discretised Zipf law,
  ``a = popularity_exponent``, ``c = popularity_offset``). Sampling inverts F in closed form. Ranks map to
  movie ids through a random permutation, so id says nothing about popularity.
* **User activity** is heavy-tailed: ``k_u = m + e_u``, ``m = min_per_user`` (lowered to R // 2N when R is
  small), where the extras split ``R - N m`` in proportion to log-normal weights (sigma ``activity_sigma``),
  capped at ``max_user_fraction x M`` per user (or what R needs), so the counts add up to exactly R.
* **Which films**: each user's k_u films are a weighted sample *without replacement* from w (successive
  sampling). Light users draw with replacement and drop repeats (``np.unique`` on user * M + col), topping up
  until full: the first k_u distinct draws are exactly a successive sample. Heavy users (k_u > M / 8) take the
  Gumbel top-k of ``log w + Gumbel`` over all M films instead (same distribution; O(M) <= O(8 k_u)).
  Either way cost is O(R), never O(N x M).
* **Ratings**: ``r = clip(round_half(mu + b_u + b_i + U_u . V_i / sqrt(rank) + eps), 0.5, 5)`` with
  ``b_u ~ N(0, user_bias_sd^2)``, ``b_i ~ N(0, movie_bias_sd^2)``, entries of U, V ~ N(0, factor_sd^2),
  ``eps ~ N(0, noise_sd^2)``; round_half(x) = round(2x) / 2.
* **Timestamps** strictly increase within a user over a log-normal span inside ML-25M's time range, and the
  order of a user's films is a random shuffle.

Users are processed in blocks of about ``BLOCK_RATINGS`` ratings, each with its own seed derived from
(seed, block), so the result depends only on the spec. ``recae.ratings_csv`` writes them as a ratings CSV.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

MAX_ID = 2**31 - 1  # ids must fit a 32-bit INTEGER, as ingest requires
MAX_ENTITIES = 100_000_000  # users or movies; memory is O((N + M) x rank + R)
FIRST_TIMESTAMP = 789_652_009  # ML-25M's first and last rating times (1995-01-09 .. 2019-11-21)
LAST_TIMESTAMP = 1_574_327_703
BLOCK_RATINGS = 1 << 20  # ratings generated per block of users
HEAVY_FRACTION = 1 / 8  # users rating more than this fraction of all films use the Gumbel top-k path
LOW, HIGH = 0.5, 5.0  # the half-star scale `recae ingest --ratings` accepts by default

ProgressCallback = Callable[[int], None]


class InvalidSpec(ValueError):
    """A SynthSpec that cannot be generated; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. Defaults other than the sizes reproduce ML-25M's shape and rating spread."""

    n_users: int
    n_movies: int
    n_ratings: int
    rank: int = 8  # dimension of the planted user and film factors
    seed: int = 0
    min_per_user: int = 20  # MovieLens keeps users with >= 20 ratings; lowered to R // 2N when R is small
    start_user_id: int = 1  # user ids are start_user_id .. start_user_id + n_users - 1; movie ids 1 .. n_movies
    popularity_exponent: float = 1.0  # a in the density (x + c)^-a over popularity ranks
    popularity_offset: float = 10.0  # c: flattens the head so the top film is not rated by everyone
    activity_sigma: float = 1.4  # sigma of the log-normal weights of ratings above the minimum
    max_user_fraction: float = 0.6  # no user rates more of the films than this (ML: 44-62%) unless R needs it
    global_mean: float = 3.55  # mu; clipping at 5 brings the mean rating to about 3.5 (ML-25M: 3.53)
    user_bias_sd: float = 0.45
    movie_bias_sd: float = 0.5
    factor_sd: float = 0.8  # U, V entries; the interaction U.V / sqrt(rank) has variance factor_sd^4
    noise_sd: float = 0.5

    def __post_init__(self) -> None:
        names = {"n_users": "users", "n_movies": "movies", "n_ratings": "ratings", "rank": "rank"}
        for name, words in names.items():
            if getattr(self, name) < 1:
                raise InvalidSpec(name, f"{words} must be at least 1, got {getattr(self, name)}")
        for name, words in (("n_users", "users"), ("n_movies", "movies")):
            if getattr(self, name) > MAX_ENTITIES:
                raise InvalidSpec(name, f"{words} must be at most {MAX_ENTITIES:,} (the planted factors take "
                                        f"(users + movies) x rank floats), got {getattr(self, name):,}")
        if not 1 <= self.start_user_id <= MAX_ID - self.n_users + 1:
            raise InvalidSpec("start_user_id", f"the first user id must be in 1..{MAX_ID - self.n_users + 1} so "
                                               f"that {self.n_users} ids fit in 32 bits, got {self.start_user_id}")
        if self.n_ratings > self.n_users * self.n_movies:
            raise InvalidSpec("n_ratings", f"{self.n_ratings} ratings do not fit {self.n_users} users x "
                                           f"{self.n_movies} movies (at most {self.n_users * self.n_movies})")
        if self.n_ratings < self.n_users:
            raise InvalidSpec("n_ratings", f"{self.n_ratings} ratings cannot give each of {self.n_users} users "
                                           f"a rating; ask for at least {self.n_users}")
        if self.min_per_user < 1:
            raise InvalidSpec("min_per_user", f"min_per_user must be at least 1, got {self.min_per_user}")
        if not (self.popularity_exponent >= 0 and self.popularity_offset > 0):
            raise InvalidSpec("popularity_exponent", "popularity_exponent must be >= 0 and popularity_offset > 0")
        if not 0 < self.max_user_fraction <= 1:
            raise InvalidSpec("max_user_fraction", f"max_user_fraction must be in (0, 1], got {self.max_user_fraction}")
        for name in ("activity_sigma", "user_bias_sd", "movie_bias_sd", "factor_sd", "noise_sd"):
            if not getattr(self, name) >= 0:
                raise InvalidSpec(name, f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def effective_min_per_user(self) -> int:
        """The minimum ratings per user actually used: min_per_user, lowered to half the mean R / N when R is
        small (so activity stays heavy-tailed), and never above M or below 1."""
        return max(1, min(self.min_per_user, self.n_ratings // (2 * self.n_users), self.n_movies))


@dataclass(frozen=True, eq=False)
class Planted:
    """The hidden truth behind the ratings (for tests): r ~ mu + b_u + b_i + U_u . V_i / sqrt(rank)."""

    global_mean: float
    user_bias: np.ndarray  # (n_users,) float32, by user row (user_id - start_user_id)
    movie_bias: np.ndarray  # (n_movies,) float32, by movie row (movie_id - 1)
    user_factors: np.ndarray  # (n_users, rank) float32
    movie_factors: np.ndarray  # (n_movies, rank) float32
    popularity: np.ndarray  # (n_movies,) float64, probability of each film per draw; sums to 1

    def expected(self, user_rows: np.ndarray, movie_rows: np.ndarray) -> np.ndarray:
        """Noise-free planted score mu + b_u + b_i + U_u . V_i / sqrt(rank) (before rounding and clipping)."""
        rank = self.user_factors.shape[1]
        dots = np.einsum("nk,nk->n", self.user_factors[user_rows], self.movie_factors[movie_rows])  # (n,)
        return self.global_mean + self.user_bias[user_rows] + self.movie_bias[movie_rows] + dots / math.sqrt(rank)


@dataclass(frozen=True, eq=False)
class SynthRatings:
    """Generated ratings sorted by user then time, and the planted structure behind them."""

    spec: SynthSpec
    user_ids: np.ndarray  # (R,) int64, non-decreasing
    movie_ids: np.ndarray  # (R,) int64 in 1..n_movies
    ratings: np.ndarray  # (R,) float32 in 0.5..5 on half steps
    timestamps: np.ndarray  # (R,) int64 Unix seconds, strictly increasing within a user
    planted: Planted

    @property
    def n_ratings(self) -> int:
        return int(self.user_ids.size)


# ------------------------------------------------------------------------------------------------ popularity


@dataclass(frozen=True)
class _Popularity:
    """Discretised power law over popularity ranks 0..M-1, and the film (column) at each rank."""

    exponent: float
    offset: float
    n_movies: int
    col_of_rank: np.ndarray  # (M,) int64, a permutation

    def _cdf(self, x: np.ndarray) -> np.ndarray:
        a, c = self.exponent, self.offset
        if abs(a - 1.0) < 1e-12:
            return np.log1p(x / c) / math.log1p(self.n_movies / c)
        lo = c ** (1 - a)
        return ((x + c) ** (1 - a) - lo) / ((self.n_movies + c) ** (1 - a) - lo)

    def probabilities(self) -> np.ndarray:
        """(M,) probability of each film (by column) per draw."""
        edges = self._cdf(np.arange(self.n_movies + 1, dtype=np.float64))
        by_rank = np.diff(edges)
        out = np.empty(self.n_movies)
        out[self.col_of_rank] = by_rank
        return out

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n,) columns drawn with replacement by inverting the CDF."""
        u = rng.random(n)
        a, c, m = self.exponent, self.offset, self.n_movies
        if abs(a - 1.0) < 1e-12:
            x = c * np.expm1(u * math.log1p(m / c))
        else:
            lo = c ** (1 - a)
            x = (lo + u * ((m + c) ** (1 - a) - lo)) ** (1 / (1 - a)) - c
        ranks = np.minimum(x.astype(np.int64), m - 1)
        return self.col_of_rank[ranks]


# ------------------------------------------------------------------------------------------------ activity


def _activity(spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    """(N,) ratings per user: min + log-normal shares of the rest, capped at M, adding up to exactly R."""
    n, m = spec.n_users, spec.n_movies
    base = spec.effective_min_per_user
    most = min(m, max(math.ceil(spec.max_user_fraction * m), -(-spec.n_ratings // n)))  # always fits R
    cap = most - base
    weights = rng.lognormal(0.0, spec.activity_sigma, n) if spec.activity_sigma > 0 else np.ones(n)
    extra = np.zeros(n, dtype=np.int64)
    remaining = spec.n_ratings - n * base
    while remaining > 0:
        free = np.flatnonzero(extra < cap)
        share = remaining * weights[free] / weights[free].sum()
        add = np.floor(share).astype(np.int64)
        leftover = min(remaining - int(add.sum()), free.size)  # largest remainders get one more
        if leftover > 0:
            add[np.argpartition(add - share, leftover - 1)[:leftover]] += 1
        add = np.minimum(add, cap - extra[free])  # what a cap cuts off goes round again
        extra[free] += add
        remaining -= int(add.sum())
    return base + extra


# ------------------------------------------------------------------------------------------------ choosing films


def _first_distinct(users: np.ndarray, cols: np.ndarray, n_movies: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the first occurrence of each distinct (user, col), grouped by user, in draw order.

    Returns (user of each, position of each); positions index ``users``/``cols``. Packs (pair, position) into
    one int64 and sorts values (much faster than argsort or np.unique(return_index=True)); falls back to
    those when the packed key would not fit in 63 bits.
    """
    n = users.size
    n_users = int(users.max()) + 1 if n else 0
    pos_bits = max(n.bit_length(), 1)
    if (n_users * n_movies).bit_length() + pos_bits > 63 or n_users.bit_length() + pos_bits > 63:
        _, first = np.unique(users * n_movies + cols, return_index=True)
        order = np.argsort(users[first] * n + first, kind="stable")
        return users[first][order], first[order]
    low = np.int64((1 << pos_bits) - 1)
    keys = np.sort(((users * n_movies + cols) << pos_bits) | np.arange(n, dtype=np.int64))
    pairs = keys >> pos_bits
    is_first = np.empty(n, bool)
    is_first[:1] = True
    np.not_equal(pairs[1:], pairs[:-1], out=is_first[1:])
    first = keys[is_first] & low
    by_user = np.sort((users[first] << pos_bits) | first)
    return by_user >> pos_bits, by_user & low


def _light_films(counts: np.ndarray, pop: _Popularity, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Successive samples of counts[u] distinct films for each (light) user u; returns (users, cols) by user.

    Each round draws about 1.3x (then 2.6x, ...) each unfinished user's shortfall with replacement and keeps
    the first distinct draws; users still short go to the next round with what they have kept.
    """
    n_users = counts.size
    kept_users = np.zeros(0, np.int64)
    kept_cols = np.zeros(0, np.int64)
    pending = np.arange(n_users, dtype=np.int64)
    deficit = counts.astype(np.int64)
    done_users, done_cols = [], []
    factor = 1.3
    while pending.size:
        draws = np.ceil(deficit * factor).astype(np.int64) + 2  # (pending,)
        users = np.concatenate([kept_users, np.repeat(pending, draws)])  # earlier picks first, so they stay
        cols = np.concatenate([kept_cols, pop.sample(rng, int(draws.sum()))])
        first_users, first = _first_distinct(users, cols, pop.n_movies)
        starts = np.searchsorted(first_users, first_users, side="left")  # first index of each user's group
        keep = np.arange(first_users.size) - starts < counts[first_users]
        first_users, first = first_users[keep], first[keep]
        have = np.bincount(first_users, minlength=n_users)
        full = have[first_users] == counts[first_users]
        done_users.append(first_users[full])
        done_cols.append(cols[first[full]])
        kept_users, kept_cols = first_users[~full], cols[first[~full]]
        pending = np.unique(kept_users)  # every unfinished user kept at least one film
        deficit = counts[pending] - have[pending]
        factor *= 2
    return np.concatenate(done_users), np.concatenate(done_cols)


def _heavy_films(k: int, log_weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """k distinct films by the Gumbel top-k trick: argtop-k of log w + Gumbel noise (Vieira 2014)."""
    keys = log_weights + rng.gumbel(size=log_weights.size)  # (M,)
    if k >= keys.size:
        return np.arange(keys.size, dtype=np.int64)
    return np.argpartition(-keys, k - 1)[:k].astype(np.int64)


# ------------------------------------------------------------------------------------------------ generation


def _user_blocks(counts: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive user ranges of about BLOCK_RATINGS ratings each (at least one user each)."""
    ends = np.cumsum(counts)
    cuts = np.searchsorted(ends, np.arange(BLOCK_RATINGS, int(ends[-1]), BLOCK_RATINGS), side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [counts.size]]))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _block(spec: SynthSpec, counts: np.ndarray, pop: _Popularity, log_weights: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One block of users: (local user of each rating, col, timestamp), sorted by user then time."""
    heavy = counts > HEAVY_FRACTION * spec.n_movies
    light_local = np.flatnonzero(~heavy)
    users_parts, cols_parts = [], []
    if light_local.size:
        lu, lc = _light_films(counts[light_local], pop, rng)
        users_parts.append(light_local[lu])
        cols_parts.append(lc)
    for local in np.flatnonzero(heavy):
        cols = _heavy_films(int(counts[local]), log_weights, rng)
        users_parts.append(np.full(cols.size, local, np.int64))
        cols_parts.append(cols)
    users = np.concatenate(users_parts)
    cols = np.concatenate(cols_parts)
    users, cols = _shuffle_within_users(users, cols, spec.n_movies, rng)
    return users, cols, _timestamps(counts, rng)


def _shuffle_within_users(users: np.ndarray, cols: np.ndarray, n_movies: int,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Group by user, each user's films in random order: sort (user, random, col) packed into one int64."""
    user_bits = max(int(users.max()).bit_length(), 1)
    col_bits = max((n_movies - 1).bit_length(), 1)
    random_bits = 63 - user_bits - col_bits
    if random_bits < 20:  # too few bits for a fair shuffle: sort by index instead
        order = np.lexsort((rng.random(users.size), users))
        return users[order], cols[order]
    noise = rng.integers(0, 1 << random_bits, users.size, dtype=np.int64)
    keys = np.sort((users << (random_bits + col_bits)) | (noise << col_bits) | cols)
    return keys >> (random_bits + col_bits), keys & np.int64((1 << col_bits) - 1)


def _timestamps(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(sum(counts),) times, strictly increasing within each user, inside ML-25M's time range.

    A user's span is log-normal (median 30 days, some within minutes, some years); times inside it follow
    exponential gaps: t_j = t0 + floor(S_j / S_total * (span - k)) + j, S the running sum of Exp(1) gaps.
    """
    n = counts.size
    total_range = max(LAST_TIMESTAMP - FIRST_TIMESTAMP, int(counts.max()))
    span = np.exp(rng.normal(math.log(30 * 86_400), 2.5, n))
    span = np.clip(span, counts, total_range).astype(np.int64)  # (n,) at least one second per rating
    start = FIRST_TIMESTAMP + np.floor(rng.random(n) * (total_range - span + 1)).astype(np.int64)
    gaps = rng.exponential(1.0, int(counts.sum()))
    running = np.cumsum(gaps)
    ends = np.cumsum(counts)
    begins = ends - counts
    before = np.concatenate([[0.0], running])[begins]  # running sum before each user's first rating
    user_of = np.repeat(np.arange(n), counts)
    totals = running[ends - 1] - before + rng.exponential(1.0, n)  # one more gap after the last rating
    fraction = (running - before[user_of]) / totals[user_of]  # (R,) in (0, 1)
    position = np.arange(gaps.size) - begins[user_of]
    return start[user_of] + np.floor(fraction * (span - counts)[user_of]).astype(np.int64) + position


def generate(spec: SynthSpec, on_progress: ProgressCallback | None = None) -> SynthRatings:
    """Generate ratings for ``spec``; O(R + (N + M) x rank) time and memory, deterministic in the spec.

    Args:
        on_progress: called with the number of ratings generated by each finished block.
    """
    root = np.random.SeedSequence(spec.seed)
    planted_seq, activity_seq, blocks_seq = root.spawn(3)
    prng = np.random.default_rng(planted_seq)
    n, m, rank = spec.n_users, spec.n_movies, spec.rank
    pop = _Popularity(spec.popularity_exponent, spec.popularity_offset, m, prng.permutation(m).astype(np.int64))
    popularity = pop.probabilities()
    with np.errstate(divide="ignore"):
        log_weights = np.log(popularity)
    planted = Planted(
        global_mean=float(spec.global_mean),
        user_bias=(prng.standard_normal(n) * spec.user_bias_sd).astype(np.float32),
        movie_bias=(prng.standard_normal(m) * spec.movie_bias_sd).astype(np.float32),
        user_factors=(prng.standard_normal((n, rank)) * spec.factor_sd).astype(np.float32),
        movie_factors=(prng.standard_normal((m, rank)) * spec.factor_sd).astype(np.float32),
        popularity=popularity,
    )
    counts = _activity(spec, np.random.default_rng(activity_seq))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    user_ids = np.repeat(np.arange(spec.start_user_id, spec.start_user_id + n, dtype=np.int64), counts)
    movie_ids = np.empty(total, np.int64)
    ratings = np.empty(total, np.float32)
    timestamps = np.empty(total, np.int64)
    blocks = _user_blocks(counts)
    for (first, stop), seq in zip(blocks, blocks_seq.spawn(len(blocks))):
        rng = np.random.default_rng(seq)
        local_users, cols, times = _block(spec, counts[first:stop], pop, log_weights, rng)
        rows = local_users + first
        lo, hi = int(offsets[first]), int(offsets[stop])
        movie_ids[lo:hi] = cols + 1
        timestamps[lo:hi] = times
        score = planted.expected(rows, cols) + rng.standard_normal(rows.size) * spec.noise_sd
        ratings[lo:hi] = np.clip(np.round(score * 2.0) / 2.0, LOW, HIGH)
        if on_progress:
            on_progress(hi - lo)
    log.info("generated %d ratings for %d users x %d movies (min %d per user)", total, n, m,
             spec.effective_min_per_user)
    return SynthRatings(spec=spec, user_ids=user_ids, movie_ids=movie_ids, ratings=ratings,
                        timestamps=timestamps, planted=planted)


@dataclass(frozen=True)
class SynthSummary:
    """Shape of generated ratings, for the CLI's one-line summary."""

    ratings: int
    users: int
    movies_rated: int
    movie_ids: str
    min_per_user: int
    median_per_user: float
    max_per_user: int
    top1pct_movie_share: float
    mean_rating: float
    std_rating: float


def summarize(ratings: SynthRatings) -> SynthSummary:
    """Counts and spread of ``ratings`` in O(R)."""
    spec = ratings.spec
    per_user = np.bincount(ratings.user_ids - spec.start_user_id, minlength=spec.n_users)
    per_movie = np.bincount(ratings.movie_ids - 1, minlength=spec.n_movies)
    top = max(1, spec.n_movies // 100)
    top_share = float(np.partition(per_movie, per_movie.size - top)[-top:].sum() / max(ratings.n_ratings, 1))
    values = ratings.ratings.astype(np.float64)
    return SynthSummary(
        ratings=ratings.n_ratings, users=int(np.count_nonzero(per_user)), movies_rated=int(np.count_nonzero(per_movie)),
        movie_ids=f"1..{spec.n_movies}", min_per_user=int(per_user.min()), median_per_user=float(np.median(per_user)),
        max_per_user=int(per_user.max()), top1pct_movie_share=top_share, mean_rating=float(values.mean()),
        std_rating=float(values.std()),
    )
