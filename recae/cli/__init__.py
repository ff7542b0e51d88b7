"""The ``recae`` command line: a thin click layer; each command calls one library function.

Exit codes: 0 ok, 1 error, 2 usage, 65 bad input data, 75 another run holds the lock.

The group, its context and the error boundary live in ``recae.cli.app``; each command group has its own module,
and importing it registers its commands on ``cli``. The group imports a command's module only when the command
is asked for (``recae.cli.app.COMMANDS``); None of them imports torch at import time.
"""

from recae.cli.app import cli, load_all_commands, main

__all__ = ["cli", "load_all_commands", "main"]
