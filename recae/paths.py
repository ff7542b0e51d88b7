"""Where recae keeps its data, and how that is chosen.

Precedence for every setting: CLI flag > ``RECAE_*`` environment variable > default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

HOME_ENV = "RECAE_HOME"
DATABASE_URL_ENV = "RECAE_DATABASE_URL"


@dataclass(frozen=True)
class Paths:
    """Filesystem layout of one recae home.

    Attributes:
        home: root folder (``RECAE_HOME``, default the platform's user data dir).
        database_url: SQLAlchemy URL of the store (default a SQLite file in ``home``).
    """

    home: Path
    database_url: str

    @property
    def models_dir(self) -> Path:
        """Published model artifacts, one folder per version."""
        return self.home / "models"

    @property
    def downloads_dir(self) -> Path:
        """Cache of downloaded dataset archives."""
        return self.home / "downloads"

    @property
    def locks_dir(self) -> Path:
        """Lock files for jobs that must not run twice at once."""
        return self.home / "locks"


def models_dir_of(engine: Engine) -> Path:
    """The models folder of the home whose store ``engine`` opens, for callers not given one: beside a SQLite
    file (a home's layout: ``HOME/recae.db``, ``HOME/models``), else the resolved home's."""
    if engine.url.get_backend_name() == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        return Path(engine.url.database).expanduser().parent / "models"
    return resolve_paths().models_dir


def resolve_paths(home: str | Path | None = None, database_url: str | None = None) -> Paths:
    """Resolve the home folder and database URL from arguments, environment and defaults.

    Args:
        home: explicit home folder (a CLI flag); else ``RECAE_HOME``; else the user data dir.
        database_url: explicit URL (``--db``); else ``RECAE_DATABASE_URL``; else ``sqlite:///HOME/recae.db``.
    """
    chosen_home = Path(home or os.environ.get(HOME_ENV) or _user_data_dir()).expanduser()
    url = database_url or os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{chosen_home / 'recae.db'}"
    return Paths(home=chosen_home, database_url=url)


def _user_data_dir() -> str:
    """The platform's data folder for recae; platformdirs is imported only when no home was given."""
    import platformdirs

    return platformdirs.user_data_dir("recae")
