"""Thread counts: numpy's and scipy's BLAS on one thread for small data (recae.threads.blas_threads), the rule that
sizes them (TrainConfig.blas_threads), and work on threads consumed in order."""

from __future__ import annotations

import numpy as np
import scipy.linalg  # noqa: F401 - loads scipy's own OpenBLAS, which the limit must reach too
from threadpoolctl import threadpool_info

from recae.artifacts.train_config import AUTO_ONE_THREAD_BELOW, TrainConfig
from recae.threads import blas_threads, in_order_on_threads


def blas_counts() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_blas_threads_limits_every_blas_inside_and_restores_it() -> None:
    before = blas_counts()
    assert before, "numpy and scipy load a BLAS"
    with blas_threads(1):
        assert set(blas_counts()) == {1}
        q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((50, 5)))
        assert np.allclose(q.T @ q, np.eye(5), atol=1e-10)
    assert blas_counts() == before
    with blas_threads(None):
        assert blas_counts() == before


def test_small_runs_get_one_blas_thread_large_ones_keep_the_default() -> None:
    cfg = TrainConfig()
    assert cfg.blas_threads(80_000) == 1 and cfg.blas_threads(900_000) == 1  # ml-100k u1, ml-1m
    assert cfg.blas_threads(AUTO_ONE_THREAD_BELOW) is None and cfg.blas_threads(30_000_000) is None
    assert TrainConfig(threads=3).blas_threads(80_000) == 3 == TrainConfig(threads=3).blas_threads(10**8)


def test_in_order_on_threads_yields_in_item_order() -> None:
    assert list(in_order_on_threads(lambda x: x * x, range(20), threads=3)) == [x * x for x in range(20)]
