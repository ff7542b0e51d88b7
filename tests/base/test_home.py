"""A home as an operator handles it: moved, copied, busy, read-only or misplaced; filters and empty answers.

One small home is built once for the module (planted ratings with timestamps, three genres, a tiny model trained
by `recae train`); each test works on its own copy.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from recae.cli import cli
from recae.errors import EXIT_ERROR
from tests.support.synthetic import planted_low_rank

ROOT = Path(__file__).resolve().parents[2]
TINY = ("[model]\nhidden = [32]\n[train]\nepochs = 3\nensemble = 1\npartner_members = 1\nthreads = 1\n"
        "weight_decay = 20.0\n")  # an explicit weight decay: no search over candidates
GENRES = ("Comedy", "Drama", "Film-Noir")


def run(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def store(home: Path):  # type: ignore[no-untyped-def]
    from recae.store.db import open_store

    return open_store(f"sqlite:///{home / 'recae.db'}")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with 120 users x 60 films of planted ratings (with timestamps), genres by film id, and a champion."""
    root = tmp_path_factory.mktemp("built")
    planted = planted_low_rank(120, 60, seed=5)
    rows, cols, values = planted.observed.coo()
    users, movies = planted.observed.index.user_ids[rows], planted.observed.index.movie_ids[cols]
    halves = np.clip(np.round(values * 2) / 2, 1.0, 5.0)
    ratings = root / "ratings.csv"
    ratings.write_text("".join(f"{u},{m},{r:g},{t}\n" for u, m, r, t in
                               zip(users, movies, halves, planted.observed.timestamps, strict=True)))
    (root / "tiny.toml").write_text(TINY)
    home = root / "home"
    assert run(home, "ingest", "--ratings", str(ratings))[0] == 0
    engine = store(home)
    with engine.begin() as conn:
        for i, genre in enumerate(GENRES):
            conn.execute(text("UPDATE movies SET genres = :g WHERE movie_id % 3 = :i"), {"g": genre, "i": i})
    engine.dispose()
    code, _, err = run(home, "train", "--config", str(root / "tiny.toml"))
    assert code == 0, err
    return home


