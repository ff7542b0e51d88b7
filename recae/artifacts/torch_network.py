"""A torch module behind the numpy :class:`recae.artifacts.inference.Network` contract: what a model fitted in this
process scores with (training, tuning, the nightly warm start), with torch's own kernels, so training's figures
do not move. Views, not copies: ``torch.from_numpy`` and ``.numpy()`` share memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from recae.models.batches import sparse_rows

if TYPE_CHECKING:
    from recae.models.autoencoders import AutoEncoder
    from recae.models.model_config import ModelConfig


class TorchNetwork:
    """``module`` (an AutoEncoder or the RBM for CF, on the CPU) answering in numpy arrays."""

    def __init__(self, module: AutoEncoder) -> None:
        self.module = module.eval()
        self.config: ModelConfig = module.config

    @property
    def fallback(self) -> np.ndarray:
        return self.module.fallback.numpy()

    @torch.no_grad()
    def representation(self) -> np.ndarray:
        return self.module.w_out.detach().numpy()

    @torch.no_grad()
    def code_of(self, block: sp.csr_matrix) -> np.ndarray:
        self.module.eval()  # a caller may have trained the module on since (no dropout, no corruption here)
        return self.module.encode(sparse_rows(block)).code.numpy()

    @torch.no_grad()
    def features_of(self, block: sp.csr_matrix) -> np.ndarray:
        self.module.eval()
        return self.module.features(self.module.encode(sparse_rows(block)).code).numpy()

    @torch.no_grad()
    def output_at(self, feats: np.ndarray, pattern: sp.csr_matrix) -> np.ndarray:
        return self.module.output_at(torch.from_numpy(feats), sparse_rows(pattern)).numpy()

    @torch.no_grad()
    def output_dense(self, feats: np.ndarray) -> np.ndarray:
        return self.module.output_dense(torch.from_numpy(feats)).numpy()

    @torch.no_grad()
    def unit_scores(self, feats: np.ndarray, units: np.ndarray) -> np.ndarray:
        return self.module.unit_scores(torch.from_numpy(feats), torch.from_numpy(np.asarray(units, np.int64))).numpy()

    @torch.no_grad()
    def fold_in_unit(self, feats: np.ndarray, cols: np.ndarray, values: np.ndarray, prior: int | None,
                     ridge: float, bias_ridge: float) -> np.ndarray:
        return self.module.fold_in_unit(torch.from_numpy(feats), cols, values, prior, ridge, bias_ridge).numpy()

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: value.detach().cpu().numpy() for key, value in self.module.state_dict().items()}


def module_from_arrays(config: ModelConfig, state: dict[str, np.ndarray], n_units: int) -> AutoEncoder:
    """The torch module of ``config`` holding ``state`` (already checked by ``inference.network_from_arrays``):
    for the callers that train on from a published model (the nightly warm start, latent views)."""
    from recae.models.build import build_model

    with torch.device("meta"):  # no throwaway random weights: the loaded tensors become the parameters
        module = build_model(config, n_units, n_units)
    tensors = {key: torch.from_numpy(np.array(value, copy=True)) for key, value in state.items()}
    module.load_state_dict(tensors, strict=True, assign=True)
    return module.eval()
