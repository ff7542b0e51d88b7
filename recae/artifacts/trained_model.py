"""The scorer every serving, evaluation and insight module uses: a fitted autoencoder with the ratings it reads.

``TrainedModel`` predicts ratings, scores every film for users and, with a ranker, orders lists; it knows nothing
of files or the store (``recae.artifacts.model_files`` writes and reads it, ``recae.serving.registry`` publishes it),
so training can build one without importing the serving lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from recae.artifacts.blending import blend, mix
from recae.evaluation.metrics import relevance_threshold
from recae.models.autoencoders import AutoEncoder, ModelConfig, pairs_pattern
from recae.models.batches import oriented_csr, sparse_rows
from recae.models.names import Orientation
from recae.models.rankers import Ranker
from recae.store.matrix import IdIndex, RatingMatrix

if TYPE_CHECKING:
    from collections.abc import Callable

    from recae.artifacts.train_config import TrainConfig
    from recae.models.svd_part import SvdPart

_SCORE_CHUNK = 2048  # vectors encoded at once when predicting (bounds memory) ...
_SCORE_RATINGS = 1 << 20  # ... and at most this many of their ratings or predicted entries, unless one has more


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A fitted autoencoder ready to score; implements ``recae.evaluation.evaluate.Scorer``.

    ``inputs`` are the training ratings the model reads (every training rating, never a test one): in item
    orientation each movie's column of them is encoded once into features (n_movies, h_1); in user orientation a
    user's row is encoded on demand. Predictions are clipped to ``rating_scale``.
    """

    module: AutoEncoder
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
    mix_weights: tuple[float, ...] = ()
    # the top-N model that orders recommendations (recae.models.rankers); None: order by predicted rating
    ranker: Ranker | None = None
    ranker_search: dict[str, Any] = field(default_factory=dict)  # how the ranker's settings were chosen
    tune_search: dict[str, Any] = field(default_factory=dict)  # `train --tune`'s trials and choice (training.tune)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

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

    @torch.no_grad()
    def _features(self, vectors: np.ndarray) -> torch.Tensor:
        """(len(vectors), h_1) decoder features of oriented input vectors; all movies' cached in item orientation."""
        if self.orientation is Orientation.ITEM:
            return self._features_of_all_movies()[torch.from_numpy(np.asarray(vectors, dtype=np.int64))]
        return self._encode(vectors)

    @torch.no_grad()
    def _encode(self, vectors: np.ndarray) -> torch.Tensor:
        self.module.eval()
        parts = []
        lengths = np.diff(self._oriented().indptr)[vectors]
        for chunk in _chunks(lengths, _SCORE_CHUNK, _SCORE_RATINGS):
            block = sparse_rows(self._oriented(), vectors[chunk])
            parts.append(self.module.features(self.module.encode(block).code))
        width = self.model_config.hidden[0]
        return torch.cat(parts) if parts else torch.zeros(0, width)

    def _empty(self, vectors: np.ndarray) -> np.ndarray:
        return np.diff(self._oriented().indptr)[vectors] == 0

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Clipped predicted ratings at (user row, movie col) pairs: (n,) float32 (blended with the partner's)."""
        return self.blended(self._predict_own(rows, cols), lambda partner: partner.predict(rows, cols),
                             lambda svd: svd.predict(rows, cols))

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        """Clipped predicted ratings of every movie for users ``rows``: (len(rows), n_movies) float32."""
        return self.blended(self._score_rows_own(rows), lambda partner: partner.score_rows(rows),
                             lambda svd: svd.score_rows(rows))

    def rank_rows(self, rows: np.ndarray) -> np.ndarray:
        """Ranking scores of every movie for users ``rows`` (higher first): (len(rows), n_movies) float32.

        The ranker's scores when the model has one, else the predicted ratings.
        """
        if self.ranker is None:
            return self.score_rows(rows)
        return self.ranker.score_rows(self.inputs.csr[np.asarray(rows, dtype=np.int64)])

    def blended(self, ours: np.ndarray, theirs: Callable[[TrainedModel], np.ndarray],
                svd_scores: Callable[[SvdPart], np.ndarray]) -> np.ndarray:
        """``ours`` mixed with the partner's and the SVD part's predictions as the model was fitted: the stacked
        weights when it has an SVD part, else the pair's blend weight, else ``ours`` alone. Scoring and fold-in
        both mix here, each handing in how its parts predict."""
        if self.svd is not None:
            partner = [] if self.partner is None else [theirs(self.partner)]
            return mix([ours, *partner, svd_scores(self.svd)], np.asarray(self.mix_weights), self.rating_scale)
        if self.partner is None or self.blend_weight >= 1.0:
            return ours
        return blend(ours, theirs(self.partner), self.blend_weight)

    @torch.no_grad()
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
        for chunk in _chunks(np.array([g.size for g in groups]), _SCORE_CHUNK, _SCORE_RATINGS):
            picked = np.concatenate(groups[chunk])
            unique_vectors, pattern, inverse = pairs_pattern(vectors[picked], units[picked], n_units)
            feats = self._features(unique_vectors)  # (n_unique, h_1)
            values = self.module.output_at(feats, pattern)  # (n_entries,)
            empty = torch.from_numpy(self._empty(unique_vectors))[pattern.row_of]
            values = torch.where(empty, self.module.fallback[pattern.col], values)
            out[picked] = values.numpy()[inverse]
        return np.clip(out, *self.rating_scale)

    @torch.no_grad()
    def _score_rows_own(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        module = self.module
        if self.orientation is Orientation.ITEM:
            feats = self._features_of_all_movies()  # (n_movies, h_1), cached, not copied
            picked = torch.from_numpy(rows)
            scores = module.unit_scores(feats, picked)  # (batch, n_movies)
            empty = self._empty_movies()
            if empty is not None:
                scores = torch.where(empty[None, :], module.fallback[picked][:, None], scores)
        else:
            scores = module.output_dense(self._features(rows))  # (batch, n_movies)
            empty = torch.from_numpy(self._empty(rows))
            scores = torch.where(empty[:, None], module.fallback[None, :], scores)
        return scores.clamp_(*self.rating_scale).numpy()

    def _features_of_all_movies(self) -> torch.Tensor:
        if "features" not in self._cache:
            self._cache["features"] = self._encode(np.arange(self._oriented().shape[0]))
        return self._cache["features"]

    def _empty_movies(self) -> torch.Tensor | None:
        """(n_movies,) movies with no training rating (they get the user's mean), or None when there are none."""
        if "empty_movies" not in self._cache:
            empty = torch.from_numpy(self._empty(np.arange(self.index.n_movies)))
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
