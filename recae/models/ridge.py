"""Ridge regression of one output unit on fixed features, pulled towards a prior: the autoencoders' fold-in.

``min_{w, b}  sum_j (y_j - act(x_j . w + b))^2 + ridge * ||w - w0||^2 + bias_ridge * (b - b0)^2`` over a new
user's rated films ``j``. With the identity output it is closed-form (:func:`ridge_closed_form`, numpy: serving
and the torch networks share it); other outputs take a few L-BFGS steps from the prior (:func:`ridge_iterative`
for torch, :func:`ridge_iterative_numpy` for the numpy forward passes). Float64 in, float64 out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def ridge_closed_form(x: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: np.ndarray | float, ridge: float,
                      bias_ridge: float) -> tuple[np.ndarray, float]:
    """Solve the ridge problem with the bias as an extra column: (A^T A + L) d = A^T (y - A p0), p = p0 + d.

    By Woodbury, d = L^-1 A^T (I + A L^-1 A^T)^-1 (y - A p0): an n_rated x n_rated system instead of one of the
    code's width (h_1 + 1 = 1,201 for the default model), the same solution for a user with a handful of ratings.
    """
    x = np.asarray(x, dtype=np.float64)
    a = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)  # (n_rated, h_1 + 1)
    p0 = np.concatenate([np.asarray(w0, dtype=np.float64).reshape(-1), np.asarray(b0, dtype=np.float64).reshape(1)])
    penalty = np.full(a.shape[1], ridge, dtype=np.float64)
    penalty[-1] = bias_ridge
    residual = np.asarray(y, dtype=np.float64) - a @ p0  # (n_rated,)
    if a.shape[0] < a.shape[1]:  # fewer ratings than features: the n_rated x n_rated (Woodbury) system
        scaled = a / penalty  # A L^-1
        delta = scaled.T @ np.linalg.solve(np.eye(a.shape[0]) + scaled @ a.T, residual)
    else:
        delta = np.linalg.solve(a.T @ a + np.diag(penalty), a.T @ residual)
    p = p0 + delta
    return p[:-1], float(p[-1])


def ridge_iterative(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, ridge: float,
                    bias_ridge: float, act) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """The ridge problem for a non-identity ``act`` by torch's L-BFGS from the prior (the torch networks')."""
    import torch

    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = ((y - act(x @ w + b)) ** 2).sum() + ridge * ((w - w0) ** 2).sum() + bias_ridge * (b - b0) ** 2
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), b.detach()


def ridge_iterative_numpy(x: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: float, ridge: float, bias_ridge: float,
                          act: Callable[[np.ndarray], np.ndarray],
                          slope: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[np.ndarray, float]:
    """:func:`ridge_iterative` in numpy: scipy's L-BFGS on the same loss with its exact gradient
    (``slope(z, act(z))`` is act'(z)), converged tightly so that it lands where torch's does."""
    from scipy.optimize import minimize

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w0 = np.asarray(w0, dtype=np.float64)
    width = w0.size

    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = p[:width], p[width]
        z = x @ w + b
        h = act(z)
        grad_z = 2.0 * (h - y) * slope(z, h)  # (n_rated,)
        value = float(((y - h) ** 2).sum() + ridge * ((w - w0) ** 2).sum() + bias_ridge * (b - b0) ** 2)
        grad = np.concatenate([x.T @ grad_z + 2.0 * ridge * (w - w0), [grad_z.sum() + 2.0 * bias_ridge * (b - b0)]])
        return value, grad

    start = np.concatenate([w0, [float(b0)]])
    found = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 500, "gtol": 1e-12, "ftol": 1e-15})
    return found.x[:width], float(found.x[width])
