"""What the films are, as a side channel of the stacked blend (``TrainConfig.blend_side``): genres and release era.

The autoencoders read which films a user rated and how, never what the films are. This part adds it: each film
belongs to groups (its genres and its release era, :func:`film_groups`); each user has an affinity for each group,
the shrunk mean of their residuals against the biases over the films of that group they rated,

    e_ui = r_ui - mu - b_u - b_i,    a_ug = sum_{i in R(u), i in g} e_ui / (|{i in R(u), i in g}| + shrink),

and the part's output for (u, i) is the mean of ``a_ug`` over film i's groups: a correction around 0, not a
rating, which the stack weighs beside the autoencoders and the SVD (``recae.training.blend.fit_mix``). Fitting,
scoring and a new user's fold-in are O(ratings x groups); nothing is users x films except the rows asked for.

Why, measured on development carves (10% of the training part, seed 99; the stack's weights cross-fitted there):
u1.base 0.8954 -> 0.8915 RMSE, ml-1m's 90/10 training part 0.8276 -> 0.8266; genres alone gave 0.8919 / 0.8269,
the column with the biases folded in gave no gain (the biases are collinear with the other parts), and the
groups' shrinkage (2 to 20) moved nothing beyond 0.0005. Figures: tests/benchmarks/README.md, "Side information".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from recae.evaluation.baselines import Biases
    from recae.store.matrix import IdIndex, RatingMatrix

#: Release eras: before 1950, then each decade to 1990, then five-year spans (most MovieLens films are recent).
ERA_STARTS = (1950, 1960, 1970, 1980, 1990, 1995, 2000, 2005, 2010, 2015, 2020)
#: Genre labels that mean "no genre" in MovieLens files.
NO_GENRE = {"", "(no genres listed)", "unknown"}
#: A user's affinity for a group counts as many pseudo-ratings of residual 0 (tested from 2 to 20: flat).
SHRINK = 5.0
#: The biases' regularisers (``fit_biases``' defaults); the user's is kept for a new user's fold-in.
BIAS_RIDGE = 5.0
#: Pairs predicted at once (their gathered group rows are float32).
PREDICT_CHUNK = 1 << 18


@dataclass(frozen=True)
class FilmGroups:
    """Each film's groups as rows of a 0/1 matrix: (n_movies, n_groups) float32, and the groups' names."""

    matrix: np.ndarray
    names: tuple[str, ...]

    @property
    def any(self) -> bool:
        """Whether any film belongs to a group (a catalogue without genres or years has none)."""
        return bool(self.matrix.size) and bool(self.matrix.any())


def era_name(year: int) -> str:
    """The release era a year falls in, e.g. ``era:1990-1994``."""
    if year < ERA_STARTS[0]:
        return f"era:<{ERA_STARTS[0]}"
    start = max(s for s in ERA_STARTS if s <= year)
    later = [s for s in ERA_STARTS if s > start]
    return f"era:{start}-{later[0] - 1}" if later else f"era:{start}-"


def film_groups(genres: Sequence[str | None], years: Sequence[int | None]) -> FilmGroups:
    """The groups of films listed in column order: ``genres`` as MovieLens writes them ("Comedy|Drama"), ``years``
    of release (None: unknown). Groups no film belongs to are left out; so is a film's unknown genre or year."""
    if len(genres) != len(years):
        raise ValueError(f"{len(genres)} genre strings but {len(years)} years")
    per_film = []
    for text, year in zip(genres, years, strict=True):
        names = {g.strip() for g in (text or "").split("|")} - NO_GENRE
        if year is not None and year > 0:
            names.add(era_name(int(year)))
        per_film.append(names)
    names = tuple(sorted(set().union(*per_film))) if per_film else ()
    column = {name: j for j, name in enumerate(names)}
    matrix = np.zeros((len(per_film), len(names)), dtype=np.float32)
    for row, groups in enumerate(per_film):
        matrix[row, [column[g] for g in groups]] = 1.0
    return FilmGroups(matrix=matrix, names=names)


def groups_from_store(engine: Engine, index: IdIndex) -> FilmGroups:
    """The groups of ``index``'s films, from what the store's catalogue says about them."""
    from recae.store.film_facts import read_film_facts

    return film_groups(*read_film_facts(engine, index.movie_ids))


