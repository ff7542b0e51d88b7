"""Networks by name: the registry ``MODELS``, the config of a named model, and networks built out of others.

Kept apart from the autoencoder classes so that the registry can hold every family (the RBM for CF included)
without the autoencoders importing the RBM that implements their contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from recae.errors import TrainingError
from recae.models.autoencoders import (
    AutoEncoder,
    ContractiveAutoEncoder,
    DenoisingAutoEncoder,
    ModelConfig,
    SparseAutoEncoder,
    StackedAutoEncoder,
)
from recae.models.rbm_cf import RatingRBM

MODELS: dict[str, type[AutoEncoder]] = {
    "stacked": StackedAutoEncoder,
    "sparse": SparseAutoEncoder,
    "denoising": DenoisingAutoEncoder,
    "contractive": ContractiveAutoEncoder,
    "rbm": RatingRBM,  # type: ignore[dict-item]  # the RBM for CF: the scoring contract, trained by CD
}


def build_model(config: ModelConfig, n_inputs: int, n_outputs: int) -> AutoEncoder:
    """Instantiate ``config.name`` from MODELS for vectors of ``n_inputs`` units rebuilt over ``n_outputs``."""
    config.validate()
    return MODELS[config.name](config, n_inputs, n_outputs)


@torch.no_grad()
def bake_kernels(module: AutoEncoder) -> AutoEncoder:
    """The same function as a plain autoencoder: each ``W * K`` stored as W, no kernel parameters (kernel_dim 0)."""
    if not module.kernels:
        return module
    plain = build_model(replace(module.config, kernel_dim=0, kernel_weight=0.0), module.n_inputs, module.n_outputs)
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("kernels.")}
    state["w_in"], state["w_out"] = module.input_weight(), module.output_weight()
    for prefix, layers in (("encoder", module.encoder), ("decoder", module.decoder)):
        for i, layer in enumerate(layers):
            state[f"{prefix}.{i}.weight"] = layer.weight * module.kernel(f"{prefix[:3]}{i}").t()
    plain.load_state_dict(state)
    return plain.to(module.w_in.device).train(module.training)


def merge_members(members: list[AutoEncoder]) -> AutoEncoder:
    """One wider autoencoder whose output is the average of ``members``' outputs (same config and sizes).

    Hidden layers are concatenated (block-diagonal weights between them, so members do not mix) and the output
    layer averages: ``rhat = out_act(mean_m (g_1^m . W_out^m[u] + b_out^m[u]))``. For the identity output this is
    exactly the mean of the members' predictions; for other outputs it averages their pre-activations.
    """
    return merge_loaded(len(members), members.__getitem__)


def merge_loaded(count: int, load: Callable[[int], AutoEncoder]) -> AutoEncoder:
    """:func:`merge_members` of ``load(0) .. load(count - 1)``, asking for each member once, in order, so members
    kept on disk are read one at a time (ML-25M: the merged net plus one member, not all of them)."""
    first = bake_kernels(load(0))
    if count == 1:
        return first
    config = replace(first.config, hidden=tuple(count * h for h in first.config.hidden))
    merged = build_model(config, first.n_inputs, first.n_outputs)
    width, device = first.config.hidden[0], first.w_in.device
    b_out = torch.zeros_like(first.b_out).cpu()
    with torch.no_grad():
        merged.fallback.copy_(first.fallback)
        merged.input_mean.copy_(first.input_mean)
        for layer in (*merged.encoder, *merged.decoder):
            layer.weight.zero_()  # block-diagonal: members do not mix
        member: AutoEncoder | None = first
        del first
        for m in range(count):
            member = member if m == 0 else bake_kernels(load(m))
            assert member is not None
            block = slice(m * width, (m + 1) * width)  # slices written in place: no concatenated copies
            merged.w_in[:, block] = member.w_in
            merged.b_in[block] = member.b_in
            merged.w_out[:, block] = member.w_out
            for own, wide in ((member.encoder, merged.encoder), (member.decoder, merged.decoder)):
                for layer, target in zip(own, wide, strict=True):
                    n_out, n_in = layer.weight.shape
                    target.weight[m * n_out:(m + 1) * n_out, m * n_in:(m + 1) * n_in] = layer.weight
                    target.bias[m * n_out:(m + 1) * n_out] = layer.bias
            b_out += member.b_out.cpu()
            member = None
        merged.w_out.div_(count)  # the output averages the members
        merged.b_out.copy_(b_out / count)
    return merged.to(device)


def model_config(name: str = "stacked", **overrides: Any) -> ModelConfig:
    """The config of model ``name``: dataclass defaults, then the model's own defaults, then ``overrides``."""
    if name not in MODELS:
        raise TrainingError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    config = replace(ModelConfig(name=name), **MODELS[name].defaults)
    return ModelConfig.from_json({**config.to_json(), **overrides})

