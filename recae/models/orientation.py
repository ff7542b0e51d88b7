"""The two ways an autoencoder reads the rating matrix, as a closed set (no torch: the CLI lists it at start-up)."""

from __future__ import annotations

from enum import StrEnum


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
