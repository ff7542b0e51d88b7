"""One strict reader of settings, and the closed sets of values that several settings share.

A misspelt setting (``widht = 300``) that is silently dropped trains another model than the one asked for, so every
reader of settings (a TOML config file, a model's meta.json, ``from_json`` of each config class) refuses a name the
configuration class lacks, the same way, naming the ones it knows. Torch-free, so the command line can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Literal, get_args

from recae.errors import TrainingError

Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)  # auto: CUDA when torch sees it, else the CPU


class UnknownSettingError(TrainingError):
    """A setting that the configuration class has no field for; ``name`` and ``known`` let a reader re-word it."""

    def __init__(self, message: str, name: str, known: tuple[str, ...]) -> None:
        super().__init__(message)
        self.name, self.known = name, known


def setting_names(cls: type) -> frozenset[str]:
    """The names a dataclass of settings accepts: its fields."""
    return frozenset(f.name for f in fields(cls))


def strict_settings(cls: type, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A copy of ``data`` once every key names a field of the dataclass ``cls``.

    Raises UnknownSettingError for the first unknown name in sorted order: "unknown {what} setting 'x'; known
    settings are a, b, ...".
    """
    known = tuple(sorted(setting_names(cls)))
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UnknownSettingError(f"unknown {what} setting {unknown[0]!r}; known settings are {', '.join(known)}",
                                  unknown[0], known)
    return dict(data)