@dataclass(frozen=True, eq=False)
class SidePart:
    """Fitted group affinities over an IdIndex's users and films (see the module docstring). Arrays are float64
    except the film side, float32."""

    mu: float
    item_bias: np.ndarray  # (n_movies,)
    bias_ridge: float  # the user bias's regulariser (reg_user of the biases), for a new user's fold-in
    user_affinity: np.ndarray  # (n_users, n_groups)
    groups: np.ndarray  # (n_movies, n_groups) 0/1
    names: tuple[str, ...] = ()  # the groups' names (genres, ``era:1990-1994``), for people reading the model
    shrink: float = SHRINK

    @property
    def shape(self) -> tuple[int, int]:
        return self.user_affinity.shape[0], self.item_bias.size

    @cached_property
    def _film_weights(self) -> np.ndarray:
        """(n_movies, n_groups): each film's groups weighted 1 / their number (its output is their mean); computed
        once, as scoring asks for it at every batch."""
        count = self.groups.sum(axis=1, keepdims=True)
        return (self.groups / np.maximum(count, 1.0)).astype(np.float32)

    def check(self) -> None:
        """ValueError unless the arrays agree with each other (a damaged or hand-edited model file)."""
        n_users, n_movies = self.shape
        n_groups = self.groups.shape[1] if self.groups.ndim == 2 else -1
        if (self.user_affinity.shape != (n_users, n_groups) or self.groups.shape != (n_movies, n_groups)
                or len(self.names) != n_groups or self.bias_ridge < 0 or self.shrink < 0 or not np.all(np.isfinite(self.user_affinity))):
            raise ValueError("stored side part is inconsistent")

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(n,) float32 corrections at (user row, movie col) pairs."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        weights = self._film_weights
        out = np.empty(rows.shape, dtype=np.float32)
        for start in range(0, rows.size, PREDICT_CHUNK):  # only the chunk's users' affinities are cast
            r, c = rows[start : start + PREDICT_CHUNK], cols[start : start + PREDICT_CHUNK]
            out[start : start + PREDICT_CHUNK] = np.einsum("ng,ng->n", self.user_affinity[r].astype(np.float32),
                                                           weights[c])
        return out

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), n_movies) float32 corrections: O(rows x groups x n_movies)."""
        return (self.user_affinity[np.asarray(rows, dtype=np.int64)].astype(np.float32) @ self._film_weights.T)

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """(n_movies,) float32 corrections for a user with ``values`` at movie ``cols``: their bias with the
        biases' regulariser, then their affinities as in fitting (no ratings: all zero)."""
        cols = np.asarray(cols, dtype=np.int64)
        centred = np.asarray(values, dtype=np.float64) - self.mu - self.item_bias[cols]
        bias = centred.sum() / (self.bias_ridge + cols.size) if cols.size else 0.0
        member = self.groups[cols].astype(np.float64)
        affinity = (centred - bias) @ member / (member.sum(axis=0) + self.shrink)
        return (self._film_weights @ affinity.astype(np.float32)).astype(np.float32)


def fit_side_part(fit_part: RatingMatrix, groups: FilmGroups, biases: Biases | None = None,
                  bias_ridge: float = BIAS_RIDGE, shrink: float = SHRINK) -> SidePart:
    """Every user's group affinities from ``fit_part`` alone, against ``biases`` fitted on it by ``fit_biases`` with
    ``reg_user = bias_ridge`` (the SVD part's, handed in by training so they are fitted once; None: fitted here).

    Memory beyond the ratings: three float32 arrays of one entry a rating (0.4 GB at ML-32M shape) and the
    (users, groups) affinities; the two sparse products share the ratings' own index arrays."""
    from recae.evaluation.baselines import fit_biases

    if groups.matrix.shape[0] != fit_part.shape[1]:
        raise ValueError(f"groups describe {groups.matrix.shape[0]} films but the ratings have {fit_part.shape[1]}")
    biases = biases if biases is not None else fit_biases(fit_part, bias_ridge, bias_ridge)
    csr = fit_part.csr
    residual = csr.data.astype(np.float32)  # r - mu - b_i - b_u, in place
    residual -= np.float32(biases.mu)
    residual -= biases.item.astype(np.float32)[csr.indices]
    residual -= np.repeat(biases.user.astype(np.float32), np.diff(csr.indptr))
    members = sp.csr_matrix(groups.matrix)
    by_user = sp.csr_matrix((residual, csr.indices, csr.indptr), shape=csr.shape, copy=False)
    summed = (by_user @ members).toarray().astype(np.float64)
    by_user.data[:] = 1.0  # the same pattern, now counting
    counted = (by_user @ members).toarray()
    return SidePart(mu=float(biases.mu), item_bias=np.array(biases.item, dtype=np.float64),  # its own: saved beside the SVD's
                    bias_ridge=bias_ridge,
                    user_affinity=summed / (counted + shrink), groups=groups.matrix.astype(np.float32),
                    names=groups.names, shrink=shrink)
