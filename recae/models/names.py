"""The closed sets that name models and their settings, without torch, so the CLI can list them at start-up.

Model names and pretraining kinds are Literals (checked by ``ModelConfig.validate``; ``recae.models.build.MODELS``
holds a network for every name); the orientation is a StrEnum, compared by identity where code branches on it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

ModelName = Literal["stacked", "sparse", "denoising", "contractive", "rbm"]
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)
Pretrain = Literal["autoencoder", "rbm"]  # greedy layer-wise pretraining by shallow autoencoders or RBMs
PRETRAINS: tuple[str, ...] = get_args(Pretrain)


class Orientation(StrEnum):
    """Which way an autoencoder reads the rating matrix: a vector per movie (ITEM) or per user (USER).

    A StrEnum, so a value read from meta.json or a TOML file ("item") equals its member and JSON writes it back
    as the same string.
    """

    ITEM = "item"  # each movie's vector over users (I-AutoRec)
    USER = "user"  # each user's vector over movies (U-AutoRec)

    @property
    def other(self) -> Orientation:
        return Orientation.USER if self is Orientation.ITEM else Orientation.ITEM


ORIENTATIONS: tuple[str, ...] = tuple(o.value for o in Orientation)
