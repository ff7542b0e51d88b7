"""Relevance follows the rating scale: the same ratings on 1-5 and doubled on 2-10 rank and score the same.

Issue 30 row 6: ranking metrics and the ranker's lambda search called a held-out rating relevant from 4 whatever the
scale, so on 2-10 nearly every rating was "liked". One small home per scale is built once for the module (planted
whole-star ratings, a tiny model trained with a test file of every tenth rating).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from recae.cli import cli
from tests.support.synthetic import planted_low_rank

TINY = ("[model]\nhidden = [16]\n[train]\nepochs = 2\nensemble = 1\npartner_members = 0\nblend_svd = false\n"
        "threads = 1\n")


def run(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


class Home:
    """A home holding the planted ratings times ``factor`` on the scale ``factor`` .. 5 ``factor``, trained once."""

    def __init__(self, root: Path, factor: int, config: str = TINY) -> None:
        planted = planted_low_rank(120, 60, seed=11).observed
        rows, cols, values = planted.coo()
        users, movies = planted.index.user_ids[rows], planted.index.movie_ids[cols]
        stars = np.clip(np.round(values.astype(np.float64)), 1, 5) * factor
        held = np.arange(users.size) % 10 == 3
        root.mkdir(parents=True, exist_ok=True)
        self.home = root / "home"
        (root / "ratings.csv").write_text("".join(f"{u},{m},{r:g}\n" for u, m, r in zip(users, movies, stars)))
        self.test_file = root / "test.csv"
        self.test_file.write_text("".join(f"{u},{m},{r:g}\n" for u, m, r in
                                          zip(users[held], movies[held], stars[held])))
        self.config = root / "tiny.toml"
        self.config.write_text(config)
        code, _, err = run(self.home, "ingest", "--ratings", str(root / "ratings.csv"), "--scale", str(factor),
                           str(5 * factor), "--step", str(factor))
        assert code == 0, err
        code, out, err = run(self.home, "train", "--config", str(self.config), "--test-ratings", str(self.test_file),
                             "--format", "json")
        assert code == 0, err
        self.summary = json.loads(out)
        self.user = int(users[0])

    def evaluate(self, *flags: str) -> dict:  # type: ignore[type-arg]
        code, out, err = run(self.home, "evaluate", "--format", "json", *flags)
        assert code == 0, err
        return json.loads(out)

    def recommended(self) -> list[int]:
        code, out, err = run(self.home, "recommend", "--user", str(self.user), "-n", "10", "--format", "json")
        assert code == 0, err
        return [r["movie_id"] for r in json.loads(out)]


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Home, Home]:
    root = tmp_path_factory.mktemp("relevance")
    return Home(root / "stars", 1), Home(root / "doubled", 2)


def close(a: object, b: object) -> bool:
    """Equal figures (within float noise) in two JSON values of the same shape."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)  # type: ignore
    return a == b


def test_a_doubled_scale_gives_the_same_lambda_lists_and_ranking_metrics(homes: tuple[Home, Home]) -> None:
    stars, doubled = homes
    assert stars.summary["ranker_lambda"] == doubled.summary["ranker_lambda"]
    assert close(stars.summary["test_ndcg@10"], doubled.summary["test_ndcg@10"])
    assert stars.recommended() == doubled.recommended()
    one, two = stars.evaluate(), doubled.evaluate()
    assert close(one["ranking"], two["ranking"]), (one["ranking"], two["ranking"])
    for name in ("most_popular", "ease"):  # the ranking baselines: EASE's lambda is searched on a carve too
        assert close(one["baselines"][name]["ranking"], two["baselines"][name]["ranking"]), name


def test_relevance_starts_at_four_fifths_of_the_top_rating_unless_set() -> None:
    from recae.evaluation.metrics import relevance_threshold

    assert relevance_threshold(5.0) == 4.0  # 1-5 and 0.5-5 alike: the top sets it, not the bottom
    assert relevance_threshold(10.0) == 8.0 and relevance_threshold(100.0) == 80.0
    assert relevance_threshold(5.0, 3.5) == 3.5 and relevance_threshold(10.0, 0.0) == 8.0  # 0: from the scale
    with pytest.raises(ValueError, match="positive scale"):
        relevance_threshold(0.0)


