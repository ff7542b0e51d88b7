"""Blending an item-based and a user-based autoencoder: ``rhat = w * rhat_main + (1 - w) * rhat_partner``.

The two orientations make different mistakes (an item AE reads a movie's column of ratings, a user AE a user's row), so
their mix beats either (tests/benchmarks/README.md, "The defaults re-derived"). The weight is fitted on a carve of the
training ratings that neither the shipped ensemble nor its partner trained or stopped on, by least squares, which for
one weight is closed form: ``w = <a - b, y - b> / ||a - b||^2``, clipped to [0, 1]. The validation RMSE reported beside
it is cross-fitted: each half of the carve is scored with the weight fitted on the other half.

With ``blend_svd`` a Soft-Impute SVD joins them, and with ``blend_side`` the films' genres and eras
(``recae.models.side_part``): all are stacked by free weights and an intercept
(:func:`stacking_weights`, :func:`fit_mix`); the two-model functions above are unchanged and still give the pair's
own weight. Applying the fitted weights (``blend``, ``mix``) is the trained model's, in
``recae.artifacts.blending``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recae.artifacts.blending import blend, mix


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


@dataclass(frozen=True)
class FittedBlend:
    """The blend weight and RMSEs on the blend carve (main and partner alone, and the cross-fitted blend)."""

    weight: float
    main_rmse: float
    partner_rmse: float
    cross_fitted_rmse: float


def _rmse(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, np.float64) - truth) ** 2))) if truth.size else float("nan")


def cross_fitted(truth: np.ndarray, seed: int, fit_and_apply: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 ) -> np.ndarray:
    """Predictions of ``truth``'s entries, each half (drawn with ``seed``) by a fit on the other half:
    ``fit_and_apply(fit_mask, apply_mask)`` fits on the first and predicts the second (the figure a fresh carve
    would give, without a second carve)."""
    first = np.random.default_rng(seed).random(truth.size) < 0.5
    crossed = np.empty(truth.size, dtype=np.float64)
    for half in (first, ~first):
        crossed[half] = fit_and_apply(~half, half)
    return crossed


def fit_blend(main: np.ndarray, partner: np.ndarray, truth: np.ndarray, seed: int = 0) -> FittedBlend:
    """The weight fitted on all of the carve, and an RMSE it did not see (:func:`cross_fitted`)."""
    a = np.asarray(main, dtype=np.float64)
    b = np.asarray(partner, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    crossed = cross_fitted(y, seed, lambda fit, on: blend(a[on], b[on], blend_weight(a[fit], b[fit], y[fit])))
    return FittedBlend(weight=blend_weight(a, b, y), main_rmse=_rmse(a, y), partner_rmse=_rmse(b, y),
                       cross_fitted_rmse=_rmse(crossed, y))


# --- three components (TrainConfig.blend_svd): main, partner and a Soft-Impute SVD, stacked ---------------------------


def stacking_weights(predictions: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Free least-squares weights and an intercept of ``predictions`` (n, k) against ``truth`` (n,):
    ``(w, c) = argmin ||P w + c - y||^2``, returned as ``[w_1 .. w_k, c]``.

    Why an affine map (free weights and an intercept) and not a convex mix: measured on u1.base's development carve
    (weights fitted on the 2% blend carve, scored on the development carve; init seeds 0 / 1), the convex mix of
    main, partner and SVD gains 0.0006 / 0.0008 RMSE over the shipped pair, the affine map 0.0015 / 0.0016. The
    autoencoders are shrunk towards the mean (lambda 100); free weights summing to more than 1 with a negative
    intercept stretch them back, which a convex mix cannot. Four numbers on ~1,400 ratings are well determined, and
    the reported RMSE is cross-fitted, so the stretch is never scored on the ratings it was fitted on. The mix is
    clipped to the rating scale (:func:`mix`). With no ratings: the first component alone.
    """
    p = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"shapes differ: predictions {p.shape}, truth {y.shape}")
    if y.size == 0:
        return np.eye(p.shape[1] + 1)[0]
    solution, *_ = np.linalg.lstsq(np.column_stack([p, np.ones(y.size)]), y, rcond=None)  # minimum norm if collinear
    return solution


@dataclass(frozen=True)
class FittedMix:
    """The weights of the components (in their order) and the intercept, each component's RMSE alone on the blend
    carve, and the cross-fitted RMSE of the mix."""

    weights: tuple[float, ...]  # w_1 .. w_k, c
    rmses: tuple[float, ...]
    cross_fitted_rmse: float


def fit_mix(predictions: list[np.ndarray], truth: np.ndarray, scale: tuple[float, float], seed: int = 0) -> FittedMix:
    """:func:`stacking_weights` fitted on all of the carve, and an RMSE it did not see: halves drawn with ``seed``
    (the same halves as :func:`fit_blend`), each scored with the weights fitted on the other."""
    p = np.column_stack([np.asarray(x, dtype=np.float64) for x in predictions])
    y = np.asarray(truth, dtype=np.float64)
    crossed = cross_fitted(y, seed, lambda fit, on: mix(list(p[on].T), stacking_weights(p[fit], y[fit]), scale))
    weights = stacking_weights(p, y)
    return FittedMix(weights=tuple(float(w) for w in weights),
                     rmses=tuple(_rmse(p[:, j], y) for j in range(p.shape[1])), cross_fitted_rmse=_rmse(crossed, y))


def mix_figures(fitted: FittedMix, with_partner: bool, with_side: bool = False) -> dict[str, float]:
    """A stacked mix's weights, intercept, the SVD's own and the mix's cross-fitted blend-carve RMSE, as metrics."""
    names = ["blend_weight_main", *(["blend_weight_partner"] if with_partner else []), "blend_weight_svd",
             *(["blend_weight_side"] if with_side else []), "blend_intercept"]
    svd = 1 + with_partner  # the SVD's column
    return {"svd_val_rmse": fitted.rmses[svd], "val_rmse": fitted.cross_fitted_rmse,
            **{name: round(weight, 6) for name, weight in zip(names, fitted.weights, strict=True)}}
