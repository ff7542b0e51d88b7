"""Nightly retraining, end to end in real processes (`python -m recae --home TMP retrain`) on planted data.

Each test builds its own home: planted low-rank ratings ingested with `recae ingest --ratings`, and a first
champion trained by `recae retrain --config` with few epochs (so it is under-trained and a warm-started
challenger that reads new ratings has room to beat it; hence `--warm-lr-scale 1`, the full training rate, where a
converged champion is fine-tuned at the default 0.02x). Kills pause a run at a stage through run_retrain's
on_stage callback (tests/support/retrain_worker.py) and SIGKILL it there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from recae.errors import EXIT_LOCKED
from recae.retrain.holdout import inherited_partition, matrix_keys, seeded_uniform
from recae.retrain.job import Comparison, verdict
from tests.support.synthetic import planted_low_rank

ROOT = Path(__file__).resolve().parents[2]
SMALL_CONFIG = """
[model]
hidden = [24]
[train]
epochs = 4
ensemble = 1
weight_decay = 20.0
"""
N_USERS, N_MOVIES, FIRST_NEW_USER = 160, 100, 141  # users 141..160 appear only in the fresh ratings


def recae(home: Path, *args: str, env: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recae", "--home", str(home), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def start_paused(home: Path, point: str, *args: str) -> subprocess.Popen:
    """A retrain run (tests/support/retrain_worker.py) that pauses at ``point`` for the test to kill it."""
    worker = ROOT / "tests" / "support" / "retrain_worker.py"
    return subprocess.Popen([sys.executable, str(worker), str(home), point, *args],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def summary(result: subprocess.CompletedProcess) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout + result.stderr
    return json.loads(lines[0])


def write_ratings(path: Path, users: np.ndarray, movies: np.ndarray, values: np.ndarray) -> Path:
    halves = np.clip(np.round(values * 2) / 2, 1.0, 5.0)
    path.write_text("".join(f"{u},{m},{r:g}\n" for u, m, r in zip(users, movies, halves, strict=True)))
    return path


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """(initial ratings CSV, fresh ratings CSV): one planted structure; 25% of pairs and 20 users only fresh."""
    data = planted_low_rank(N_USERS, N_MOVIES, rank=3, density=0.3, noise=0.2, seed=3)
    rows, cols, values = data.observed.coo()
    users, movies = data.observed.index.user_ids[rows], data.observed.index.movie_ids[cols]
    fresh = (np.random.default_rng(0).random(rows.size) < 0.25) | (users >= FIRST_NEW_USER)
    initial = write_ratings(tmp_path / "initial.csv", users[~fresh], movies[~fresh], values[~fresh])
    new = write_ratings(tmp_path / "fresh.csv", users[fresh], movies[fresh], values[fresh])
    return initial, new


@pytest.fixture
def home(tmp_path: Path, planted: tuple[Path, Path]) -> Path:
    """A home with the initial ratings ingested and a first champion published by `recae retrain`."""
    home = tmp_path / "home"
    config = tmp_path / "small.toml"
    config.write_text(SMALL_CONFIG)
    assert recae(home, "ingest", "--ratings", str(planted[0])).returncode == 0
    first = recae(home, "retrain", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert summary(first)["decision"] == "first"
    return home


def champion(home: Path) -> str:
    from recae.serving.registry import champion_of

    return str(champion_of(engine(home)))


def engine(home: Path):  # type: ignore[no-untyped-def]
    from recae.store.db import open_store

    return open_store(f"sqlite:///{home / 'recae.db'}")


def drop_in_inbox(home: Path, source: Path, name: str = "fresh.csv") -> Path:
    inbox = home / "inbox"
    inbox.mkdir(exist_ok=True)
    target = inbox / name
    target.write_bytes(source.read_bytes())
    return target


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"retrain ended before pausing: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no marker {path} after {seconds} s")
        time.sleep(0.1)


# --- pure pieces ------------------------------------------------------------------------------------------------


def test_seeded_uniform_is_a_fixed_uniform_draw_per_pair_and_seed() -> None:
    rng = np.random.default_rng(1)
    users, movies = rng.integers(1, 200_000, 50_000), rng.integers(1, 200_000, 50_000)
    draws = seeded_uniform(users, movies, 7)
    assert np.array_equal(draws, seeded_uniform(users.copy(), movies.copy(), 7))
    assert 0.0 <= draws.min() and draws.max() < 1.0
    assert abs(float(np.mean(draws < 0.1)) - 0.1) < 0.01  # a fair 10% rule
    assert float(np.mean(draws == seeded_uniform(users, movies, 8))) < 0.001  # the seed matters


def test_inherited_partition_keeps_old_sides_and_splits_only_new_ratings() -> None:
    data = planted_low_rank(300, 200, density=0.3, seed=5).observed
    keys = matrix_keys(data)
    rng = np.random.default_rng(2)
    old = rng.random(keys.size) < 0.7  # what the champion saw
    held_old = old & (rng.random(keys.size) < 0.1)
    val_old = old & ~held_old & (rng.random(keys.size) < 0.05)
    part = inherited_partition(data, keys[old & ~held_old], keys[held_old], keys[val_old], 0.1, 0.05, seed=0)
    assert np.array_equal(part.test[old], held_old[old])  # the champion's holdout, exactly
    assert np.array_equal(part.val[old], val_old[old])
    assert not (part.test & part.val).any()
    new_share = part.test[~old].mean()
    assert 0.07 < new_share < 0.13  # new ratings follow the 10% rule
    again = inherited_partition(data, keys[old & ~held_old], keys[held_old], keys[val_old], 0.1, 0.05, seed=0)
    assert np.array_equal(again.test, part.test)
    assert not part.blend.any()  # no blend carve recorded: none drawn
    blend_old = old & ~held_old & (rng.random(keys.size) < 0.02)
    stacked = inherited_partition(data, keys[old & ~held_old], keys[held_old], keys[val_old], 0.1, 0.05, seed=0,
                                  blend_keys=keys[blend_old], blend_fraction=0.1)
    assert np.array_equal(stacked.blend[old], blend_old[old]) and np.array_equal(stacked.test, part.test)
    assert not (stacked.blend & (stacked.val | stacked.test)).any()
    assert 0.06 < stacked.blend[~old & ~part.test].mean() < 0.14  # new training ratings follow the 10% rule


@given(keys=st.lists(st.integers(-2**40, 2**40), max_size=60), reference=st.lists(st.integers(-2**40, 2**40),
                                                                                  max_size=60))
def test_membership_by_binary_search_is_numpys_isin(keys: list[int], reference: list[int]) -> None:
    """The holdout's membership test (binary search, sorting the reference only when it is not) answers as np.isin
    for any keys, repeated or unsorted, and an empty reference."""
    from recae.retrain.holdout import is_member

    as_keys, as_reference = np.array(keys, dtype=np.int64), np.array(reference, dtype=np.int64)
    assert np.array_equal(is_member(as_keys, as_reference), np.isin(as_keys, as_reference))


# --- the job in real processes ----------------------------------------------------------------------------------


@pytest.mark.faults
def test_second_run_while_the_lock_is_held_exits_75_at_once(tmp_path: Path) -> None:
    from filelock import FileLock

    home = tmp_path / "home"
    lock = FileLock(str(home / "locks" / "retrain.lock"))
    (home / "locks").mkdir(parents=True)
    with lock:
        started = time.monotonic()
        result = recae(home, "retrain")
        waited = time.monotonic() - started
    assert result.returncode == EXIT_LOCKED
    assert result.stdout == "" and result.stderr.strip().count("\n") == 0
    assert "another recae retrain is running" in result.stderr and "Traceback" not in result.stderr
    assert waited < 30  # it did not wait for the lock (the bound is generous: a cold interpreter start)


@pytest.mark.faults
def test_inbox_ingests_the_good_file_and_rejects_the_malformed_one(home: Path, planted: tuple[Path, Path]) -> None:
    from recae.store.db import count_ratings

    before = count_ratings(engine(home))
    drop_in_inbox(home, planted[1], "good.csv")
    bad = home / "inbox" / "bad.csv"
    bad.write_text("1,2,4\n3,oops,4\n")
    result = recae(home, "retrain", "--warm-epochs", "3")
    assert result.returncode == 0, result.stderr
    report = summary(result)
    files = {f["file"]: f for f in report["files"]}
    assert files["good.csv"]["status"] == "ingested" and files["good.csv"]["rows_loaded"] > 1000
    assert files["bad.csv"]["status"] == "rejected" and "line 2" in files["bad.csv"]["reason"]
    assert (home / "inbox" / "processed" / "good.csv").is_file()
    assert (home / "inbox" / "rejected" / "bad.csv").is_file()
    reason = (home / "inbox" / "rejected" / "bad.csv.reason.txt").read_text()
    assert "bad.csv line 2" in reason
    assert not any(p.is_file() for p in (home / "inbox").iterdir())
    assert count_ratings(engine(home)) == before + files["good.csv"]["rows_loaded"]  # nothing of bad.csv
    # The same file again is recognised by its checksum: moved, nothing loaded, nothing trained.
    drop_in_inbox(home, planted[1], "good-again.csv")
    again = summary(recae(home, "retrain"))
    assert again["files"] == [{"file": "good-again.csv", "status": "already", "rows_loaded": 0, "reason": None}]
    assert again["decision"] == "unchanged"


@pytest.mark.faults
def test_unparsable_inbox_files_are_rejected_with_their_reason_and_the_rest_goes_on(tmp_path: Path) -> None:
    """A poisoned file (bare-CR line endings, a field past csv's 131,072-character limit, no line break at all)
    once crashed the parser and so every nightly run; now each is rejected with its reason like any bad file."""
    from recae.retrain.inbox import ingest_inbox
    from recae.store.db import count_ratings, open_store

    store = open_store(f"sqlite:///{tmp_path / 'recae.db'}")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a-cr.csv").write_bytes(b"1,2,4\r2,3,5\r")
    (inbox / "b-huge.csv").write_bytes(b"1,2,4\n" + b'3,"' + b"x" * 140_000 + b'",4\n')
    (inbox / "c-endless.csv").write_bytes(b"1,2,4\n" + b"9" * 300_000)
    (inbox / "d-good.csv").write_text("1,2,4\n2,3,5\n")
    outcomes = {f.file: f for f in ingest_inbox(store, inbox)}
    assert {name: f.status for name, f in outcomes.items()} == {
        "a-cr.csv": "rejected", "b-huge.csv": "rejected", "c-endless.csv": "rejected", "d-good.csv": "ingested"}
    assert "carriage return" in outcomes["a-cr.csv"].reason  # type: ignore[operator]
    assert "b-huge.csv line 2" in outcomes["b-huge.csv"].reason  # type: ignore[operator]
    assert "c-endless.csv line 2: longer than" in outcomes["c-endless.csv"].reason  # type: ignore[operator]
    for name in ("a-cr.csv", "b-huge.csv", "c-endless.csv"):
        assert (inbox / "rejected" / name).is_file()
        assert (inbox / "rejected" / f"{name}.reason.txt").read_text().strip() == outcomes[name].reason
    assert (inbox / "processed" / "d-good.csv").is_file() and count_ratings(store) == 2
    store.dispose()


def test_no_new_data_trains_nothing_and_the_run_prunes_a_folder_no_version_names(home: Path) -> None:
    import shutil

    before = champion(home)
    orphan = "20261123T101500000000Z-denoising-item"  # as a `recae train` killed in its publish's precompute leaves
    shutil.copytree(home / "models" / before, home / "models" / orphan)
    result = recae(home, "retrain")
    assert result.returncode == 0, result.stderr
    report = summary(result)
    assert report["decision"] == "unchanged" and report["status"] == "succeeded"
    assert report["metrics"] == {} and report["challenger"] is None
    assert champion(home) == before
    assert report["pruned"] == [orphan] and [p.name for p in (home / "models").glob("2*")] == [before]


def test_better_challenger_is_published_and_the_old_champion_stays_for_rollback(
        home: Path, planted: tuple[Path, Path]) -> None:
    old = champion(home)
    drop_in_inbox(home, planted[1])
    result = recae(home, "retrain", "--warm-epochs", "30", "--warm-lr-scale", "1", "--margin", "0.002")
    assert result.returncode == 0, result.stderr
    report = summary(result)
    metrics = report["metrics"]
    assert report["decision"] == "published", report
    assert metrics["champion_rmse"] - metrics["challenger_rmse"] >= 0.002
    assert metrics["n_compared"] > 0 and metrics["warm_start"] is True
    # the champion's user-based partner is fine-tuned beside it and keeps the champion's blend weight
    assert np.isfinite(metrics["partner_val_rmse"]) and 0.0 <= metrics["blend_weight"] <= 1.0
    new = champion(home)
    assert new == report["champion_after"] == report["challenger"] != old
    # The new users (only in the fresh ratings) now get precomputed recommendations.
    recs = recae(home, "recommend", "--user", str(N_USERS), "--format", "json")
    assert recs.returncode == 0 and len(json.loads(recs.stdout)) == 10
    assert recae(home, "models", "use", old).returncode == 0  # rollback
    assert champion(home) == old
    assert recae(home, "models", "use", new).returncode == 0
    # --keep 1 prunes the old version's folder, row and recommendations; the champion stays.
    pruned = summary(recae(home, "retrain", "--keep", "1"))
    assert pruned["decision"] == "unchanged" and pruned["pruned"] == [old]
    assert not (home / "models" / old).exists() and champion(home) == new
    history = recae(home, "models", "history", "--format", "json")
    runs = json.loads(history.stdout)
    assert [r["decision"] for r in runs] == ["unchanged", "published", "first"]


def test_worse_challenger_is_not_published(home: Path, planted: tuple[Path, Path]) -> None:
    old = champion(home)
    drop_in_inbox(home, planted[1])
    result = recae(home, "retrain", "--warm-epochs", "3", "--margin", "5")  # no model gains 5 stars of RMSE
    assert result.returncode == 0, result.stderr
    report = summary(result)
    assert report["decision"] == "kept" and report["challenger"] is None
    assert report["metrics"]["champion_rmse"] - report["metrics"]["challenger_rmse"] < 5
    assert champion(home) == old and len(list((home / "models").glob("2*"))) == 1
    # The same data is not challenged again the next night.
    assert summary(recae(home, "retrain"))["decision"] == "unchanged"


@pytest.mark.faults
@pytest.mark.parametrize("point", ["train", "publish"])
def test_run_killed_during_training_or_publish_leaves_the_champion_serving(
        home: Path, planted: tuple[Path, Path], point: str) -> None:
    from recae.serving.registry import load_champion
    from recae.store.db import RetrainRun

    old = champion(home)
    recs_before = recae(home, "recommend", "--user", "1", "--format", "json")
    drop_in_inbox(home, planted[1])
    marker = home / "locks" / f"paused-at-{point}"
    job = start_paused(home, point, "--warm-epochs", "30", "--warm-lr-scale", "1", "--margin", "0")
    try:
        wait_for(marker, job)
        rival = recae(home, "retrain")  # two runs at once: the second exits at once
        assert rival.returncode == EXIT_LOCKED and "another recae retrain is running" in rival.stderr
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    assert job.returncode == -signal.SIGKILL

    assert champion(home) == old
    assert load_champion(engine(home)).index.n_users > 0  # loadable
    served = recae(home, "recommend", "--user", "1", "--format", "json")
    assert served.returncode == 0 and served.stdout == recs_before.stdout

    after = recae(home, "retrain", "--warm-epochs", "30", "--warm-lr-scale", "1", "--margin", "0")
    assert after.returncode == 0, after.stderr
    report = summary(after)
    assert report["status"] == "succeeded" and report["decision"] in ("published", "kept")
    if point == "publish":
        assert len(report["pruned"]) == 1  # the half-published version of the killed run
    with engine(home).connect() as conn:
        statuses = conn.execute(select(RetrainRun.status).order_by(RetrainRun.id)).scalars().all()
    assert statuses == ["succeeded", "interrupted", "succeeded"]
    assert load_champion(engine(home)).index.n_users == N_USERS


def test_help_has_examples() -> None:
    for command in (["retrain"], ["models", "history"]):
        result = subprocess.run([sys.executable, "-m", "recae", *command, "--help"], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0 and "Example" in result.stdout and "recae " in result.stdout


def test_cold_challenger_trains_from_scratch_with_the_champions_configuration(
        home: Path, planted: tuple[Path, Path]) -> None:
    from recae.serving.registry import load_champion, load_version

    drop_in_inbox(home, planted[1])
    report = summary(recae(home, "retrain", "--cold", "--margin", "0"))
    assert report["status"] == "succeeded" and report["metrics"]["warm_start"] is False
    assert report["metrics"]["epochs"] == 2 * 4  # the champion's own [train] epochs, its model's and its partner's
    assert 0.0 <= report["metrics"]["blend_weight"] <= 1.0
    assert np.isfinite(report["metrics"]["challenger_rmse"]) and report["metrics"]["n_compared"] > 0
    assert load_champion(engine(home)).model_config.hidden == (24,)
    if report["decision"] == "published":
        assert load_version(engine(home), report["challenger"]).model_config.hidden == (24,)


def test_warm_start_copies_the_champions_weights_by_id_and_new_users_start_neutral() -> None:
    """On the champion's own ratings, the warm-started module predicts exactly as the champion does, even though
    its index has extra users (rows moved); a new user's rows are zero, so they change no movie's code."""
    from recae.artifacts.train_config import TrainConfig
    from recae.artifacts.trained_model import TrainedModel
    from recae.evaluation.splits import random_split
    from recae.models.build import model_config
    from recae.retrain.warm_start import warm_start_module
    from recae.store.matrix import IdIndex, RatingMatrix
    from recae.training.train import train_split

    data = planted_low_rank(60, 40, density=0.4, seed=4, user_id_offset=10).observed
    champion = train_split(random_split(data, 0.1, 0), model_config("stacked", hidden=(8,)),
                           TrainConfig(epochs=3, ensemble=1, partner_members=0, weight_decay=10.0,
                                       blend_svd=False)).trained  # the module alone
    wider = IdIndex(np.concatenate([[1, 2], data.index.user_ids, [500]]), data.index.movie_ids)  # 3 new users
    rows, cols, values = champion.inputs.coo()
    moved = RatingMatrix.from_ids(data.index.user_ids[rows], data.index.movie_ids[cols], values, index=wider)
    module = warm_start_module(champion, wider, np.full(wider.n_users, 3.0, np.float32))
    assert module is not None
    warm = TrainedModel.from_fit(module, moved)
    users = np.repeat(data.index.user_ids[:20], 5)
    movies = np.tile(data.index.movie_ids[:5], 20)
    expected = champion.predict(champion.index.lookup_users(users), champion.index.lookup_movies(movies))
    got = warm.predict(wider.lookup_users(users), wider.lookup_movies(movies))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    new_rows = wider.lookup_users(np.array([1, 2, 500]))
    assert float(module.w_in.detach()[new_rows].abs().sum()) == 0.0
    assert float(module.w_out.detach()[new_rows].abs().sum()) == 0.0
    assert np.allclose(warm.predict(new_rows, np.zeros(3, np.int64)), 3.0)  # a new user predicts its mean


def test_champion_from_recae_train_gets_a_holdout_record_and_no_new_data_trains_nothing(
        tmp_path: Path, planted: tuple[Path, Path]) -> None:
    from recae.retrain.holdout import HOLDOUT_FILE, read_holdout

    home = tmp_path / "home"
    config = tmp_path / "small.toml"
    config.write_text(SMALL_CONFIG)
    assert recae(home, "ingest", "--ratings", str(planted[0])).returncode == 0
    trained = recae(home, "train", "--config", str(config), "--split", "random", "--seed", "0")
    assert trained.returncode == 0, trained.stderr
    old = champion(home)
    first = summary(recae(home, "retrain"))
    assert first["decision"] == "unchanged", first  # the store is the one the champion was trained on
    folder = home / "models" / old
    record = read_holdout(folder)
    assert record is not None and (folder / HOLDOUT_FILE).is_file()
    from recae.serving.registry import load_champion
    from recae.store.db import count_ratings

    inputs = load_champion(engine(home)).inputs
    assert record.test.size + inputs.nnz == count_ratings(engine(home))  # held out = every rating it did not read
    assert not np.isin(record.test, matrix_keys(inputs)).any()
    drop_in_inbox(home, planted[1])
    report = summary(recae(home, "retrain", "--warm-epochs", "3"))
    assert report["decision"] in ("published", "kept") and report["metrics"]["n_compared"] >= record.test.size


def test_a_challenger_must_lose_neither_rmse_nor_ndcg_beyond_the_margins() -> None:
    better_both = Comparison(0.90, 0.89, 100, 100, champion_ndcg=0.30, challenger_ndcg=0.31)
    assert verdict(better_both, margin=0.002, ndcg_margin=0.005) is None
    slightly_worse_list = Comparison(0.90, 0.89, 100, 100, champion_ndcg=0.30, challenger_ndcg=0.297)
    assert verdict(slightly_worse_list, margin=0.002, ndcg_margin=0.005) is None
    worse_list = Comparison(0.90, 0.89, 100, 100, champion_ndcg=0.30, challenger_ndcg=0.28)
    assert "NDCG@10" in (verdict(worse_list, margin=0.002, ndcg_margin=0.005) or "")
    worse_rating = Comparison(0.90, 0.899, 100, 100, champion_ndcg=0.30, challenger_ndcg=0.35)
    assert "RMSE" in (verdict(worse_rating, margin=0.002, ndcg_margin=0.005) or "")
    unmeasured_lists = Comparison(0.90, 0.89, 100, 100)  # no user with a relevant held-out film: RMSE decides
    assert verdict(unmeasured_lists, margin=0.002, ndcg_margin=0.005) is None
    assert verdict(Comparison(float("nan"), float("nan"), 0, 10), 0.002, 0.005) is not None


def test_a_champion_stacking_an_svd_is_fine_tuned_and_its_svd_and_weights_refitted_on_its_blend_carve(
        home: Path, planted: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """blend_svd (the default): the first champion records its blend carve; the warm challenger keeps it (new
    ratings join it by the seeded rule), refits the SVD for today's users and movies and the stacking weights."""
    from recae.retrain.holdout import blend_keys, read_holdout
    from recae.retrain.job import RetrainOptions, run_retrain
    from recae.serving.registry import load_champion

    before = load_champion(engine(home))
    assert before.svd is not None and len(before.mix_weights) == 4
    record = read_holdout(home / "models" / champion(home))
    assert record is not None and record.blend is not None and record.blend.size > 0
    assert np.array_equal(np.sort(record.blend), np.sort(blend_keys(before)))  # the carve training kept
    assert np.isin(record.blend, matrix_keys(before.inputs)).all()
    drop_in_inbox(home, planted[1])
    from recae.retrain import job

    monkeypatch.setattr(job, "DEFAULT_WARM_EPOCHS", 3)  # the automatic count (no warm_epochs given), kept short
    report = run_retrain(engine(home), home / "models", home / "locks",
                         RetrainOptions(inbox=home / "inbox", margin=-1.0, ndcg_margin=1.0))
    metrics = report.metrics
    assert report.decision == "published" and metrics["warm_start"] is True, report
    assert metrics["epochs"] <= 3, metrics
    weights = [metrics[k] for k in ("blend_weight_main", "blend_weight_partner", "blend_weight_svd", "blend_intercept")]
    assert np.all(np.isfinite(weights)) and np.isfinite(metrics["svd_val_rmse"]) and metrics["n_blend"] > 0
    after = load_champion(engine(home))
    assert after.svd is not None and after.svd.shape == (after.index.n_users, after.index.n_movies)
    assert after.index.n_users > before.index.n_users  # the fresh users have SVD factors of their own
    assert list(after.mix_weights) == pytest.approx(weights, abs=1e-6) and after.mix_weights != before.mix_weights
    assert before.ranker is not None and after.ranker is not None  # refitted on the grown data at the
    assert after.ranker.lam == before.ranker.lam and after.ranker.n_movies == after.index.n_movies  # same lambda
    grown = read_holdout(home / "models" / str(report.champion_after))
    assert grown is not None and grown.blend is not None
    assert np.isin(record.blend, grown.blend).all()  # the champion's carve stays a carve
    assert grown.blend.size > record.blend.size  # and fresh ratings joined it
    assert not np.isin(grown.blend, grown.test).any() and not np.isin(grown.blend, grown.val).any()


def test_a_pair_champion_stops_its_fine_tuning_and_refits_its_blend_weight_on_the_blend_carve(
        tmp_path: Path, planted: tuple[Path, Path]) -> None:
    """blend_svd = false: the item/user pair records its blend carve too. Fine-tuning stops on it (ratings no member
    fitted: the champion's validation figure there is out of sample, not the in-sample one its recorded validation
    ratings would give) and the pair's weight is refitted there instead of kept."""
    from recae.retrain.holdout import pair_keys, read_holdout
    from recae.retrain.job import RetrainOptions, run_retrain
    from recae.serving.registry import load_champion

    home = tmp_path / "pair-home"
    config = tmp_path / "pair.toml"
    config.write_text(SMALL_CONFIG + "blend_svd = false\n")
    assert recae(home, "ingest", "--ratings", str(planted[0])).returncode == 0
    assert recae(home, "retrain", "--config", str(config)).returncode == 0
    before = load_champion(engine(home))
    record = read_holdout(home / "models" / champion(home))
    assert before.svd is None and before.partner is not None and record is not None and record.blend is not None
    rows, cols, values = before.inputs.coo()
    keys = pair_keys(before.index.user_ids[rows], before.index.movie_ids[cols])
    in_carve = np.isin(keys, record.blend)
    seen = np.isin(keys, record.val) & ~in_carve
    alone = replace(before, partner=None)

    def rmse(mask: np.ndarray) -> float:
        return float(np.sqrt(np.mean((alone.predict(rows[mask], cols[mask]) - values[mask]) ** 2)))

    assert rmse(in_carve) > rmse(seen)  # the recorded validation ratings were fitted; the blend carve was not
    drop_in_inbox(home, planted[1])
    report = run_retrain(engine(home), home / "models", home / "locks",
                         RetrainOptions(inbox=home / "inbox", margin=-1.0, ndcg_margin=1.0, warm_epochs=3))
    assert report.decision == "published" and report.metrics["warm_start"] is True, report
    after = load_champion(engine(home))
    assert after.blend_weight == pytest.approx(report.metrics["blend_weight"], abs=1e-6)  # reported to 6 places
    assert after.blend_weight != before.blend_weight and 0.0 <= after.blend_weight <= 1.0
    grown = read_holdout(home / "models" / str(report.champion_after))
    assert grown is not None and grown.blend is not None and np.isin(record.blend, grown.blend).all()


def test_a_stacked_champion_without_a_recorded_blend_carve_gets_a_challenger_trained_from_scratch(
        home: Path, planted: tuple[Path, Path]) -> None:
    from recae.retrain.holdout import HoldoutRecord, read_holdout, write_holdout

    folder = home / "models" / champion(home)
    record = read_holdout(folder)
    assert record is not None
    write_holdout(folder, HoldoutRecord(test=record.test, val=record.val, store_fingerprint=record.store_fingerprint))
    assert read_holdout(folder).blend is None  # type: ignore[union-attr]  # a folder written before blend carves
    drop_in_inbox(home, planted[1])
    result = recae(home, "retrain", "--margin", "0")
    report = summary(result)
    assert report["status"] == "succeeded" and report["metrics"]["warm_start"] is False, result.stderr
    assert "no recorded blend carve" in result.stderr
    assert np.isfinite(report["metrics"]["svd_val_rmse"]) and np.isfinite(report["metrics"]["challenger_rmse"])


def test_a_store_grown_past_the_memory_budget_is_refused_before_any_work_and_the_champion_stays(
        home: Path, planted: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The nightly job checks the grown store against the champion's memory budget before it scores, tunes or
    refits anything (here every rating is made to weigh a GB): one TrainingError naming the budget, no new version."""
    from recae.errors import TrainingError
    from recae.retrain.job import RetrainOptions, run_retrain
    from recae.training import memory

    before = champion(home)
    drop_in_inbox(home, planted[1])
    monkeypatch.setattr(memory, "BYTES_PER_RATING", 1e9)
    with pytest.raises(TrainingError, match="memory budget of 6 GB"):
        run_retrain(engine(home), home / "models", home / "locks", RetrainOptions(inbox=home / "inbox"))
    assert champion(home) == before
