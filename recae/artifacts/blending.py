"""How a trained model mixes its parts' predictions, with weights that ``recae.training.blend`` fits.

Kept with the trained model (``recae.artifacts.trained_model``) because scoring applies them on every request;
fitting the weights is training's job.
"""

from __future__ import annotations

import numpy as np


def blend(main: np.ndarray, partner: np.ndarray, weight: float) -> np.ndarray:
    """``weight * main + (1 - weight) * partner`` in ``main``'s dtype, in one new array (score batches are large).

    A convex mix of two clipped predictions stays on the rating scale.
    """
    main = np.asarray(main)
    mixed = np.multiply(main, main.dtype.type(weight))
    mixed += np.multiply(np.asarray(partner, dtype=main.dtype), main.dtype.type(1.0 - weight))
    return mixed


def mix(predictions: list[np.ndarray], weights: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """``clip(sum_j w_j * predictions[j] + c, *scale)`` for ``weights = [w_1 .. w_k, c]``, in the first
    prediction's dtype, in one new array."""
    first = np.asarray(predictions[0])
    kind = first.dtype.type
    mixed = np.multiply(first, kind(weights[0]))
    for part, weight in zip(predictions[1:], weights[1:-1], strict=True):
        mixed += np.multiply(np.asarray(part, dtype=first.dtype), kind(weight))
    mixed += kind(weights[-1])
    return np.clip(mixed, kind(scale[0]), kind(scale[1]), out=mixed)
