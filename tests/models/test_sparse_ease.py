"""Sparse EASE: dense EASE exactly when the head holds every film, close to it as the head shrinks, every rated
film covered, stored and loaded like the dense one, and chosen by ``ranker = "auto"`` above the head's budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recae.artifacts.model_files import load_model, save_model
from recae.artifacts.train_config import TrainConfig
from recae.evaluation.splits import Split, SplitSpec
from recae.models.rankers import fit_ease
from recae.models.sparse_ease import fit_sparse_ease, search_sparse_ease_lambda, train_sparse_ease
from recae.store.matrix import IdIndex, RatingMatrix
from recae.training.ranking import fit_ranker, ranker_kind
from recae.training.train import train_split
from tests.models.test_rankers import _tiny_configs

LAMBDA = 20.0


def skewed_taste(n_users: int = 500, n_movies: int = 300, per_user: int = 30, seed: int = 0) -> RatingMatrix:
    """Users of 4 tastes, each rating ``per_user`` films drawn by a Zipf-like popularity times their taste's
    affinity; liked films of their taste get 4-5, others 1-3. Popularity makes a head and a long tail."""
    rng = np.random.default_rng(seed)
    taste_of_film = rng.integers(0, 4, n_movies)
    popularity = 1.0 / (np.arange(n_movies) + 5.0) ** 1.1
    rows, cols, values = [], [], []
    for user in range(n_users):
        taste = user % 4
        weight = popularity * np.where(taste_of_film == taste, 4.0, 1.0)
        films = np.sort(rng.choice(n_movies, per_user, replace=False, p=weight / weight.sum()))
        liked = taste_of_film[films] == taste
        rows += [user] * per_user
        cols += films.tolist()
        values += np.where(liked, rng.integers(4, 6, per_user), rng.integers(1, 4, per_user)).tolist()
    index = IdIndex(np.arange(1, n_users + 1), np.arange(1, n_movies + 1))
    return RatingMatrix.from_positions(np.array(rows), np.array(cols), np.array(values, np.float32), None, index)


def _rated(matrix: RatingMatrix) -> np.ndarray:
    return np.flatnonzero(np.bincount(matrix.csr.indices, minlength=matrix.shape[1]))


def test_with_every_film_in_the_head_it_is_dense_ease() -> None:
    data = skewed_taste()
    dense = fit_ease(data.csr, LAMBDA)
    sparse = fit_sparse_ease(data.csr, LAMBDA, head_items=10_000)
    assert sparse.tail.size == 0 and np.array_equal(sparse.head, dense.items)
    rows = data.csr[:50]
    assert np.allclose(sparse.score_rows(rows), dense.score_rows(rows), atol=1e-4)


def _agreement(data: RatingMatrix, head_items: int) -> tuple[float, float]:
    """(mean Spearman correlation over users' unrated films, mean top-10 overlap) against dense EASE."""
    dense = fit_ease(data.csr, LAMBDA).score_rows(data.csr)
    sparse = fit_sparse_ease(data.csr, LAMBDA, head_items=head_items, neighbours=32).score_rows(data.csr)
    correlations, overlaps = [], []
    for row in range(0, data.shape[0], 5):
        unrated = np.setdiff1d(_rated(data), data.csr[row].indices)
        a, b = dense[row, unrated], sparse[row, unrated]
        ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
        correlations.append(np.corrcoef(ranks_a, ranks_b)[0, 1])
        overlaps.append(np.intersect1d(unrated[np.argsort(-a)[:10]], unrated[np.argsort(-b)[:10]]).size / 10)
    return float(np.mean(correlations)), float(np.mean(overlaps))


def test_scores_agree_with_the_dense_solve_and_degrade_gracefully_as_the_head_shrinks() -> None:
    data = skewed_taste()
    figures = {head: _agreement(data, head) for head in (250, 150, 75, 30)}
    # measured (Spearman / top-10 overlap) on skewed_taste seeds 0-4: head 250: 0.953-0.955 / 0.920-0.937,
    # 150: 0.828-0.834 / 0.810-0.842, 75: 0.736-0.741 / 0.724-0.757, 30: 0.674-0.683 / 0.666-0.690;
    # bounds about 0.03-0.05 below the worst seed
    assert figures[250][0] > 0.92 and figures[250][1] > 0.88
    assert figures[75][0] > 0.70 and figures[75][1] > 0.68
    assert figures[30][0] > 0.63 and figures[30][1] > 0.60
    sizes = sorted(figures, reverse=True)
    for bigger, smaller in zip(sizes, sizes[1:], strict=False):
        assert figures[bigger][1] >= figures[smaller][1] - 0.02  # never much better with fewer films exact


def test_every_rated_film_is_covered_and_a_tail_film_can_top_a_list() -> None:
    data = skewed_taste()
    ranker = fit_sparse_ease(data.csr, LAMBDA, head_items=40, neighbours=16)
    assert np.array_equal(ranker.items, _rated(data)) and ranker.tail.size > 200
    assert ranker.describe()["items"] == _rated(data).size
    scores = ranker.score_rows(data.csr)
    scores[data.csr.toarray() > 0] = -np.inf
    tops = np.argmax(scores, axis=1)
    assert np.isin(tops, ranker.tail).any()  # some user's first film is one outside the head
    assert ranker.tail_weights.getnnz(axis=0).max() <= 16


def test_a_film_never_rated_ranks_after_every_rated_one() -> None:
    data = skewed_taste()
    csr = data.csr.tolil()
    csr[:, 7] = 0  # film 8 loses its ratings
    csr = sp.csr_matrix(csr)
    csr.eliminate_zeros()
    ranker = fit_sparse_ease(csr, LAMBDA, head_items=50, neighbours=8)
    assert 7 not in ranker.items
    scores = ranker.score_rows(csr[:20])
    others = np.delete(scores, 7, axis=1)
    assert (scores[:, 7] < others.min(axis=1)).all()


def test_the_lambda_search_reads_a_user_sample_above_its_budget_and_never_the_test_part() -> None:
    data = skewed_taste()
    whole = search_sparse_ease_lambda(data, head_items=100, neighbours=16)
    sampled = search_sparse_ease_lambda(data, head_items=100, neighbours=16, search_ratings=data.nnz // 3)
    assert whole["sample_ratings"] == data.nnz
    assert data.nnz // 3 - 30 <= sampled["sample_ratings"] <= data.nnz // 3
    assert len(whole["trials"]) >= 2 and whole["lambda"] in [t["lambda"] for t in whole["trials"]]
    ranker, record = train_sparse_ease(data, lam=7.0, head_items=100)
    assert ranker.lam == 7.0 and record["lambda"] == 7.0 and "trials" not in record


def test_auto_is_dense_within_the_head_budget_and_sparse_above() -> None:
    data = skewed_taste()
    assert ranker_kind(data, TrainConfig(ranker="auto", ranker_head_items=10_000)) == "ease"
    assert ranker_kind(data, TrainConfig(ranker="auto", ranker_head_items=100)) == "sparse-ease"
    assert ranker_kind(data, TrainConfig(ranker="ease", ranker_head_items=100)) == "ease"
    ranker, _ = fit_ranker(data, TrainConfig(ranker="auto", ranker_head_items=100, ranker_lambda=LAMBDA))
    assert ranker.describe()["kind"] == "sparse-ease" and ranker.describe()["head_items"] == 100


def test_a_model_with_sparse_ease_is_saved_loaded_and_ranks_alike(tmp_path: Path) -> None:
    data = skewed_taste(n_users=200, n_movies=120)
    model_cfg, train_cfg = _tiny_configs()
    train_cfg = TrainConfig(**{**train_cfg.to_json(), "ranker": "sparse-ease", "ranker_head_items": 40,
                               "ranker_neighbours": 8})
    mask = np.random.default_rng(1).random(data.nnz) < 0.1
    trained = train_split(Split(spec=SplitSpec("random"), train=data.subset(~mask), test=data.subset(mask)),
                          model_cfg, train_cfg).trained
    meta = save_model(trained, tmp_path / "v", version="v")
    assert meta["ranker"]["kind"] == "sparse-ease" and meta["ranker"]["items"] == _rated(data.subset(~mask)).size
    assert meta["ranker"]["n_movies"] == data.shape[1] and meta["ranker"]["search"]["trials"]
    loaded = load_model(tmp_path / "v")
    rows = np.arange(10)
    assert np.allclose(loaded.rank_rows(rows), trained.rank_rows(rows), atol=1e-5)


@pytest.mark.parametrize("field", ["ranker_head_items", "ranker_neighbours"])
def test_a_head_or_neighbourhood_of_zero_is_refused(field: str) -> None:
    from recae.errors import TrainingError

    with pytest.raises(TrainingError, match=field):
        TrainConfig(**{field: 0}).validate()


def test_recae_train_above_the_head_budget_serves_every_film_and_says_sparse_ease(tmp_path: Path) -> None:
    """A store with more rated films than the (lowered) head budget: ``auto`` fits sparse EASE, meta.json and
    ``models show`` say so with every rated film counted, and the served lists reach films outside the head."""
    import json

    from tests.base.test_home import run

    data = skewed_taste(n_users=300, n_movies=200)
    rows, cols, values = data.coo()
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("".join(f"{u + 1},{m + 1},{r:g}\n" for u, m, r in zip(rows, cols, values, strict=True)))
    config = tmp_path / "tiny.toml"
    config.write_text("[model]\nhidden = [16]\n[train]\nepochs = 2\nensemble = 1\npartner_members = 0\n"
                      "blend_svd = false\nthreads = 1\nweight_decay = 20.0\nranker_head_items = 50\n"
                      "ranker_neighbours = 8\n")
    home = tmp_path / "home"
    assert run(home, "ingest", "--ratings", str(ratings))[0] == 0
    code, _, err = run(home, "train", "--config", str(config))
    assert code == 0, err
    code, out, err = run(home, "models", "show", "--format", "json")
    assert code == 0, err
    ranker = json.loads(out)["config"]["ranker"]
    assert ranker["kind"] == "sparse-ease" and ranker["head_items"] == 50 and ranker["n_movies"] == 200
    folder = Path(json.loads(out)["path"])
    meta = json.loads((folder / "meta.json").read_text())
    from safetensors.numpy import load_file

    trained_films = np.unique(load_file(folder / "weights.safetensors")["inputs/indices"]).size  # training ratings
    assert meta["ranker"]["items"] == trained_films > 150
    head = set(np.argsort(-np.bincount(cols, minlength=200), kind="stable")[:50] + 1)
    listed = set()
    for user in (1, 2, 3, 4, 5, 6, 7, 8):
        code, out, err = run(home, "recommend", "--user", str(user), "-n", "20", "--format", "json")
        assert code == 0, err
        listed |= {record["movie_id"] for record in json.loads(out)}
    assert listed - head  # films outside the head reach the lists


def test_a_ranker_too_large_for_the_memory_budget_is_refused_before_training_starts(tmp_path: Path) -> None:
    """A dense EASE that would not fit the budget: one line naming the need, the budget and the settings, exit 1,
    and no epoch trained (the refusal comes before the autoencoders)."""
    from recae.errors import TrainingError
    from recae.training.ranking import check_ranker_memory
    from tests.base.test_home import run

    data = skewed_taste()
    check_ranker_memory(data, TrainConfig(ranker="ease"))  # 300 films: far below 6 GB
    with pytest.raises(TrainingError, match=r"needs about .* GB .* memory budget of 1e-06 GB; lower ranker_max_items"):
        check_ranker_memory(data, TrainConfig(ranker="ease", memory_budget_gb=1e-6))
    with pytest.raises(TrainingError, match="lower ranker_head_items"):
        check_ranker_memory(data, TrainConfig(ranker="sparse-ease", memory_budget_gb=1e-6))
    check_ranker_memory(data, TrainConfig(ranker="none", memory_budget_gb=1e-6))
    rows, cols, values = data.coo()
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("".join(f"{u + 1},{m + 1},{r:g}\n" for u, m, r in zip(rows, cols, values, strict=True)))
    config = tmp_path / "budget.toml"
    config.write_text("[train]\nepochs = 2\nensemble = 1\nthreads = 1\nmemory_budget_gb = 0.000001\n")
    home = tmp_path / "home"
    assert run(home, "ingest", "--ratings", str(ratings))[0] == 0
    code, out, err = run(home, "train", "--config", str(config))
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert code == 1 and len(errors) == 1 and "memory budget" in errors[0] and "Traceback" not in err
    assert not list((home / "models").glob("*/meta.json"))  # nothing published
