"""Run under torchrun by tests/training/test_distributed.py: fit on planted data, write this rank's weights and figures.

Usage: torchrun --standalone --nproc_per_node=N tests/support/distributed_worker.py OUT_DIR [--model NAME]
(also runs as a plain single process, which is the reference the test compares with).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `tests.support.synthetic`

from safetensors.torch import save_file  # noqa: E402

from recae.artifacts.train_config import TrainConfig
from recae.evaluation.splits import holdout_validation  # noqa: E402
from recae.models.build import model_config
from recae.training import distributed  # noqa: E402
from recae.training.train import fit
from tests.support.synthetic import planted_low_rank  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="denoising")
    parser.add_argument("--orientation", default="item")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    observed = planted_low_rank(n_users=300, n_movies=200, density=0.2, seed=3).observed
    fit_part, val_part = holdout_validation(observed, 0.1, 0)
    settings = TrainConfig(epochs=args.epochs, patience=args.epochs, ensemble=1, weight_decay_grid=(),
                           weight_decay=30.0, lr=5e-3, batch_ratings=1500, seed=0, threads=1, device="cpu")
    result = fit(fit_part, val_part, model_config(args.model, orientation=args.orientation, hidden=(64,)), settings)
    world = distributed.current()
    rank = world.rank if world is not None else 0
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result.module.state_dict().items()}, str(args.out / f"rank{rank}.safetensors"))
    figures = {"rank": rank, "world_size": world.size if world else 1, "best_val_rmse": result.best_val_rmse,
               "best_epoch": result.best_epoch, "seconds": result.seconds, "pid": os.getpid()}
    (args.out / f"rank{rank}.json").write_text(json.dumps(figures))
    distributed.leave()


if __name__ == "__main__":
    main()
