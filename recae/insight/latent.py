"""What a trained model learned, as points: latent codes of users or movies, their 2-D map beside PCA's.

Which vectors a model has a code for depends on its orientation:

* the side it reads (movies in ``item`` orientation, users in ``user`` orientation): each one's rating vector is
  encoded and the **code layer** (the last encoder layer, ``h_L``) is its representation;
* the other side (users of an item model, movies of a user model) is never encoded: its representation is its
  row of **output weights** ``W_out[u]`` (width ``h_1``), the vector the decoder's features are dotted with to
  predict its ratings (``rhat = out_act(g_1 . W_out[u] + b_out[u])``), just as a user factor in matrix
  factorisation.

The 2-D map (Hinton and Salakhutdinov, 2006) shows the code itself when it has two units (train with
``hidden = [..., 2]``) and its first two principal components otherwise; beside it stands the 2-D PCA of the raw
rating vectors (missing ratings read as 0), the linear method the autoencoder is compared with. PCA of a sparse
matrix is computed without densifying it (a centred linear operator), so its cost follows the number of ratings.

How well a map separates known groups is measured by leave-one-out kNN accuracy in the plane, and by the
silhouette. No matplotlib here; ``recae.insight.plots`` draws, ``recae.insight.embed`` exports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from recae.models.names import Orientation
from recae.models.vectors import oriented_csr

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from recae.artifacts.trained_model import TrainedModel

log = logging.getLogger(__name__)

SIDES = ("users", "movies")
COLOURS = ("auto", "genre", "activity", "mean-rating")
_ENCODE_CHUNK = 2048  # vectors encoded at once (bounds memory)
_DISTANCE_CHUNK = 1024  # query points per block of pairwise distances
#: At most this many points are scored (seeded sample): the scores need all pairwise distances.
SCORE_POINTS = 3000


@dataclass(frozen=True, eq=False)
class LatentCodes:
    """One latent vector per user or movie of the model's IdIndex."""

    side: str  # users | movies
    ids: np.ndarray  # (n,) int64 external ids, increasing
    codes: np.ndarray  # (n, k) float32
    source: str  # "code layer" (encoded vectors) or "output weights" (the side the model does not read)


@dataclass(frozen=True, eq=False)
class LatentMap:
    """Every point twice in 2-D: from the autoencoder's latent codes and from PCA of the raw ratings."""

    side: str
    ids: np.ndarray  # (n,) int64
    autoencoder: np.ndarray  # (n, 2) float64
    pca: np.ndarray  # (n, 2) float64
    source: str  # where the codes come from (see LatentCodes.source)
    code_dims: int  # width of the codes before projection (2: shown as they are)
    n_ratings: np.ndarray  # (n,) int64 training ratings of each point (its activity)
    mean_rating: np.ndarray  # (n,) float64 mean training rating (nan when none)


@dataclass(frozen=True)
class Separation:
    """How well two 2-D maps separate the same labelled points (higher is better)."""

    knn_autoencoder: float  # leave-one-out kNN label accuracy in the autoencoder's plane
    knn_pca: float  # the same in the PCA plane
    silhouette_autoencoder: float
    silhouette_pca: float
    n_points: int  # points scored (labelled ones, sampled down to SCORE_POINTS)
    n_labels: int
    k: int


def check_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; choose one of {', '.join(SIDES)}")
    return side


def natural_side(trained: TrainedModel) -> str:
    """The side the model encodes: movies in item orientation, users in user orientation."""
    return "movies" if trained.orientation is Orientation.ITEM else "users"


def latent_codes(trained: TrainedModel, side: str) -> LatentCodes:
    """Latent vectors of every user or movie (see the module docstring for which layer), chunked over vectors;
    the model's network runs them (numpy for a loaded model: no torch)."""
    check_side(side)
    ids = trained.index.movie_ids if side == "movies" else trained.index.user_ids
    network = trained.network
    if side != natural_side(trained):
        codes = network.representation().astype(np.float32, copy=True)  # (n_outputs, h_1)
        return LatentCodes(side=side, ids=ids, codes=codes, source="output weights")
    oriented = oriented_csr(trained.inputs, trained.orientation)  # (n_vectors, n_units)
    parts = []
    for start in range(0, oriented.shape[0], _ENCODE_CHUNK):
        parts.append(network.code_of(oriented[start:start + _ENCODE_CHUNK]))  # (chunk, h_L)
    width = trained.model_config.hidden[-1]
    codes = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, width), np.float32)
    return LatentCodes(side=side, ids=ids, codes=codes, source="code layer")


def raw_vectors(trained: TrainedModel, side: str) -> sp.csr_matrix:
    """The raw training rating vectors of ``side``: (n_users, n_movies) rows or (n_movies, n_users) rows."""
    return oriented_csr(trained.inputs, Orientation.USER if check_side(side) == "users" else Orientation.ITEM)


