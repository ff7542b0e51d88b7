"""What every rating model's loop reads to judge an epoch: predictions and RMSE at held-out entries.

Shared by the autoencoders' loop (``recae.training.train``), fine-tuning and the RBM for CF, so the validation
figure that picks the best epoch is computed one way for all of them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recae.models.autoencoders import AutoEncoder
from recae.models.batches import iterate_batches


def unit_means(csr: sp.csr_matrix, n_units: int) -> np.ndarray:
    """Mean rating of every output unit (column of the oriented matrix); the global mean where a unit has none."""
    sums = np.bincount(csr.indices, weights=csr.data, minlength=n_units)
    counts = np.bincount(csr.indices, minlength=n_units)
    global_mean = float(csr.data.mean()) if csr.nnz else 0.0
    return np.where(counts > 0, sums / np.maximum(counts, 1), global_mean).astype(np.float32)


@torch.no_grad()
def predict_entries(module: AutoEncoder, inputs: sp.csr_matrix, targets: sp.csr_matrix, *,
                    batch_ratings: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Predictions (unclipped) and truths at every entry of ``targets``, reading ``inputs`` as the vectors.

    Both are (n_vectors, n_units) in the oriented space; vectors without input fall back to the units' means.
    """
    was_training = module.training
    module.eval()
    rows = np.flatnonzero(np.diff(targets.indptr))
    predicted, truth = [], []
    for batch in iterate_batches(inputs, targets, batch_ratings * 4, seed=0, epoch=0, shuffle=False, rows=rows,
                                 count_inputs=True):
        batch = batch.to(device)
        predicted.append(module.predict_at(batch.inputs, batch.targets).cpu().numpy())
        truth.append(batch.targets.values.cpu().numpy())
    module.train(was_training)
    if not predicted:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(predicted), np.concatenate(truth)


def validation_rmse(module: AutoEncoder, inputs: sp.csr_matrix, targets: sp.csr_matrix,
                    scale: tuple[float, float], *, batch_ratings: int, device: torch.device) -> float:
    """RMSE of clipped predictions at the ``targets`` entries: ``sqrt(mean((clip(rhat) - r)^2))``."""
    predicted, truth = predict_entries(module, inputs, targets, batch_ratings=batch_ratings, device=device)
    if truth.size == 0:
        return float("nan")
    clipped = np.clip(predicted, scale[0], scale[1])
    return float(np.sqrt(np.mean((clipped.astype(np.float64) - truth) ** 2)))
