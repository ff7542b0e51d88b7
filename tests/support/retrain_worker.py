"""Run by tests/retrain/test_nightly.py: one `recae retrain` run that pauses at a stage, so the test can SIGKILL it
there.

Usage: python tests/support/retrain_worker.py HOME POINT [--warm-epochs N] [--warm-lr-scale X] [--margin M]

The run is the one `recae --home HOME retrain` makes (same paths, store and options), given an ``on_stage``
callback: when it reaches POINT (``train``: after the first training epoch; ``publish``: inside the publish
transaction, after the first batch of recommendations) it writes HOME/locks/paused-at-POINT (its pid) and sleeps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, as in distributed_worker.py

from recae.paths import resolve_paths  # noqa: E402
from recae.retrain import job  # noqa: E402
from recae.store.db import open_store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("home", type=Path)
    parser.add_argument("point", choices=["train", "publish"])
    parser.add_argument("--warm-epochs", type=int, default=job.DEFAULT_WARM_EPOCHS)
    parser.add_argument("--warm-lr-scale", type=float, default=job.DEFAULT_WARM_LR_SCALE)
    parser.add_argument("--margin", type=float, default=job.DEFAULT_MARGIN)
    parser.add_argument("--pause-seconds", type=float, default=600.0)
    args = parser.parse_args()
    paths = resolve_paths(args.home)

    def on_stage(point: str) -> None:
        if point == args.point:
            (paths.locks_dir / f"paused-at-{point}").write_text(f"{os.getpid()}\n", encoding="utf-8")
            time.sleep(args.pause_seconds)  # the test SIGKILLs the run here

    options = job.RetrainOptions(inbox=paths.home / "inbox", margin=args.margin, warm_epochs=args.warm_epochs,
                                 warm_lr_scale=args.warm_lr_scale)
    job.run_retrain(open_store(paths.database_url), paths.models_dir, paths.locks_dir, options, on_stage=on_stage)


if __name__ == "__main__":
    main()