def pca_2d(x: sp.spmatrix | np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, 2) scores on the first two principal components of the rows of ``x`` (n, d).

    ``X_c = X - 1 mu^T`` with ``mu`` the column means; ``X_c ~ U S V^T`` (top two singular triplets, ARPACK on a
    linear operator, so a sparse X is never densified); scores ``U S``. Each component's sign is fixed so that
    its largest loading is positive (the same data always gives the same picture).
    """
    from scipy.sparse.linalg import LinearOperator, svds

    n, d = x.shape
    out = np.zeros((n, 2))
    if n < 2 or d < 1:
        return out
    x = sp.csr_matrix(x, dtype=np.float64) if sp.issparse(x) else np.asarray(x, dtype=np.float64)
    mu = np.asarray(x.mean(axis=0), dtype=np.float64).reshape(-1)  # (d,)
    k = min(2, n - 1, d)
    if min(n, d) <= 3:  # too small for ARPACK: an exact SVD of the centred matrix
        dense = (x.toarray() if sp.issparse(x) else x) - mu
        u, s, vt = np.linalg.svd(dense, full_matrices=False)
        u, s, vt = u[:, :k], s[:k], vt[:k]
    else:  # only the top two triplets, by products with X and X^T: O(nnz) per iteration, X never densified
        xt = x.T.tocsr() if sp.issparse(x) else x.T
        op = LinearOperator(
            (n, d), dtype=np.float64,
            matvec=lambda v: x @ np.ravel(v) - float(mu @ np.ravel(v)),
            rmatvec=lambda v: xt @ np.ravel(v) - mu * float(np.sum(v)),
        )
        v0 = np.random.default_rng(seed).standard_normal(min(n, d))
        u, s, vt = svds(op, k=k, v0=v0)
        order = np.argsort(-s)
        u, s, vt = u[:, order], s[order], vt[order]
    for j in range(k):
        if vt[j, np.argmax(np.abs(vt[j]))] < 0:
            u[:, j] = -u[:, j]
    out[:, :k] = u * s
    return out


def to_plane(codes: np.ndarray) -> np.ndarray:
    """(n, 2): codes of width 2 as they are, wider codes by their first two principal components."""
    codes = np.asarray(codes, dtype=np.float64)
    if codes.shape[1] == 2:
        return codes.copy()
    if codes.shape[1] == 1:
        return np.column_stack([codes[:, 0], np.zeros(codes.shape[0])])
    return pca_2d(codes)


def latent_map(trained: TrainedModel, side: str) -> LatentMap:
    """Both 2-D maps of every user or movie the model knows."""
    codes = latent_codes(trained, side)
    raw = raw_vectors(trained, side)
    counts = np.diff(raw.indptr).astype(np.int64)
    sums = np.add.reduceat(raw.data.astype(np.float64), raw.indptr[:-1]) if raw.nnz else np.zeros(raw.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return LatentMap(side=side, ids=codes.ids, autoencoder=to_plane(codes.codes), pca=pca_2d(raw),
                     source=codes.source, code_dims=int(codes.codes.shape[1]), n_ratings=counts, mean_rating=means)


# --- separation scores -----------------------------------------------------------------------------------------


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Euclidean distances."""
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def _encode_labels(labels: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1)


