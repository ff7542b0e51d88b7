"""Ridge regression of one output unit on fixed features, pulled towards a prior: the autoencoders' fold-in.

``min_{w, b}  sum_j (y_j - act(x_j . w + b))^2 + ridge * ||w - w0||^2 + bias_ridge * (b - b0)^2`` over a new
user's rated films ``j``. With the identity output it is closed-form (:func:`ridge_closed_form`); other outputs take
a few L-BFGS steps from the prior (:func:`ridge_iterative`). Pure functions of tensors, float64 in, float64 out.
"""

from __future__ import annotations

import torch


def ridge_closed_form(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, ridge: float,
                       bias_ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the ridge problem with the bias as an extra column: (A^T A + L) d = A^T (y - A p0), p = p0 + d.

    By Woodbury, d = L^-1 A^T (I + A L^-1 A^T)^-1 (y - A p0): an n_rated x n_rated system instead of one of the
    code's width (h_1 + 1 = 1,201 for the default model), the same solution for a user with a handful of ratings.
    """
    a = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)  # (n_rated, h_1 + 1)
    p0 = torch.cat([w0, b0.reshape(1)])
    penalty = torch.full((a.shape[1],), ridge, dtype=x.dtype)
    penalty[-1] = bias_ridge
    residual = y - a @ p0  # (n_rated,)
    if a.shape[0] < a.shape[1]:  # fewer ratings than features: the n_rated x n_rated (Woodbury) system
        scaled = a / penalty  # A L^-1
        delta = scaled.T @ torch.linalg.solve(torch.eye(a.shape[0], dtype=x.dtype) + scaled @ a.T, residual)
    else:
        delta = torch.linalg.solve(a.T @ a + torch.diag(penalty), a.T @ residual)
    p = p0 + delta
    return p[:-1], p[-1]


def ridge_iterative(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, ridge: float,
                     bias_ridge: float, act) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
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
