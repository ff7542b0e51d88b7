"""The scorer every serving, evaluation and insight module uses: a fitted autoencoder with the ratings it reads.

``TrainedModel`` predicts ratings, scores every film for users and, with a ranker, orders lists; it knows nothing
of files or the store (``recae.artifacts.model_files`` writes and reads it, ``recae.serving.registry`` publishes it),
so training can build one without importing the serving lifecycle. It scores through a ``Network``
(``recae.artifacts.inference``), numpy in and out: a loaded model's is pure numpy (serving imports no torch), a
freshly trained one's is its torch module (``recae.artifacts.torch_network``); the orchestration is the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recae.artifacts.blending import blend, mix
from recae.evaluation.metrics import relevance_threshold
from recae.models.model_config import ModelConfig
from recae.models.names import Orientation
from recae.models.rankers import Ranker
from recae.models.vectors import oriented_csr, pairs_csr
from recae.store.matrix import IdIndex, RatingMatrix

if TYPE_CHECKING:
    from collections.abc import Callable

    from recae.artifacts.inference import Network
    from recae.artifacts.train_config import TrainConfig
    from recae.models.autoencoders import AutoEncoder
    from recae.models.side_part import SidePart
    from recae.models.svd_part import SvdPart

_SCORE_CHUNK = 2048  # vectors encoded at once when predicting (bounds memory) ...
_SCORE_RATINGS = 1 << 20  # ... and at most this many of their ratings or predicted entries, unless one has more


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A fitted autoencoder ready to score; implements ``recae.evaluation.evaluate.Scorer``.

    ``inputs`` are the training ratings the model reads (every training rating, never a test one): in item
    orientation each movie's column of them is encoded once into features (n_movies, h_1); in user orientation a
    user's row is encoded on demand. Predictions are clipped to ``rating_scale``.

    ``module`` is the torch network when the model was fitted in this process (None when it was loaded: then
    ``network`` is its numpy form, and :meth:`torch_module` rebuilds the module for whoever trains on from it).
    """

    module: AutoEncoder | None
    model_config: ModelConfig
    inputs: RatingMatrix
    rating_scale: tuple[float, float]
    train_config: TrainConfig | None = None
    split_spec: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # one EpochReport per epoch (all members)
    # an autoencoder of the other orientation on the same inputs, mixed in as ``w * ours + (1 - w) * partner's``
    partner: TrainedModel | None = None
    blend_weight: float = 1.0  # w, fitted on validation (recae.training.blend)
    # a Soft-Impute SVD (TrainConfig.blend_svd): then the prediction is ``clip(w_0 * ours + w_1 * partner's +
    # w_2 * svd's + c)`` with ``mix_weights = (w_0, w_1, w_2, c)`` fitted on the blend carve (without a partner
    # ``clip(w_0 * ours + w_1 * svd's + c)``, three numbers); None: the blend above
    svd: SvdPart | None = None
    # the films' genres and eras (TrainConfig.blend_side, with an SVD part only): one more stacked column after the
    # SVD's, a correction around 0 (``mix_weights`` then has one weight more)
    side: SidePart | None = None
    mix_weights: tuple[float, ...] = ()
    # the top-N model that orders recommendations (recae.models.rankers); None: order by predicted rating
    ranker: Ranker | None = None
    ranker_search: dict[str, Any] = field(default_factory=dict)  # how the ranker's settings were chosen
    tune_search: dict[str, Any] = field(default_factory=dict)  # `train --tune`'s trials and choice (training.tune)
    network: Network = None  # type: ignore[assignment]  # what scores; None: the module's (set in __post_init__)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.network is None:
            if self.module is None:
                raise ValueError("a TrainedModel needs its torch module or its numpy network")
            from recae.artifacts.torch_network import TorchNetwork

            object.__setattr__(self, "network", TorchNetwork(self.module))

    @classmethod
    def from_fit(cls, module: AutoEncoder, inputs: RatingMatrix, *, train_config: TrainConfig | None = None,
                 split_spec: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
                 history: list[dict[str, float]] | None = None) -> TrainedModel:
        module = module.to("cpu").eval()
        return cls(module=module, model_config=module.config, inputs=inputs, rating_scale=inputs.rating_scale(),
                   train_config=train_config, split_spec=split_spec, metrics=dict(metrics or {}),
                   history=list(history or []))

    @property
    def index(self) -> IdIndex:
        return self.inputs.index

    @property
    def orientation(self) -> Orientation:
        return self.model_config.orientation

    @property
    def n_units(self) -> int:
        """The network's output units: users in item orientation, films in user orientation."""
        return self.index.n_users if self.orientation is Orientation.ITEM else self.index.n_movies

    def drop_caches(self) -> None:
        """Forget what scoring cached here and in the partner (encoded features, oriented inputs: 0.8 GB at ML-32M
        shape), for a caller done scoring with this model that goes on holding it."""
        self._cache.clear()
        if self.partner is not None:
            self.partner.drop_caches()

    def torch_module(self) -> AutoEncoder:
        """The torch network (imports torch): the fitted module, or one rebuilt from the loaded arrays (cached)."""
        if self.module is not None:
            return self.module
        if "module" not in self._cache:
            from recae.artifacts.torch_network import module_from_arrays

            self._cache["module"] = module_from_arrays(self.model_config, self.network.arrays(), self.n_units)
        return self._cache["module"]

    def inference_form(self) -> TrainedModel:
        """This model scoring with numpy (its partner too), as it will once published and loaded: what the lists
        precomputed at publish time are scored with, so that they are what a server computes from the file."""
        if self.module is None and (self.partner is None or self.partner.module is None):
            return self
        from recae.artifacts.inference import network_from_arrays

        network = network_from_arrays(self.model_config, self.network.arrays(), self.n_units)
        partner = None if self.partner is None else self.partner.inference_form()
        return replace(self, module=None, network=network, partner=partner, _cache={})

    def popularity(self) -> np.ndarray:
        """(n_movies,) int64 number of training ratings of each film: the fallback order when a user's ratings
        tell the model nothing (recae.serving.recommend.answer_with_model); cached."""
        if "popularity" not in self._cache:
            self._cache["popularity"] = np.bincount(self.inputs.csr.indices, minlength=self.index.n_movies)
        return self._cache["popularity"]

    def _oriented(self) -> sp.csr_matrix:
        if "oriented" not in self._cache:
            self._cache["oriented"] = oriented_csr(self.inputs, self.orientation)
        return self._cache["oriented"]

    def _features(self, vectors: np.ndarray) -> np.ndarray:
        """(len(vectors), h_1) decoder features of oriented input vectors; all movies' cached in item orientation."""
        if self.orientation is Orientation.ITEM:
            return self._features_of_all_movies()[np.asarray(vectors, dtype=np.int64)]
        return self._encode(vectors)

    def _encode(self, vectors: np.ndarray) -> np.ndarray:
        parts = []
        vectors = np.asarray(vectors, dtype=np.int64)
        lengths = np.diff(self._oriented().indptr)[vectors]
        for chunk in _chunks(lengths, _SCORE_CHUNK, _SCORE_RATINGS):
            parts.append(self.network.features_of(self._oriented()[vectors[chunk]]))
        width = self.model_config.hidden[0]
        return np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else np.zeros((0, width), np.float32)

    def _empty(self, vectors: np.ndarray) -> np.ndarray:
        return np.diff(self._oriented().indptr)[vectors] == 0

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Clipped predicted ratings at (user row, movie col) pairs: (n,) float32 (blended with the partner's)."""
        return self.blended(self._predict_own(rows, cols), lambda partner: partner.predict(rows, cols),
                             lambda part: part.predict(rows, cols))

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        """Clipped predicted ratings of every movie for users ``rows``: (len(rows), n_movies) float32."""
        return self.blended(self._score_rows_own(rows), lambda partner: partner.score_rows(rows),
                             lambda part: part.score_rows(rows))

    def rank_rows(self, rows: np.ndarray) -> np.ndarray:
        """Ranking scores of every movie for users ``rows`` (higher first): (len(rows), n_movies) float32.

        The ranker's scores when the model has one, else the predicted ratings.
        """
        if self.ranker is None:
            return self.score_rows(rows)
        return self.ranker.score_rows(self.inputs.csr[np.asarray(rows, dtype=np.int64)])

    def blended(self, ours: np.ndarray, theirs: Callable[[TrainedModel], np.ndarray],
                part_scores: Callable[[SvdPart | SidePart], np.ndarray]) -> np.ndarray:
        """``ours`` mixed with the partner's and the stacked parts' (SVD, side) predictions as the model was fitted:
        the stacked weights when it has an SVD part, else the pair's blend weight, else ``ours`` alone. Scoring and
        fold-in both mix here, each handing in how its parts predict (the parts share one interface)."""
        if self.svd is not None:
            partner = [] if self.partner is None else [theirs(self.partner)]
            stacked = [part_scores(part) for part in (self.svd, self.side) if part is not None]
            return mix([ours, *partner, *stacked], np.asarray(self.mix_weights), self.rating_scale)
        if self.partner is None or self.blend_weight >= 1.0:
            return ours
        return blend(ours, theirs(self.partner), self.blend_weight)

    def _predict_own(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        if rows.size == 0:
            return np.zeros(0, np.float32)
        vectors, units = (cols, rows) if self.orientation is Orientation.ITEM else (rows, cols)
        n_units = self._oriented().shape[1]
        out = np.empty(rows.size, np.float32)
        order = np.argsort(vectors, kind="stable")
        boundaries = np.flatnonzero(np.diff(vectors[order])) + 1
        groups = np.split(order, boundaries)
        fallback = self.network.fallback
        for chunk in _chunks(np.array([g.size for g in groups]), _SCORE_CHUNK, _SCORE_RATINGS):
            picked = np.concatenate(groups[chunk])
            unique_vectors, pattern, inverse = pairs_csr(vectors[picked], units[picked], n_units)
            feats = self._features(unique_vectors)  # (n_unique, h_1)
            values = self.network.output_at(feats, pattern)  # (n_entries,)
            row_of = np.repeat(np.arange(unique_vectors.size), np.diff(pattern.indptr))
            values = np.where(self._empty(unique_vectors)[row_of], fallback[pattern.indices], values)
            out[picked] = values[inverse]
        return np.clip(out, *self.rating_scale)

    def _score_rows_own(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        network = self.network
        if self.orientation is Orientation.ITEM:
            feats = self._features_of_all_movies()  # (n_movies, h_1), cached, not copied
            scores = network.unit_scores(feats, rows)  # (batch, n_movies)
            empty = self._empty_movies()
            if empty is not None:
                scores = np.where(empty[None, :], network.fallback[rows][:, None], scores)
        else:
            scores = network.output_dense(self._features(rows))  # (batch, n_movies)
            scores = np.where(self._empty(rows)[:, None], network.fallback[None, :], scores)
        return np.clip(scores, *self.rating_scale, out=scores).astype(np.float32, copy=False)

    def _features_of_all_movies(self) -> np.ndarray:
        if "features" not in self._cache:
            self._cache["features"] = self._encode(np.arange(self._oriented().shape[0]))
        return self._cache["features"]

    def _empty_movies(self) -> np.ndarray | None:
        """(n_movies,) movies with no training rating (they get the user's mean), or None when there are none."""
        if "empty_movies" not in self._cache:
            empty = self._empty(np.arange(self.index.n_movies))
            self._cache["empty_movies"] = empty if bool(empty.any()) else None
        return self._cache["empty_movies"]


def _chunks(lengths: np.ndarray, max_items: int, max_total: int) -> list[slice]:
    """Consecutive slices of ``lengths`` with at most ``max_items`` items and ``max_total`` summed length each
    (an item longer than ``max_total`` gets a slice of its own): popular films hold most ratings, so a fixed count
    of vectors is not a memory bound (2048 films of ML-25M shape hold millions of ratings)."""
    slices, start, total = [], 0, 0
    for i, length in enumerate(lengths.tolist()):
        if i > start and (i - start >= max_items or total + length > max_total):
            slices.append(slice(start, i))
            start, total = i, 0
        total += length
    if start < len(lengths):
        slices.append(slice(start, len(lengths)))
    return slices


def with_metrics(trained: TrainedModel, metrics: dict[str, float]) -> TrainedModel:
    """A copy of ``trained`` carrying ``metrics`` (for meta.json and the store row)."""
    return replace(trained, metrics=dict(metrics), _cache=trained._cache)


def model_relevance(trained: TrainedModel, relevant_from: float | None = None) -> float:
    """The rating from which a held-out rating is relevant for this model: ``relevant_from`` when given, else the
    one it was trained with (``relevant_from`` in its train config, also used by its ranker's lambda search), else
    ``recae.evaluation.metrics.RELEVANT_SHARE`` x the top of its training ratings (4 on 1-5 and 0.5-5, 8 on 2-10)."""
    if relevant_from is None and trained.train_config is not None:
        relevant_from = trained.train_config.relevant_from
    return relevance_threshold(trained.rating_scale[1], relevant_from)
