"""Blending an item-based and a user-based autoencoder: ``rhat = w * rhat_main + (1 - w) * rhat_partner``.

The two orientations make different mistakes (an item AE reads a movie's column of ratings, a user AE a user's
row), so their mix beats either (the README's validation table). The weight is fitted on a carve of the training
ratings that neither the shipped ensemble nor its partner trained or stopped on, by least squares, which for one
weight is closed form: ``w = <a - b, y - b> / ||a - b||^2``, clipped to [0, 1]. The validation RMSE reported
beside it is cross-fitted: each half of the carve is scored with the weight fitted on the other half.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def blend_weight(main: np.ndarray, partner: np.ndarray, truth: np.ndarray) -> float:
    """The least-squares weight of ``main`` in ``w * main + (1 - w) * partner`` against ``truth``, in [0, 1].

    Returns 1.0 (the main model alone) when there is nothing to fit or the two predictions agree everywhere.
    """
    a = np.asarray(main, dtype=np.float64)
    b = np.asarray(partner, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    if not (a.shape == b.shape == y.shape):
        raise ValueError(f"shapes differ: main {a.shape}, partner {b.shape}, truth {y.shape}")
    spread = a - b
    denominator = float(np.dot(spread, spread))
    if a.size == 0 or denominator <= 1e-12 * max(a.size, 1):
        return 1.0
    return float(np.clip(np.dot(spread, y - b) / denominator, 0.0, 1.0))


def blend(main: np.ndarray, partner: np.ndarray, weight: float) -> np.ndarray:
    """``weight * main + (1 - weight) * partner`` in ``main``'s dtype, in one new array (score batches are large).

    A convex mix of two clipped predictions stays on the rating scale.
    """
    main = np.asarray(main)
    mixed = np.multiply(main, main.dtype.type(weight))
    mixed += np.multiply(np.asarray(partner, dtype=main.dtype), main.dtype.type(1.0 - weight))
    return mixed


@dataclass(frozen=True)
class FittedBlend:
    """The blend weight and RMSEs on the blend carve (main and partner alone, and the cross-fitted blend)."""

    weight: float
    main_rmse: float
    partner_rmse: float
    cross_fitted_rmse: float


def _rmse(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, np.float64) - truth) ** 2))) if truth.size else float("nan")


def fit_blend(main: np.ndarray, partner: np.ndarray, truth: np.ndarray, seed: int = 0) -> FittedBlend:
    """The weight fitted on all of the carve, and an RMSE it did not see: halves drawn with ``seed``, each scored
    with the weight fitted on the other (the figure a fresh carve would give, without a second carve)."""
    a = np.asarray(main, dtype=np.float64)
    b = np.asarray(partner, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    first = np.random.default_rng(seed).random(y.size) < 0.5
    crossed = np.empty_like(y)
    for half in (first, ~first):
        weight = blend_weight(a[~half], b[~half], y[~half])
        crossed[half] = blend(a[half], b[half], weight)
    return FittedBlend(weight=blend_weight(a, b, y), main_rmse=_rmse(a, y), partner_rmse=_rmse(b, y),
                       cross_fitted_rmse=_rmse(crossed, y))