def knn_accuracy(points: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Leave-one-out kNN accuracy: the share of points whose ``k`` nearest others (Euclidean, in ``points``) vote
    their own label by majority (ties go to the smallest label code). Scale-free across maps: only ranks count.
    """
    points = np.asarray(points, dtype=np.float64)
    codes = _encode_labels(labels)
    n = codes.size
    if n < 2:
        return float("nan")
    k = min(k, n - 1)
    n_labels = int(codes.max()) + 1
    hits = 0
    for start in range(0, n, _DISTANCE_CHUNK):
        block = np.arange(start, min(start + _DISTANCE_CHUNK, n))
        dist = _pairwise(points[block], points)  # (chunk, n)
        dist[np.arange(block.size), block] = np.inf  # leave the point itself out
        nearest = np.argpartition(dist, k - 1, axis=1)[:, :k]  # (chunk, k)
        votes = np.zeros((block.size, n_labels))
        np.add.at(votes, (np.repeat(np.arange(block.size), k), codes[nearest].reshape(-1)), 1.0)
        hits += int((votes.argmax(axis=1) == codes[block]).sum())
    return hits / n


def silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette ``s_i = (b_i - a_i) / max(a_i, b_i)``: ``a_i`` the mean distance to the other points of
    i's label, ``b_i`` the smallest mean distance to another label's points (s_i = 0 for a label of one point).
    In [-1, 1]; nan with fewer than two labels.
    """
    points = np.asarray(points, dtype=np.float64)
    codes = _encode_labels(labels)
    n_labels = int(codes.max()) + 1 if codes.size else 0
    if n_labels < 2:
        return float("nan")
    sizes = np.bincount(codes, minlength=n_labels).astype(np.float64)
    scores = np.zeros(codes.size)
    for start in range(0, codes.size, _DISTANCE_CHUNK):
        block = np.arange(start, min(start + _DISTANCE_CHUNK, codes.size))
        dist = _pairwise(points[block], points)  # (chunk, n)
        sums = np.zeros((block.size, n_labels))
        for label in range(n_labels):
            sums[:, label] = dist[:, codes == label].sum(axis=1)
        own = codes[block]
        own_size = sizes[own] - 1
        a = np.where(own_size > 0, sums[np.arange(block.size), own] / np.maximum(own_size, 1), 0.0)
        means = sums / np.maximum(sizes, 1)
        means[np.arange(block.size), own] = np.inf
        b = means.min(axis=1)
        s = np.where(own_size > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)
        scores[block] = s
    return float(scores.mean())


def separation(latent: LatentMap, labels: np.ndarray, *, k: int = 10, max_points: int = SCORE_POINTS,
               seed: int = 0) -> Separation:
    """Score both maps on the points whose label is not None or "" (a seeded sample of at most ``max_points``)."""
    labels = np.asarray(labels, dtype=object)
    keep = np.flatnonzero(np.array([lab is not None and lab != "" for lab in labels], dtype=bool))
    if keep.size > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_points, replace=False))
    picked = labels[keep].astype(str)
    return Separation(
        knn_autoencoder=knn_accuracy(latent.autoencoder[keep], picked, k),
        knn_pca=knn_accuracy(latent.pca[keep], picked, k),
        silhouette_autoencoder=silhouette(latent.autoencoder[keep], picked),
        silhouette_pca=silhouette(latent.pca[keep], picked),
        n_points=int(keep.size), n_labels=int(np.unique(picked).size), k=k,
    )


# --- what to colour the points by ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Colouring:
    """A label (categories) or a number per point, and what it means."""

    name: str  # genre | activity | mean-rating
    values: np.ndarray  # (n,) object labels (None: unlabelled) or float64 numbers
    categorical: bool
    note: str | None = None  # e.g. why "auto" chose what it chose


def genre_labels(genres: list[str]) -> np.ndarray:
    """One label per film: of its pipe-separated genres the least common in the catalogue, which says most about
    it (``Comedy|Romance`` -> ``Romance`` when romances are fewer); None for a film without a genre."""
    split = [[g for g in (text or "").split("|") if g and g != "(no genres listed)" and g != "unknown"]
             for text in genres]
    counts: dict[str, int] = {}
    for film in split:
        for g in film:
            counts[g] = counts.get(g, 0) + 1
    out = np.empty(len(split), dtype=object)
    for i, film in enumerate(split):
        out[i] = min(film, key=lambda g: (counts[g], g)) if film else None
    return out


def colouring(engine: Engine | None, latent: LatentMap, colour: str = "auto", genre: str | None = None) -> Colouring:
    """What to colour ``latent``'s points by.

    ``genre`` (movies only; needs the store's catalogue): each film's least common genre, or with ``genre`` given
    whether the film has that genre. ``activity``: log10 of the number of training ratings. ``mean-rating``: the
    mean training rating. ``auto``: genre for movies when the catalogue has genres, activity otherwise.
    """
    from recae.errors import RecaeError

    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; choose one of {', '.join(COLOURS)}")
    note = None
    if colour in ("auto", "genre") and (latent.side == "movies" or genre) and engine is not None:
        if latent.side != "movies":
            raise RecaeError("genres belong to movies; colour users by activity or mean-rating")
        from recae.serving.recommend import movie_details

        details = movie_details(engine, latent.ids.tolist())
        texts = [details.get(int(m), (None, None, ""))[2] for m in latent.ids]
        if genre:
            known = {g.lower() for t in texts for g in t.split("|") if g}
            if genre.lower() not in known:
                raise RecaeError(f"genre {genre!r} is not in the catalogue; known genres are "
                                 f"{', '.join(sorted(known)) or 'none'}")
            values = np.array([genre if genre.lower() in {g.lower() for g in t.split("|")} else f"not {genre}"
                               for t in texts], dtype=object)
            return Colouring("genre", values, True)
        labels = genre_labels(texts)
        if any(lab is not None for lab in labels):
            return Colouring("genre", labels, True)
        if colour == "genre":
            raise RecaeError("the catalogue has no genres for these movies; use --colour activity or mean-rating")
        note = "the catalogue has no genres; coloured by activity"
    elif colour == "genre":
        raise RecaeError("genres belong to movies in the store; colour users by activity or mean-rating")
    if colour == "mean-rating":
        return Colouring("mean-rating", latent.mean_rating.astype(np.float64), False, note)
    return Colouring("activity", np.log10(np.maximum(latent.n_ratings, 1)).astype(np.float64), False, note)
