"""A run fits its ranker first and parks it in the run folder: the networks train without it in memory, the
published model carries it unchanged, and a resumed run reads it back instead of fitting it again."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from recae.artifacts.train_config import TrainConfig
from recae.evaluation.splits import Split, SplitSpec, random_split
from recae.store.matrix import RatingMatrix
from recae.training.ranking import RANKER_FILE, fit_ranker, run_ranker
from recae.training.train import train_split
from tests.models.test_rankers import _tiny_configs
from tests.models.test_sparse_ease import skewed_taste


@pytest.mark.parametrize("kind", ["ease", "sparse-ease"])
def test_a_parked_ranker_reads_back_as_the_fitted_one(tmp_path: Path, kind: str) -> None:
    data = skewed_taste(n_users=200, n_movies=120)
    cfg = TrainConfig(ranker=kind, ranker_head_items=60, ranker_lambda=20.0)
    parked = run_ranker(data, cfg, tmp_path, resume=False)
    assert parked is not None and parked.ranker is None and (tmp_path / RANKER_FILE).exists()  # not in memory
    direct, _ = fit_ranker(data, cfg)
    rows = data.csr[:40]
    assert np.allclose(parked.load().score_rows(rows), direct.score_rows(rows), atol=1e-5)
    assert parked.load().describe() == direct.describe()


def test_a_resumed_run_reads_its_ranker_back_and_other_settings_fit_again(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    data = skewed_taste(n_users=200, n_movies=120)
    cfg = TrainConfig(ranker="ease", ranker_lambda=20.0)
    first = run_ranker(data, cfg, tmp_path, resume=False)
    assert first is not None
    with caplog.at_level(logging.INFO, logger="recae.training.ranking"):
        again = run_ranker(data, cfg, tmp_path, resume=True)
    assert again is not None and "read back" in caplog.text and again.seconds == first.seconds
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recae.training.ranking"):
        other = run_ranker(data, TrainConfig(ranker="ease", ranker_lambda=40.0), tmp_path, resume=True)
    assert other is not None and "other data or settings" in caplog.text and other.load().lam == 40.0
    (tmp_path / RANKER_FILE).write_bytes(b"not a safetensors file")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recae.training.ranking"):
        mended = run_ranker(data, cfg, tmp_path, resume=True)
    assert mended is not None and "could not be read" in caplog.text and mended.load().lam == 20.0


def test_train_split_with_a_run_folder_ships_the_parked_ranker(tmp_path: Path) -> None:
    data = skewed_taste(n_users=150, n_movies=80)
    split: Split = random_split(data, 0.1, 0)
    model_cfg, train_cfg = _tiny_configs()
    result = train_split(split, model_cfg, train_cfg, run_dir=tmp_path)
    assert (tmp_path / RANKER_FILE).exists()
    direct, _ = fit_ranker(split.train, train_cfg)
    assert result.trained.ranker is not None
    assert np.allclose(result.trained.ranker.score_rows(split.train.csr[:20]), direct.score_rows(split.train.csr[:20]),
                       atol=1e-5)
    assert result.metrics["ranker_lambda"] == direct.lam
    assert isinstance(result.trained.split_spec, dict) and SplitSpec.from_json(result.trained.split_spec).name


def watched_alike_liked_apart(seed: int = 0, n_users: int = 400) -> tuple[RatingMatrix, int, int]:
    """(ratings, liked film, disliked film): every user rates 5 of 10 anchor films; each also watches film 10 and
    film 11 with the same chance, independently, but rates film 10 with 4-5 stars and film 11 with 1-2. Who
    watches either is alike; only the ratings tell them apart."""
    rng = np.random.default_rng(seed)
    users, films, values = [], [], []
    for user in range(n_users):
        for film in rng.choice(10, size=5, replace=False):
            users.append(user), films.append(int(film)), values.append(float(rng.integers(3, 6)))
        for film, low in ((10, 4), (11, 1)):
            if rng.random() < 0.5:
                users.append(user), films.append(film), values.append(float(rng.integers(low, low + 2)))
    matrix = RatingMatrix.from_ids(np.array(users) + 1, np.array(films) + 1, np.array(values, np.float32))
    return matrix, 10, 11


def test_the_served_order_prefers_what_users_would_like_among_what_they_would_watch() -> None:
    """Issue 27's planted check: watched equally, liked differently; the shipped ranker (EASE on the rating values,
    its lambda chosen on a carve) puts the liked film first for users who have rated neither, and it is the values
    that do it (EASE on "has rated" alone sees two alike films)."""
    import scipy.sparse as sp

    from recae.models.rankers import fit_ease

    ratings, liked, disliked = watched_alike_liked_apart()
    ranker, _ = fit_ranker(ratings, TrainConfig())
    newcomers = sp.csr_matrix(ratings.csr[:50].toarray() * (np.arange(ratings.shape[1]) < 10))  # anchors only
    served = ranker.score_rows(newcomers)
    assert np.mean(served[:, liked] > served[:, disliked]) > 0.95
    binary = fit_ease(ratings.csr, ranker.lam, input="binary").score_rows(newcomers)
    gap = np.abs(binary[:, liked] - binary[:, disliked]).mean()
    assert gap < 0.25 * np.abs(served[:, liked] - served[:, disliked]).mean()
