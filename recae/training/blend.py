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


# --- three components (TrainConfig.blend_svd): main, partner and a Soft-Impute SVD ----------------------------------


def simplex_weights(predictions: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The least-squares weights ``w`` of ``predictions`` (n, k) against ``truth`` (n,) on the simplex:
    ``min ||P w - y||^2`` subject to ``w >= 0``, ``sum(w) = 1``.

    Why convex and not affine (free weights summing to 1) or free least squares with an intercept: the components
    are strongly collinear (all three predict the same ratings within ~0.1), so free weights fitted on a 2% carve
    (~1,600 ratings on ml-100k) swing to large opposite signs and extrapolate; a convex mix of clipped predictions
    stays on the rating scale, and it is the 2-model rule of :func:`blend_weight` (w clipped to [0, 1]) for k
    components. Exact for small k: the optimum lies in the relative interior of one face of the simplex, where it is
    the affine solution of that face's components (``w_S = w_0 + N z`` with ``sum(w_S) = 1``, solved by
    least squares on the differences to the face's first component); every face is tried and the best feasible one
    wins (2^k - 1 faces: 7 for three components). Degenerate data (empty, identical columns) falls back to the
    best single component or, with no rows, to the first.
    """
    p = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"shapes differ: predictions {p.shape}, truth {y.shape}")
    k = p.shape[1]
    best, best_loss = np.eye(k)[0], np.inf
    if y.size == 0:
        return best
    for mask in range(1, 1 << k):
        face = [j for j in range(k) if mask >> j & 1]
        weights = np.zeros(k)
        if len(face) == 1:
            weights[face[0]] = 1.0
        else:
            base = p[:, face[0]]
            spread = p[:, face[1:]] - base[:, None]  # (n, |face| - 1)
            if np.linalg.matrix_rank(spread) < spread.shape[1]:
                continue  # a component repeats another here: a smaller face covers it
            rest, *_ = np.linalg.lstsq(spread, y - base, rcond=None)
            if np.any(rest < 0) or rest.sum() > 1:
                continue  # the optimum of this face's affine hull lies outside the simplex
            weights[face[1:]] = rest
            weights[face[0]] = 1.0 - rest.sum()
        loss = float(np.sum((p @ weights - y) ** 2))
        if loss < best_loss - 1e-12 * max(y.size, 1):
            best, best_loss = weights, loss
    return best


def mix(predictions: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """``sum_j w_j * predictions[j]`` in the first prediction's dtype, in one new array (a convex mix of clipped
    predictions stays on the rating scale)."""
    first = np.asarray(predictions[0])
    mixed = np.multiply(first, first.dtype.type(weights[0]))
    for part, weight in zip(predictions[1:], weights[1:], strict=True):
        mixed += np.multiply(np.asarray(part, dtype=first.dtype), first.dtype.type(weight))
    return mixed


@dataclass(frozen=True)
class FittedMix:
    """The weights of the components (in their order), each one's RMSE alone on the blend carve, and the
    cross-fitted RMSE of the mix."""

    weights: tuple[float, ...]
    rmses: tuple[float, ...]
    cross_fitted_rmse: float


def fit_mix(predictions: list[np.ndarray], truth: np.ndarray, seed: int = 0) -> FittedMix:
    """:func:`simplex_weights` fitted on all of the carve, and an RMSE it did not see: halves drawn with ``seed``
    (the same halves as :func:`fit_blend`), each scored with the weights fitted on the other."""
    p = np.column_stack([np.asarray(x, dtype=np.float64) for x in predictions])
    y = np.asarray(truth, dtype=np.float64)
    first = np.random.default_rng(seed).random(y.size) < 0.5
    crossed = np.empty_like(y)
    for half in (first, ~first):
        crossed[half] = p[half] @ simplex_weights(p[~half], y[~half])
    weights = simplex_weights(p, y)
    return FittedMix(weights=tuple(float(w) for w in weights), rmses=tuple(_rmse(p[:, j], y) for j in range(p.shape[1])),
                     cross_fitted_rmse=_rmse(crossed, y))
