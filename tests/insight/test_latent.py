"""Latent codes, the 2-D maps and their separation scores, on data with planted clusters.

Also home of the helpers the plot, anomaly and embed tests share: planted data and a store with a published model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recae.artifacts.train_config import TrainConfig
from recae.artifacts.trained_model import TrainedModel
from recae.errors import RecaeError
from recae.insight.latent import (
    colouring,
    genre_labels,
    knn_accuracy,
    latent_codes,
    latent_map,
    pca_2d,
    separation,
    silhouette,
    to_plane,
)
from recae.models.autoencoders import ModelConfig
from recae.models.batches import oriented_csr, sparse_rows
from recae.models.build import model_config
from recae.store.matrix import IdIndex, RatingMatrix
from recae.training.train import fit

# --- shared helpers --------------------------------------------------------------------------------------------


def planted_clusters(n_users: int = 300, n_clusters: int = 6, per_cluster: int = 30, density: float = 0.3,
                     seed: int = 0) -> tuple[RatingMatrix, np.ndarray]:
    """Movies in ``n_clusters`` planted groups; each user likes (+1.5) or dislikes (-1.5) each group at random.

    The group profiles over users are random sign vectors, all equally far apart: no plane holds more than a few
    of them, so a linear 2-D map (PCA) must overlap groups, while a non-linear 2-unit code can place them all.
    Integer ratings 1..5 observed with ``density``. Returns the ratings and each movie's group (movie col order).
    """
    rng = np.random.default_rng(seed)
    n_movies = n_clusters * per_cluster
    groups = np.repeat(np.arange(n_clusters), per_cluster)
    taste = rng.choice([-1.0, 1.0], size=(n_users, n_clusters))
    full = np.clip(np.round(3 + 1.5 * taste[:, groups] + rng.normal(0, 0.3, (n_users, n_movies))), 1, 5)
    mask = rng.random((n_users, n_movies)) < density
    mask[np.arange(n_users), rng.integers(0, n_movies, n_users)] = True  # nobody empty
    mask[rng.integers(0, n_users, n_movies), np.arange(n_movies)] = True
    rows, cols = np.nonzero(mask)
    index = IdIndex(np.arange(n_users, dtype=np.int64) + 1, np.arange(n_movies, dtype=np.int64) + 1)
    timestamps = rng.integers(1_000_000_000, 1_100_000_000, rows.size)
    return RatingMatrix.from_positions(rows, cols, full[rows, cols], timestamps, index), groups


#: A tiny model with a 2-unit code layer (Hinton and Salakhutdinov's setting), and settings that train it in seconds.
MAP_MODEL = model_config("stacked", orientation="item", hidden=(32, 2), activation="tanh")
MAP_TRAINING = TrainConfig(ensemble=1, weight_decay_grid=(), weight_decay=0.1, epochs=100, lr=1e-2,
                           batch_ratings=4000, patience=1000, seed=0, threads=1)


def train_small(matrix: RatingMatrix, model_cfg: ModelConfig = MAP_MODEL,
                train_cfg: TrainConfig = MAP_TRAINING) -> TrainedModel:
    """Fit on 90% of ``matrix`` (validation on the rest); the model reads every rating as input."""
    keep = np.random.default_rng(train_cfg.seed).random(matrix.nnz) >= 0.1
    result = fit(matrix.subset(keep), matrix.subset(~keep), model_cfg, train_cfg)
    from dataclasses import asdict

    return TrainedModel.from_fit(result.module, matrix, train_config=train_cfg,
                                 history=[asdict(h) for h in result.history])


def write_ratings_csv(matrix: RatingMatrix, path: Path) -> Path:
    rows, cols, values = matrix.coo()
    lines = ["user_id,movie_id,rating,timestamp"]
    lines += [f"{u},{m},{int(v)},{t}" for u, m, v, t in zip(matrix.index.user_ids[rows], matrix.index.movie_ids[cols],
                                                          values, matrix.timestamps, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def publish_planted(home: Path, matrix: RatingMatrix, model_cfg: ModelConfig, train_cfg: TrainConfig,
                    genres: dict[int, str] | None = None) -> Path:
    """A recae home whose store holds ``matrix`` (ingested from CSV) and a champion trained on a random split."""
    from sqlalchemy import update

    from recae.evaluation.splits import SplitSpec
    from recae.paths import resolve_paths
    from recae.serving.publish import train_and_publish
    from recae.store.db import Movie, open_store
    from recae.store.ingest import ingest_ratings_file

    home.mkdir(parents=True, exist_ok=True)
    paths = resolve_paths(home)
    engine = open_store(paths.database_url)
    try:
        ingest_ratings_file(engine, write_ratings_csv(matrix, home / "ratings.csv"), scale=(1.0, 5.0), step=1.0)
        if genres:
            with engine.begin() as conn:
                for movie_id, text in genres.items():
                    conn.execute(update(Movie).where(Movie.movie_id == movie_id).values(genres=text))
        train_and_publish(engine, paths.models_dir, SplitSpec("random", 0.1, 0), model_cfg, train_cfg)
    finally:
        engine.dispose()
    return home


# --- PCA and the scores ----------------------------------------------------------------------------------------


def _reference_pca(dense: np.ndarray) -> np.ndarray:
    centred = dense - dense.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :2] * s[:2]


def test_sparse_pca_matches_the_dense_svd_up_to_sign() -> None:
    x = sp.random(300, 80, density=0.1, random_state=np.random.default_rng(1), format="csr") * 5
    got, reference = pca_2d(x), _reference_pca(x.toarray())
    for j in range(2):
        sign = np.sign(got[:, j] @ reference[:, j])
        assert np.allclose(got[:, j], sign * reference[:, j], atol=1e-6)
    assert np.allclose(pca_2d(x.toarray()), got, atol=1e-6)  # dense input, same answer and same signs
    assert np.allclose(pca_2d(x), got)  # deterministic


def test_pca_keeps_a_planted_plane_and_codes_of_width_two_are_shown_as_they_are() -> None:
    rng = np.random.default_rng(0)
    plane = rng.normal(0, 3, (200, 2))
    basis, _ = np.linalg.qr(rng.normal(size=(40, 2)))
    embedded = plane @ basis.T + rng.normal(0, 0.01, (200, 40))
    got = pca_2d(embedded)
    distances = lambda p: np.linalg.norm(p[:, None] - p[None], axis=-1)  # noqa: E731
    assert np.allclose(distances(got), distances(plane), atol=0.1)
    assert np.array_equal(to_plane(plane), plane)


def test_knn_accuracy_and_silhouette_tell_blobs_from_noise() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]])
    blobs = centres[labels] + rng.normal(0, 1, (200, 2))
    assert knn_accuracy(blobs, labels) == 1.0 and silhouette(blobs, labels) > 0.7
    shuffled = rng.permutation(labels)
    assert knn_accuracy(blobs, shuffled) < 0.5 and abs(silhouette(blobs, shuffled)) < 0.1


def test_silhouette_follows_its_formula_on_a_tiny_case() -> None:
    points = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [7.0, 0.0]])
    labels = np.array(["a", "a", "b", "b"])
    # (a_i, b_i) by hand: (1, 6), (1, 5), (2, 4.5), (2, 6.5)
    expected = np.mean([(6 - 1) / 6, (5 - 1) / 5, (4.5 - 2) / 4.5, (6.5 - 2) / 6.5])
    assert silhouette(points, labels) == pytest.approx(expected)


# --- codes of trained models -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clusters() -> tuple[RatingMatrix, np.ndarray]:
    return planted_clusters()


@pytest.fixture(scope="module")
def map_model(clusters: tuple[RatingMatrix, np.ndarray]) -> TrainedModel:
    return train_small(clusters[0])


@pytest.mark.slow
def test_the_autoencoder_map_separates_planted_clusters_better_than_pca(
        clusters: tuple[RatingMatrix, np.ndarray], map_model: TrainedModel) -> None:
    latent = latent_map(map_model, "movies")
    scores = separation(latent, clusters[1].astype(str))
    print(f"planted clusters, 10-NN accuracy: autoencoder {scores.knn_autoencoder:.3f} vs PCA {scores.knn_pca:.3f}; "
          f"silhouette {scores.silhouette_autoencoder:.3f} vs {scores.silhouette_pca:.3f}")
    assert scores.n_points == 180 and scores.n_labels == 6
    assert scores.knn_autoencoder >= scores.knn_pca + 0.1
    assert scores.silhouette_autoencoder >= scores.silhouette_pca + 0.2


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_codes_come_from_the_code_layer_or_the_output_weights(orientation: str) -> None:
    matrix, _ = planted_clusters(n_users=40, n_clusters=3, per_cluster=10)
    cfg = model_config("stacked", orientation=orientation, hidden=(8, 3))
    trained = train_small(matrix, cfg, TrainConfig(ensemble=1, weight_decay_grid=(), epochs=2, threads=1))
    encoded, other = ("movies", "users") if orientation == "item" else ("users", "movies")
    codes = latent_codes(trained, encoded)
    assert codes.source == "code layer" and codes.codes.shape == (len(codes.ids), 3)
    vectors = oriented_csr(trained.inputs, orientation)
    direct = trained.module.encode(sparse_rows(vectors, np.array([5]))).code.detach().numpy()[0]
    assert np.allclose(codes.codes[5], direct, atol=1e-6)
    weights = latent_codes(trained, other)
    assert weights.source == "output weights" and weights.codes.shape == (len(weights.ids), 8)
    assert np.array_equal(weights.codes, trained.module.w_out.detach().numpy())
    latent = latent_map(trained, other)
    assert latent.autoencoder.shape == latent.pca.shape == (len(weights.ids), 2)
    assert latent.n_ratings.sum() == matrix.nnz


def test_a_film_is_labelled_by_its_least_common_genre() -> None:
    labels = genre_labels(["Comedy|Romance", "Comedy", "Comedy|Drama", "Drama|Romance", "", "(no genres listed)"])
    assert list(labels) == ["Romance", "Comedy", "Drama", "Drama", None, None]


def test_colouring_by_genre_needs_movies_and_known_genres(map_model: TrainedModel) -> None:
    users = latent_map(map_model, "users")
    with pytest.raises(RecaeError, match="genres belong to movies"):
        colouring(None, users, "genre")
    assert colouring(None, users, "auto").name == "activity"
    assert colouring(None, users, "mean-rating").values.shape == (users.ids.size,)