@pytest.fixture
def home(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(built, copy)
    return copy


def champion(home: Path) -> tuple[str, str]:
    engine = store(home)
    with engine.connect() as conn:
        version, path = conn.execute(text("SELECT v.version, v.path FROM model_versions v JOIN champion c"
                                          " ON c.version = v.version")).one()
    engine.dispose()
    return version, path


# --- defect 6: evaluate compares like with like --------------------------------------------------------------


def test_evaluate_on_an_untouched_store_has_no_note_and_a_changed_one_has(home: Path, tmp_path: Path) -> None:
    code, out, err = run(home, "evaluate", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["note"] is None and "store changed" not in err
    (tmp_path / "more.csv").write_text("".join(f"999,{m},4,5\n" for m in range(1, 21)))  # a new user's 20 ratings
    assert run(home, "ingest", "--ratings", str(tmp_path / "more.csv"))[0] == 0
    code, out, err = run(home, "evaluate", "--format", "json")
    assert code == 0 and "store changed" in json.loads(out)["note"]


# --- defect 3: a home can move --------------------------------------------------------------------------------


def test_the_store_records_model_folders_relative_to_the_home(home: Path) -> None:
    version, path = champion(home)
    assert not Path(path).is_absolute() and (home / "models" / path).is_dir() and path == version


def test_a_moved_home_folds_in_evaluates_finds_similar_films_and_retrains(home: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(home, moved)
    version, _ = champion(moved)
    for args in (["recommend", "--rate", "1=5", "--rate", "2=1", "-n", "3"], ["recommend", "--user", "1"],
                 ["evaluate"], ["similar", "--movie", "1", "-n", "3"], ["models", "show", "--format", "json"]):
        code, out, err = run(moved, *args)
        assert code == 0, (args, err)
        if args[0] == "models":
            assert json.loads(out)["path"] == str(moved / "models" / version)
    code, out, err = run(moved, "retrain")
    assert code == 0, err
    assert json.loads(out)["decision"] == "unchanged" and (moved / "models" / version / "holdout.safetensors").is_file()


def test_a_copied_home_reads_and_prunes_its_own_folders_even_from_old_absolute_rows(home: Path,
                                                                                     tmp_path: Path) -> None:
    """Rows written before paths were relative hold the original home's absolute path: a copy must still read
    its own weights (the original's may differ or be gone) and prune only its own folders."""
    from recae.serving.registry import load_champion, prune_versions, publish

    older, _ = champion(home)
    engine = store(home)
    version = publish(engine, home / "models", load_champion(engine)).version  # a second version, the champion
    with engine.begin() as conn:  # as an older recae wrote them
        conn.execute(text("UPDATE model_versions SET path = :root || '/' || version"), {"root": str(home / "models")})
    engine.dispose()
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    (home / "models" / version / "meta.json").write_text("{}")  # the original's champion is now unreadable
    code, _, err = run(copy, "similar", "--movie", "1", "-n", "3")
    assert code == 0, err
    engine = store(copy)
    assert prune_versions(engine, copy / "models", keep=1) == (older,)
    engine.dispose()
    assert not (copy / "models" / older).exists() and (home / "models" / older).is_dir()
    shutil.rmtree(home)  # the original is gone altogether: the copy still serves
    assert run(copy, "recommend", "--rate", "1=5", "-n", "3")[0] == 0


def test_a_missing_model_folder_is_named_as_missing(home: Path) -> None:
    version, _ = champion(home)
    shutil.rmtree(home / "models" / version)
    code, out, err = run(home, "similar", "--movie", "1")
    assert code == EXIT_ERROR and out == ""
    assert f"model folder {home / 'models' / version} does not exist" in err and err.count("\n") == 1


# --- defect 5: genres match exactly, the same in both paths ----------------------------------------------------


@pytest.mark.parametrize("genre", ["%", "_omedy", "Com%", "Comedy|Drama", "Noir"])
def test_a_genre_is_a_name_not_a_pattern_and_an_unknown_one_lists_the_genres(home: Path, genre: str) -> None:
    for args in (["--user", "1"], ["--rate", "1=5"]):  # the precomputed list and the fold-in path
        code, out, err = run(home, "recommend", *args, "--genre", genre)
        assert code == EXIT_ERROR and out == "", (args, out)
        assert f"genre {genre!r} is unknown; genres in the catalogue: Comedy, Drama, Film-Noir" in err


@pytest.mark.parametrize("genre", ["Comedy", "comedy", "FILM-NOIR"])
def test_a_genre_filter_gives_only_that_genre_in_both_paths(home: Path, genre: str) -> None:
    for args in (["--user", "1"], ["--user", "1", "--rate", "2=4"]):  # precomputed, then fold-in
        code, out, err = run(home, "recommend", *args, "--genre", genre, "-n", "5", "--format", "json")
        assert code == 0, err
        films = json.loads(out)
        assert len(films) == 5 and {f["genres"].lower() for f in films} == {genre.lower()}


# --- defect 8: an empty answer says so and keeps its header ------------------------------------------------------


@pytest.mark.parametrize(("fmt", "expected"), [("csv", "rank,movie_id,title,year,genres,predicted_rating,score,basis"),
                                               ("json", "[]")])
def test_an_empty_answer_says_nothing_matched_and_keeps_the_header(home: Path, fmt: str, expected: str) -> None:
    for args in (["--user", "1"], ["--rate", "1=5"]):
        code, out, err = run(home, "recommend", *args, "--min-year", "3000", "--format", fmt)
        assert code == 0, err
        assert out.strip().splitlines()[0] == expected and "no film matched" in err


def test_a_home_below_a_file_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    code, out, err = run(tmp_path / "afile" / "home", "recommend", "--user", "1")
    assert code == EXIT_ERROR and out == ""
    assert err.count("\n") == 1 and "Errno" not in err and str(tmp_path / "afile") in err and "not a folder" in err


# --- defect 4: a busy store ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.faults
def test_train_while_another_process_writes_exits_75_keeps_the_model_and_resume_publishes_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`recae train` whose publish meets another writer's lock (a retrain publishing) exits 75 in one line,
    publishes nothing, and keeps the trained model: the same command with --resume publishes it, training nothing."""
    import sqlite3

    from recae.errors import EXIT_LOCKED
    from recae.store import db
    from recae.training import train

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 300)  # wait 0.3 s for the lock, not 30 s
    config = str(home.parent / "tiny.toml")
    Path(config).write_text(TINY)
    before = champion(home)
    writer = sqlite3.connect(home / "recae.db")
    writer.execute("BEGIN IMMEDIATE")  # another process's write transaction, held
    try:
        code, out, err = run(home, "train", "--config", config, "--seed", "7")
    finally:
        writer.rollback()
        writer.close()
    assert code == EXIT_LOCKED and out == "", err
    error = err.strip().splitlines()[-1]  # above it: the progress line saying what is being trained
    assert error.startswith("Error: the store is busy") and "--resume" in error and err.count("Error") == 1
    assert "SELECT" not in err and "INSERT" not in err and "Traceback" not in err
    assert champion(home) == before and [p.name for p in (home / "models").iterdir() if not p.name.startswith(".")
                                         ] == [before[0]]

    def no_training(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the resumed run trained again")

    monkeypatch.setattr(train, "train_epoch", no_training)
    code, out, err = run(home, "train", "--config", config, "--seed", "7", "--resume", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["champion"] is True and champion(home)[0] == json.loads(out)["version"] != before[0]
    assert not any((home / "models" / ".runs").iterdir())  # the kept run is cleaned up once published


# --- defect 8: a read-only home still serves -------------------------------------------------------------------


@pytest.fixture
def read_only(home: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``home`` seen read-only: write permission removed, or (root ignores permissions) a read-only bind mount."""
    import os
    import subprocess

    if os.geteuid() != 0:
        for path in (home, *home.rglob("*")):
            path.chmod(path.stat().st_mode & ~0o222)
        yield home
        for path in (home, *home.rglob("*")):
            path.chmod(path.stat().st_mode | 0o200)
        return
    view = tmp_path / "read-only-view"
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(home), str(view)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"root without a read-only view of a folder (mount --bind failed: {mounted.stderr!r})")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode != 0:
            pytest.skip("root without a read-only view of a folder (remount read-only failed)")
        yield view
    finally:
        subprocess.run(["umount", "-l", str(view)], check=True)  # lazy: the test's engines may hold files open


def test_a_read_only_home_serves_read_only_commands_and_refuses_writes_in_one_line(read_only: Path,
                                                                                   tmp_path: Path) -> None:
    for args in (["recommend", "--user", "1", "-n", "3"], ["recommend", "--rate", "1=5", "-n", "3"],
                 ["similar", "--movie", "1", "-n", "3"], ["models", "list"]):
        code, out, err = run(read_only, *args)
        assert code == 0, (args, err)
        assert out.strip()
    (tmp_path / "new.csv").write_text("1,1,4\n")
    code, out, err = run(read_only, "ingest", "--ratings", str(tmp_path / "new.csv"))
    assert code == EXIT_ERROR and out == ""
    assert err.strip() == ("Error: the store is read-only here and this command writes to it; nothing was changed "
                           "(use a writable --home, or read-only commands such as recommend)")


# --- faults: a killed training --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_training_leaves_the_store_and_champion_and_resume_publishes(home: Path) -> None:
    """`recae train` killed while it trains leaves the store, the champion and the models folder as they were
    (nothing half-published); the same command with --resume trains on and publishes."""
    import signal
    import subprocess
    import time

    config = home.parent / "long.toml"
    config.write_text(TINY.replace("epochs = 3", "epochs = 150\npatience = 150"))
    before, engine = champion(home), store(home)
    with engine.connect() as conn:
        rows_before = conn.execute(text("SELECT COUNT(*) FROM model_versions")).scalar_one()
    engine.dispose()
    command = [sys.executable, "-m", "recae", "--home", str(home), "train", "--config", str(config)]
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = home / "models" / ".runs"
    deadline = time.monotonic() + 60
    while not (runs.is_dir() and any(runs.iterdir())):  # the run folder exists once training has started
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.05)
    time.sleep(0.2)
    assert job.poll() is None, "training ended before it could be killed"
    job.send_signal(signal.SIGKILL)
    job.communicate()
    assert job.returncode == -signal.SIGKILL
    engine = store(home)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM model_versions")).scalar_one() == rows_before
    engine.dispose()
    assert champion(home) == before
    assert sorted(p.name for p in (home / "models").iterdir() if not p.name.startswith(".")) == [before[0]]
    resumed = subprocess.run([*command, "--resume", "--format", "json"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert champion(home)[0] == json.loads(resumed.stdout)["version"] != before[0]


# --- faults: two runs at once, a publish killed in its precompute ---------------------------------------------


def versions(home: Path) -> list[str]:
    """The version folders in the models folder (dot-folders hold runs, locks and temps)."""
    return sorted(p.name for p in (home / "models").iterdir() if not p.name.startswith(".") and p.name != "vae")


def wait_for(predicate, job, seconds: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + seconds
    while not predicate():
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP is POSIX")
def test_a_second_train_of_the_same_run_exits_75_at_once_and_the_first_still_publishes(home: Path) -> None:
    """Two `recae train` of the same settings and data share one checkpoint folder: the second (with or without
    --resume) exits 75 in one line naming the folder, without waiting and without touching it; the first goes on
    and publishes. The first is stopped (SIGSTOP) while it holds its run, so the second cannot just wait it out."""
    import signal
    import subprocess

    from recae.errors import EXIT_LOCKED

    config = home.parent / "long.toml"
    config.write_text(TINY.replace("epochs = 3", "epochs = 40\npatience = 40"))
    command = [sys.executable, "-m", "recae", "--home", str(home), "train", "--config", str(config), "--format", "json"]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = home / "models" / ".runs"
    try:
        wait_for(lambda: runs.is_dir() and any(runs.iterdir()), first)  # training has started
        first.send_signal(signal.SIGSTOP)
        (run_dir,) = runs.iterdir()
        for extra in ([], ["--resume"]):
            second = subprocess.run([*command, *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert second.returncode == EXIT_LOCKED and second.stdout == "", second.stderr
            error = second.stderr.strip().splitlines()[-1]  # above it: the line saying what is being trained
            assert error.startswith("Error: another `recae train` of the same settings and data is running"), error
            assert f"pid {first.pid}" in error and str(run_dir) in error and second.stderr.count("Error") == 1
            assert "Traceback" not in second.stderr and run_dir.is_dir()
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert champion(home)[0] == json.loads(out)["version"] and not any(runs.iterdir())


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_publish_killed_in_its_precompute_leaves_a_folder_that_prune_removes_but_never_while_it_runs(
        home: Path) -> None:
    """`recae train` killed inside its publish (the version's folder in place, its recommendations precomputed,
    the transaction not committed) leaves a whole folder no version row names: `recae models prune` keeps it while
    the publish is alive (it holds the version's publish lock) and removes it once the process is dead."""
    import signal
    import subprocess

    config = home.parent / "tiny.toml"
    config.write_text(TINY)
    before = champion(home)
    marker = home.parent / "paused-in-precompute"
    worker = ROOT / "tests" / "support" / "train_worker.py"
    job = subprocess.Popen([sys.executable, str(worker), str(marker), "--home", str(home),
                            "train", "--config", str(config), "--seed", "7"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(marker.exists, job)
        (orphan,) = [name for name in versions(home) if name != before[0]]
        code, out, err = run(home, "models", "prune")
        assert (code, out, err.strip()) == (0, "", "nothing to prune")  # in flight: its folder stays
        assert (home / "models" / orphan / "meta.json").is_file()
    finally:
        job.send_signal(signal.SIGKILL)
        job.communicate()
    assert job.returncode == -signal.SIGKILL
    engine = store(home)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM model_versions WHERE version = :v"), {"v": orphan}).scalar() == 0
    engine.dispose()
    assert versions(home) == sorted([before[0], orphan])  # what the killed publish left: a folder without a row

    code, out, err = run(home, "models", "prune")
    assert (code, out.split(), err.strip()) == (0, [orphan], "removed 1 model folder")
    assert versions(home) == [before[0]] and champion(home) == before
    assert run(home, "recommend", "--user", "1", "-n", "3")[0] == 0


def test_the_next_train_removes_a_folder_no_version_names_and_nothing_else(home: Path) -> None:
    """A model folder without a version row (as a killed publish leaves) goes at the next `recae train` (and the
    nightly job's pruning); folders that are no version's (`vae/`, a user's notes, one without meta.json) stay."""
    from recae.serving.registry import prune_versions

    before = champion(home)
    models = home / "models"
    orphan, other = "20261123T101500000000Z-denoising-item", "20261124T101500000000Z-denoising-item"
    shutil.copytree(models / before[0], models / orphan)
    kept = [models / "vae" / "20261123T101500000000Z-multvae", models / "notes", models / "20261125-101500-stacked"]
    for folder in kept:
        folder.mkdir(parents=True)
    (models / "vae" / "20261123T101500000000Z-multvae" / "meta.json").write_text("{}")
    (models / "notes" / "meta.json").write_text("{}")
    config = home.parent / "tiny.toml"
    config.write_text(TINY)
    code, out, err = run(home, "train", "--config", str(config), "--format", "json")
    assert code == 0, err
    assert not (models / orphan).exists() and all(folder.is_dir() for folder in kept)
    assert sorted(versions(home)) == sorted([before[0], json.loads(out)["version"], "20261125-101500-stacked",
                                             "notes"])
    shutil.copytree(models / before[0], models / other)
    assert prune_versions(store(home), models, keep=5) == (other,) and not (models / other).exists()
