"""The ``recae`` command line: a thin click layer; each command calls one library function.

Exit codes: 0 ok, 1 error, 2 usage, 65 bad input data, 75 another run holds the lock.

The group, its context and the error boundary live in ``recae.cli.app``; each command group has its own module,
and importing it registers its commands on ``cli``. None of them imports torch at import time.
"""

from recae.cli import data, insight, models, retrain, serve, train  # noqa: F401 - importing registers the commands
from recae.cli.app import cli, main

__all__ = ["cli", "main"]
