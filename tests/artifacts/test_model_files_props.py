"""Property tests of the model-file loader (hypothesis): random valid small models round-trip through their files
with the same predictions, rankings and fold-ins; random corruptions are refused in one line or load into a model
that serves, never a traceback, a crash or a signal (those run in a child process: tests/support/model_file_fuzz.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recae.artifacts.model_files import load_model, save_model
from recae.serving.foldin import fold_in
from tests.support.model_file_fuzz import random_model

ROOT = Path(__file__).resolve().parents[2]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), n_users=st.integers(1, 15), n_movies=st.integers(2, 12),
       name=st.sampled_from(["stacked", "denoising", "sparse", "contractive", "rbm"]),
       orientation=st.sampled_from(["item", "user"]), hidden=st.sampled_from([(3,), (6, 2), (4, 3, 4)]),
       ranker=st.booleans(), svd=st.booleans(), partner=st.booleans(), covered=st.floats(0.3, 1.0))
def test_random_valid_models_round_trip(tmp_path_factory, seed: int, n_users: int, n_movies: int,  # type: ignore[no-untyped-def]
                                        name: str, orientation: str, hidden: tuple[int, ...], ranker: bool, svd: bool,
                                        partner: bool, covered: float) -> None:
    hidden = hidden[:1] if name == "rbm" else hidden  # an RBM has one hidden layer
    trained = random_model(seed, n_users, n_movies, name=name, orientation=orientation, hidden=hidden, ranker=ranker,
                           svd=svd, partner=partner, ranker_items=max(1, int(covered * n_movies)))
    folder = tmp_path_factory.mktemp("model") / "v"
    save_model(trained, folder, version="v")
    loaded = load_model(folder)
    rows = np.arange(n_users)
    # the same weights through the same kernels: equal up to float32 rounding of differently aligned memory
    np.testing.assert_allclose(loaded.score_rows(rows), trained.score_rows(rows), rtol=0, atol=1e-5)
    np.testing.assert_allclose(loaded.rank_rows(rows), trained.rank_rows(rows), rtol=0, atol=1e-5)
    ratings = {int(trained.index.movie_ids[0]): 4.5, int(trained.index.movie_ids[-1]): 1.0}
    for ours, theirs in zip(fold_in(loaded, ratings), fold_in(trained, ratings), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    assert np.array_equal(loaded.index.movie_ids, trained.index.movie_ids)
    assert (loaded.ranker is None) == (not ranker) and (loaded.svd is None) == (not svd)
    assert (loaded.partner is None) == (not partner)


def test_random_corruptions_are_refused_in_one_line_or_serve_never_crash(tmp_path: Path) -> None:
    """A child process tries 150 corruptions (the same ones each run): a segfault there is a signal here."""
    done = subprocess.run([sys.executable, "-W", "ignore", "-m", "tests.support.model_file_fuzz", str(tmp_path), "150"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcomes["refused"] > 50 and outcomes["loaded"] > 5, outcomes  # both sides of the property were tried
