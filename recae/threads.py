"""Work on threads whose results are consumed in a fixed order, so sums and writes do not depend on thread count."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any


def in_order_on_threads(work: Callable[[Any], Any], items: Iterable[Any], threads: int | None = None) -> Iterator[Any]:
    """``work(item)`` for each item on ``threads`` threads (default: the CPUs, at most 4), yielded in item order.

    scipy's sparse kernels release the GIL, so products run side by side; at most ``threads + 1`` results wait
    at once (each can be hundreds of MB), and the caller consumes them in a fixed order, so sums built from them
    do not depend on the thread count.
    """
    threads = threads or min(os.cpu_count() or 1, 4)
    if threads <= 1:
        yield from map(work, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Any] = deque()
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@contextmanager
def blas_threads(count: int | None) -> Iterator[None]:
    """numpy's and scipy's BLAS and LAPACK on at most ``count`` threads inside the block (None: as they are).

    Why: OpenBLAS wakes every one of its threads for each call, however small, and waits for them; with the other
    core busy, each (1,682 x 30) QR of Soft-Impute's subspace iteration took 150 ms instead of 1.6 ms on one
    thread, so the SVD part of an ml-100k training took 11 of its 24 CPU seconds.
    """
    if count is None:
        yield
        return
    import numpy  # noqa: F401 - the BLAS libraries must be loaded for the limit to reach them
    import scipy.linalg  # noqa: F401 - scipy ships its own OpenBLAS
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=count, user_api="blas"):
        yield
