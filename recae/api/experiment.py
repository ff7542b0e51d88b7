"""``recae.train``: recae on your own ratings and split, with no home: to set it beside your own model.

The ratings go into a temporary store (``Store.temporary``) and through the very steps of ``recae train``; the
model answers like any other (``evaluate``, ``recommend``, ``predict``) and its folder goes when it does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recae.api.frames import DEFAULT_SCALE, DEFAULT_STEP
from recae.api.store import Store

if TYPE_CHECKING:
    from recae.api.model import Model


def train(ratings: Any, *, test: Any = None, split: str = "random", test_fraction: float = 0.1,
          scale: tuple[float, float] = DEFAULT_SCALE, step: float | None = DEFAULT_STEP, **settings: Any) -> Model:
    """Train on ``ratings`` (a DataFrame of ``user_id, movie_id, rating[, timestamp]``, or a users x films scipy
    sparse matrix: row ``i`` is user ``i + 1``, column ``j`` film ``j + 1``) and publish into a temporary store.

    ``test`` is your own held-out part (same forms; its ratings are stored beside ``ratings`` and held out),
    else ``split`` and ``test_fraction`` carve one as ``recae train --split`` does. ``scale`` and ``step``
    check the ratings as ``recae ingest --ratings`` does; every other keyword is a setting, as for
    ``Store.train``. Raises what ``Store.ingest`` and ``Store.train`` raise.

    Example:
        >>> small = recae.train(ratings, epochs=2, ensemble=1, hidden=(16,))
        >>> small.evaluate().attrs["n_test"]      # the random split's 10% of 6,000 ratings
        600
    """
    store = Store.temporary()
    store.ingest(ratings, scale=scale, step=step)
    if test is not None:
        store.ingest(test, scale=scale, step=step)
    return store.train(split, test_fraction=test_fraction, test=test, **settings)
