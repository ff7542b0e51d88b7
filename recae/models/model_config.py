"""What autoencoder to build: ``ModelConfig``, every field settable in the TOML config's ``[model]`` table.

Torch-free (the networks are ``recae.models.autoencoders`` and ``recae.models.rbm_cf``), so a published model's
meta.json can be read, and the model run with numpy (``recae.artifacts.inference``), without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from recae.errors import TrainingError
from recae.models.names import MODEL_NAMES, ORIENTATIONS, PRETRAINS, Orientation
from recae.settings import strict_settings

#: The hidden and output activations a model may name (torch's in ``autoencoders.ACTIVATIONS``, numpy's in
#: ``recae.artifacts.inference``).
ACTIVATION_NAMES = ("sigmoid", "relu", "elu", "selu", "tanh", "identity")


@dataclass(frozen=True)
class ModelConfig:
    """What model to build; every field can be set in the TOML config's ``[model]`` table."""

    name: str = "stacked"  # key in MODELS: stacked | sparse | denoising | contractive
    orientation: Orientation = Orientation.ITEM  # item: each movie's vector over users (I-AutoRec); user: a user's
    hidden: tuple[int, ...] = (500,)  # encoder layer sizes; the decoder mirrors them
    activation: str = "sigmoid"  # hidden activation: sigmoid | relu | elu | selu | tanh | identity
    output_activation: str = "identity"  # activation of the output units (identity suits ratings)
    dropout: float = 0.0  # dropout on every hidden layer's activations while training
    input_dropout: float = 0.0  # denoising: probability of masking each observed input rating while training
    sparsity: str = "kl"  # sparse model's penalty: kl (to sparsity_target; sigmoid only) | l1
    sparsity_target: float = 0.05  # rho: wished mean activation of each code unit
    sparsity_weight: float = 0.0  # beta: weight of the sparsity penalty (0 = off)
    contractive_weight: float = 0.0  # gamma: weight of the Jacobian penalty on the first layer (0 = off)
    pretrain_epochs: int = 0  # greedy layer-wise pretraining epochs per layer before fine-tuning (0 = off)
    center_inputs: bool = False  # feed r - mean(r): a missing input (0) then reads as an average rating
    kept_weight: float = 1.0  # denoising: loss weight of ratings the corruption kept (masked ones weigh 1)
    kernel_dim: int = 0  # d of the local kernel K_ij = max(0, 1 - ||u_i - v_j||^2) on every weight (0 = off)
    kernel_weight: float = 0.0  # lambda_s of the kernel's regulariser lambda_s / 2 * sum K^2
    pretrain: str = "autoencoder"  # what pretrain_epochs > 0 pretrains with: autoencoder | rbm (recae.models.rbm)
    rating_levels: tuple[float, ...] = ()  # rbm: the K values of the softmax visibles (empty: the training ratings')
    cd_steps: int = 1  # rbm and RBM pretraining: Gibbs steps T of contrastive divergence (CD-T)
    persistent_cd: bool = False  # RBM pretraining: persistent chains (PCD) instead of chains restarted at the data
    cd_lr: float = 0.05  # rbm and RBM pretraining: learning rate of the CD updates (per vector of a batch)
    cd_momentum: float = 0.9  # momentum after the first 5 epochs (0.5 before, as Hinton's guide advises)
    cd_weight_decay: float = 0.001  # L2 weight decay of the CD updates: dW -= cd_lr * cd_weight_decay * W
    conditional: bool = False  # rbm: hidden units also receive D . r, r = which units the vector has rated (ICML 2007)
    cd_steps_every: int = 0  # rbm: > 0 raises T every that many epochs along 1, 3, 5, 9 (ICML 2007), from cd_steps

    def __post_init__(self) -> None:
        if self.orientation in ORIENTATIONS:  # "item" from a file or a caller becomes Orientation.ITEM
            object.__setattr__(self, "orientation", Orientation(self.orientation))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["orientation"] = str(self.orientation)
        data["hidden"] = list(self.hidden)
        data["rating_levels"] = list(self.rating_levels)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        values = strict_settings(cls, data, "model")
        if "hidden" in values:
            hidden = values["hidden"]
            values["hidden"] = (int(hidden),) if isinstance(hidden, int) else tuple(int(h) for h in hidden)
        if "rating_levels" in values:
            values["rating_levels"] = tuple(float(v) for v in values["rating_levels"])
        return cls(**values)

    def validate(self) -> None:
        """Raise TrainingError naming the first bad setting and what is allowed."""
        if self.name not in MODEL_NAMES:
            raise TrainingError(f"unknown model {self.name!r}; choose one of {', '.join(MODEL_NAMES)}")
        if self.orientation not in ORIENTATIONS:
            raise TrainingError(f"unknown orientation {self.orientation!r}; choose one of {', '.join(ORIENTATIONS)}")
        for label, act in (("activation", self.activation), ("output_activation", self.output_activation)):
            if act not in ACTIVATION_NAMES:
                raise TrainingError(f"unknown {label} {act!r}; choose one of {', '.join(ACTIVATION_NAMES)}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise TrainingError(f"hidden sizes must be positive integers, got {list(self.hidden)}")
        for label, p in (("dropout", self.dropout), ("input_dropout", self.input_dropout)):
            if not 0.0 <= p < 1.0:
                raise TrainingError(f"{label} must be in [0, 1), got {p}")
        if self.sparsity not in ("kl", "l1"):
            raise TrainingError(f"unknown sparsity {self.sparsity!r}; choose kl or l1")
        if self.sparsity == "kl" and self.sparsity_weight > 0 and self.activation != "sigmoid":
            raise TrainingError("the KL sparsity penalty needs activation 'sigmoid'; use sparsity = 'l1' otherwise")
        if not 0.0 < self.sparsity_target < 1.0:
            raise TrainingError(f"sparsity_target must be in (0, 1), got {self.sparsity_target}")
        if self.kernel_dim < 0 or self.kernel_weight < 0:
            raise TrainingError("kernel_dim and kernel_weight must not be negative")
        if self.kernel_dim > 0 and self.pretrain_epochs > 0:
            raise TrainingError("greedy pretraining does not support local kernels; "
                                "set pretrain_epochs or kernel_dim to 0")
        if self.pretrain not in PRETRAINS:
            raise TrainingError(f"unknown pretrain {self.pretrain!r}; choose {' or '.join(PRETRAINS)}")
        if self.pretrain == "rbm" and self.pretrain_epochs > 0 and self.activation != "sigmoid":
            raise TrainingError("RBM pretraining gives sigmoid hidden units; set activation = 'sigmoid'")
        if self.cd_steps < 1 or self.cd_lr <= 0 or not 0.0 <= self.cd_momentum < 1.0 or self.cd_weight_decay < 0:
            raise TrainingError("cd_steps must be >= 1, cd_lr positive, cd_momentum in [0, 1), cd_weight_decay >= 0")
        if self.cd_steps_every < 0:
            raise TrainingError(f"cd_steps_every must be >= 0, got {self.cd_steps_every}")
        if self.conditional and self.name != "rbm":
            raise TrainingError(f"conditional applies to the rbm model only; set conditional = false for {self.name}")
        if self.name == "rbm" and (self.kernel_dim > 0 or self.pretrain_epochs > 0):
            raise TrainingError("the rbm model takes neither local kernels nor pretraining; set kernel_dim and "
                                "pretrain_epochs to 0")
