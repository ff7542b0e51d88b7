"""Pure helpers for ``bench_peers.py``: the project's split handed to a peer library, the peer's scores handed back
to the project's metric, and a grid search that widens where its best sits on an edge.

Nothing here imports a peer library, so ``tests/test_peer_adapters.py`` runs without them. The contract: a peer
sees exactly the training ratings (positions of the shared IdIndex as its ids), and whatever it scores is laid
out on the IdIndex's columns, so ``recae.evaluation.metrics.list_quality`` ranks every film the user did not rate
in training, as it does for recae's own order.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp

from recae.evaluation.metrics import RowScores, list_quality
from recae.store.matrix import RatingMatrix

T = TypeVar("T")
ScoreFn = Callable[[np.ndarray], np.ndarray]  # recae rows (batch,) -> (batch, n_movies) scores, higher first

# --- the split, exported -------------------------------------------------------------------------------------------


def has_rated(train: RatingMatrix) -> sp.csr_matrix:
    """(n_users, n_movies) float32 CSR with 1 at every training rating: the implicit-feedback input."""
    out = sp.csr_matrix(train.csr, dtype=np.float32, copy=True)
    out.data = np.ones_like(out.data)
    return out


def triplets(train: RatingMatrix, binary: bool = False) -> list[tuple[int, int, float]]:
    """Every training rating as (row, col, value) on the IdIndex (value 1.0 when ``binary``): cornac's UIR input."""
    rows, cols, values = train.coo()
    if binary:
        values = np.ones_like(values)
    return list(zip(rows.tolist(), cols.tolist(), values.astype(np.float64).tolist()))


def positions_of(id_map: Mapping[Any, int], size: int) -> np.ndarray:
    """(size,) int64: the peer's index of each IdIndex position, -1 where the peer never saw it.

    ``id_map`` is the peer's {our position: its index} (cornac's ``uid_map`` / ``iid_map``)."""
    out = np.full(size, -1, dtype=np.int64)
    ours = np.fromiter((int(k) for k in id_map), dtype=np.int64, count=len(id_map))
    out[ours] = np.fromiter(id_map.values(), dtype=np.int64, count=len(id_map))
    return out


def laid_out(peer_scores: np.ndarray, peer_of_col: np.ndarray) -> np.ndarray:
    """(batch, n_movies) float32: the peer's (batch, n_peer_items) scores at our columns.

    Films the peer never saw (no training rating: cornac ranks only films seen in training) score one below the
    user's lowest score, after every film it knows, as recae's EASE places the films it does not cover."""
    peer_scores = np.asarray(peer_scores, dtype=np.float32)
    known = peer_of_col >= 0
    floor = peer_scores.min(axis=1, keepdims=True) - 1.0 if peer_scores.size else np.zeros((peer_scores.shape[0], 1))
    out = np.repeat(floor.astype(np.float32), peer_of_col.size, axis=1)
    out[:, known] = peer_scores[:, peer_of_col[known]]
    return out


# --- scoring through the project's metric ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Quality:
    """P/R/NDCG@10 and catalogue coverage of the top-10 lists, as ``recae evaluate`` measures them."""

    precision: float
    recall: float
    ndcg: float
    coverage: float
    users: int


def quality(score_of: ScoreFn, train: RatingMatrix, test: RatingMatrix, threshold: float, k: int = 10) -> Quality:
    """``list_quality`` of an order: every film unrated in ``train`` ranked, ``test`` ratings >= ``threshold``
    relevant. ``score_of`` gives (batch, n_movies) scores for our rows."""
    q = list_quality(RowScores(score_of), train, test, ks=(k,), threshold=threshold, list_k=k)
    m = q.at[k]
    return Quality(m.precision, m.recall, m.ndcg, q.coverage, m.n_users)


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """``fn()``, its wall seconds and this process's CPU seconds (all threads): on a shared machine the CPU
    seconds are the steadier figure."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


# --- hyperparameters on validation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One hyperparameter's grid, ascending; a best value at an end is widened by ``step`` (x or /) up to the
    ``low`` / ``high`` bounds. ``step`` 0: a closed set, never widened."""

    name: str
    values: tuple[float, ...]
    step: float = 2.0
    low: float = 0.0
    high: float = math.inf
    integer: bool = False

    def beyond(self, value: float) -> float | None:
        """The next value past ``value`` when it is an end of the grid (None when closed or out of bounds)."""
        if not self.step or len(self.values) < 2 or value not in (self.values[0], self.values[-1]):
            return None
        nxt = value * self.step if value == self.values[-1] else value / self.step
        if self.integer:
            nxt = float(round(nxt))
        return nxt if self.low <= nxt <= self.high and nxt not in self.values else None


@dataclass
class Search:
    """The trials of a validation grid search: settings -> validation NDCG@10, in the order tried."""

    axes: list[Axis]
    trials: dict[tuple[float, ...], float] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, float]:
        key = max(self.trials, key=lambda k: self.trials[k])  # the earliest on a tie
        return dict(zip((a.name for a in self.axes), key))

    @property
    def best_score(self) -> float:
        return max(self.trials.values())

    def at_edge(self) -> list[str]:
        """Axes whose best value is still an end of a widenable grid (the search stopped before the peak)."""
        best = self.best
        return [a.name for a in self.axes if a.step and len(a.values) > 1
                and best[a.name] in (a.values[0], a.values[-1])]


def grid_search(axes: Sequence[Axis], score: Callable[[dict[str, float]], float], max_widen: int = 3,
                on_trial: Callable[[dict[str, float], float], None] | None = None) -> Search:
    """Every point of the grid, then, while the best sits at an end of an axis, that axis one step further (the
    best's other settings kept), at most ``max_widen`` rounds. ``score`` is validation NDCG@10 (higher better)."""
    search = Search(list(axes))

    def run(point: tuple[float, ...]) -> None:
        if point not in search.trials:
            settings = dict(zip((a.name for a in search.axes), point))
            value = score(settings)
            search.trials[point] = -math.inf if math.isnan(value) else value
            if on_trial is not None:
                on_trial(settings, search.trials[point])

    for point in itertools.product(*(a.values for a in search.axes)):
        run(tuple(point))
    for _ in range(max_widen):
        best = search.best
        widened = False
        for i, axis in enumerate(search.axes):
            nxt = axis.beyond(best[axis.name])
            if nxt is None:
                continue
            search.axes[i] = Axis(axis.name, tuple(sorted((*axis.values, nxt))), axis.step, axis.low, axis.high,
                                  axis.integer)
            run(tuple(nxt if a.name == axis.name else best[a.name] for a in search.axes))
            widened = True
        if not widened:
            break
    return search


def describe(settings: Mapping[str, float]) -> str:
    """``factors 256, regularization 10`` (integers without a point)."""
    return ", ".join(f"{k} {v:g}" for k, v in settings.items())