def test_the_lambda_search_on_u1_doubled_chooses_and_scores_like_on_stars(ml100k: Path) -> None:
    from recae.models.rankers import search_ease_lambda
    from recae.store.matrix import RatingMatrix
    from tests.evaluation.test_evaluate import ml100k_fold

    train, _ = ml100k_fold(ml100k)
    doubled = RatingMatrix.from_positions(*(lambda r, c, v: (r, c, v * 2))(*train.coo()), train.timestamps,
                                          train.index)
    stars, twice = search_ease_lambda(train), search_ease_lambda(doubled)
    assert (stars["relevant_from"], twice["relevant_from"]) == (4.0, 8.0)
    assert stars["lambda"] == twice["lambda"]
    assert stars["ndcg@10"] == pytest.approx(twice["ndcg@10"], abs=1e-6)
    # the constant it replaces: "rated >= 4" on the doubled scale calls a one-star film liked and scores otherwise
    assert search_ease_lambda(doubled, relevant_from=4.0)["ndcg@10"] != pytest.approx(twice["ndcg@10"], abs=1e-3)


def test_relevant_from_is_set_on_evaluate_and_kept_with_a_model_trained_with_it(
        homes: tuple[Home, Home], tmp_path: Path) -> None:
    stars, doubled = homes
    assert (stars.evaluate()["relevant_from"], doubled.evaluate()["relevant_from"]) == (4.0, 8.0)
    assert stars.summary["relevant_from"] == 4.0 and doubled.summary["relevant_from"] == 8.0
    strict = doubled.evaluate("--relevant-from", "10")
    assert strict["relevant_from"] == 10.0 and strict["ranking"] != doubled.evaluate()["ranking"]
    # trained with --relevant-from 10: its lambda search, its test figures and a later evaluate all use 10
    code, out, err = run(doubled.home, "train", "--config", str(doubled.config), "--test-ratings",
                         str(doubled.test_file), "--relevant-from", "10", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["relevant_from"] == 10.0
    code, out, err = run(doubled.home, "models", "show", "--format", "json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["config"]["train"]["relevant_from"] == 10.0
    assert close(doubled.evaluate()["ranking"], strict["ranking"])
    # the [train] table sets it too; a rating that is not above 0 is a usage error on either command
    config = tmp_path / "strict.toml"
    config.write_text(TINY + "relevant_from = 10.0\n")
    code, out, err = run(doubled.home, "train", "--config", str(config), "--test-ratings", str(doubled.test_file),
                         "--format", "json")
    assert code == 0 and json.loads(out)["relevant_from"] == 10.0, err
    for bad in ("0", "-1", "nan", "inf"):
        for command in ("evaluate", "train"):
            code, _, err = run(doubled.home, command, "--relevant-from", bad)
            assert code == 2 and "not a rating above 0" in err and "Traceback" not in err, (command, bad, err)
    assert run(doubled.home, "models", "use", doubled.summary["version"])[0] == 0  # the module's champion back


def test_mult_vae_clicks_follow_the_scale_too() -> None:
    from recae.evaluation.clicks import binarize, implicit_split
    from recae.store.matrix import RatingMatrix

    planted = planted_low_rank(60, 30, seed=3).observed
    rows, cols, values = planted.coo()
    half_stars = np.clip(np.round(values * 2) / 2, 0.5, 5.0)
    on = {factor: RatingMatrix.from_positions(rows, cols, half_stars * factor, planted.timestamps, planted.index)
          for factor in (1, 2)}
    stars = binarize(on[1])
    assert np.array_equal(stars.toarray(), binarize(on[1], 3.5).toarray())  # the paper's "rating > 3.5" on 5 stars
    assert np.array_equal(stars.toarray(), binarize(on[2]).toarray())  # the same clicks on the doubled scale
    assert np.array_equal(binarize(on[2], 3.5).toarray(), (on[2].csr.toarray() > 3.5))  # a threshold given is kept
    split = implicit_split(on[2], heldout=0.1, min_user_items=3)
    assert split.spec["liked_from"] == 8.0 and "threshold" not in split.spec
