"""Run by tests/base/test_home.py: a `recae train` that pauses inside its publish step, so the test can SIGKILL it
there.

Usage: python tests/support/train_worker.py MARKER RECAE-ARGS...

The run is the one `recae RECAE-ARGS...` makes, except that once the new version's folder is in place and its
recommendations are precomputed inside the publish transaction (not yet committed), it writes MARKER (its pid)
and sleeps: the test kills it there, as a kill -9 during a long precompute would.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, as in retrain_worker.py

from recae.cli import cli  # noqa: E402
from recae.serving import publish  # noqa: E402


def main() -> None:
    marker = Path(sys.argv[1])
    precompute = publish.precompute_recommendations

    def paused(*args: Any, **kwargs: Any) -> int:
        written = precompute(*args, **kwargs)
        marker.write_text(f"{os.getpid()}\n", encoding="utf-8")
        time.sleep(600)  # the test SIGKILLs the run here
        return written

    publish.precompute_recommendations = paused
    cli(args=sys.argv[2:], prog_name="recae")


if __name__ == "__main__":
    main()
