"""Work on threads whose results are consumed in a fixed order, so sums and writes do not depend on thread count."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
