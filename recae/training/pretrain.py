"""Greedy layer-wise pretraining of a stacked autoencoder by shallow autoencoders (``--pretrain autoencoder``).

A fixed number of epochs per layer, no validation: the early-stopping loop (recae.training.loop) takes over in the
fine-tuning of the whole stack that follows. The RBM pretraining of the same stack: recae.models.rbm.
"""

from __future__ import annotations

from collections.abc import Callable

import scipy.sparse as sp
import torch
from torch import Tensor

from recae.artifacts.train_config import TrainConfig
from recae.models.autoencoders import AutoEncoder, sparse_input_matmul
from recae.models.batches import SparseRows, iterate_batches
from recae.models.losses import l2_penalty, masked_mse
from recae.training.loop import check_finite


def pretrain_autoencoders(module: AutoEncoder, data: sp.csr_matrix, cfg: TrainConfig, epochs: int,
                          device: torch.device, on_progress: Callable[[str], None] | None) -> None:
    """Greedy layer-wise pretraining: each encoder layer with its mirrored decoder layer as a shallow autoencoder.

    Layer 1 rebuilds the sparse ratings at their observed entries (masked MSE); layer l > 1 rebuilds the dense
    codes h_{l-1} of the frozen layers below (plain MSE). Fine-tuning of the whole stack follows in ``fit``.
    """
    n_layers = len(module.config.hidden)
    for layer in range(n_layers):
        if layer == 0:
            params = [module.w_in, module.b_in, module.w_out, module.b_out]
        else:
            enc, dec = module.encoder[layer - 1], module.decoder[n_layers - 1 - layer]
            params = [*enc.parameters(), *dec.parameters()]
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        for epoch in range(epochs):
            for batch in iterate_batches(data, data, cfg.batch_ratings, seed=cfg.weights_seed + 7919 * (layer + 1),
                                         epoch=epoch):
                batch = batch.to(device)
                optimizer.zero_grad(set_to_none=True)
                if layer == 0:
                    z = module.act(_first_layer(module, batch.inputs))
                    loss = masked_mse(module.output_at(z, batch.targets), batch.targets.values)
                    loss = loss + l2_penalty([module.w_in, module.w_out], cfg.weight_decay, data.nnz)
                else:
                    with torch.no_grad():
                        below = module.encode(batch.inputs).hidden[layer - 1]  # (batch, h_{l-1})
                    rebuilt = module.act(dec(module.act(enc(below))))
                    loss = torch.mean((rebuilt - below) ** 2)
                check_finite(loss, epoch + 1, cfg.lr)
                loss.backward()
                optimizer.step()
        if on_progress:
            on_progress(f"pretrained layer {layer + 1} of {n_layers}")


def _first_layer(module: AutoEncoder, inputs: SparseRows) -> Tensor:
    return sparse_input_matmul(module.corrupt(inputs), module.w_in) + module.b_in
