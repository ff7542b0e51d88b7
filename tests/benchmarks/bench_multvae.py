"""Mult-VAE against popularity on MovieLens 1M: Recall@20/@100, NDCG@20/@100, seconds per epoch, total time.

Protocol: Liang et al.'s strong generalisation (their ML-20M procedure; the authors published no ml-1m split),
scaled to ml-1m: ratings above 3.5 are clicks, users with at least 5 clicks are kept (6,034 of 6,040), 600
validation and 600 test users are drawn with the seed, the items are those the remaining users clicked, and 20%
of each held-out user's clicks are hidden and ranked from the other 80%. The model is the paper's
[I -> 600 -> 200 -> 600 -> I] with dropout 0.5, Adam 1e-3, batches of 500 users, beta annealed to 0.2 over
--anneal-steps updates, early stopping on the validation users' NDCG@100. ml-1m is ingested from
../shared/data/ml-1m into a temporary store with recae.store.ingest (the real path `recae vae` reads).

    python tests/benchmarks/bench_multvae.py
    python tests/benchmarks/bench_multvae.py --epochs 100 --patience 20 --threads 2 --seed 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-1m"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ml-1m folder or zip")
    parser.add_argument("--heldout-users", type=float, default=600, help="validation users, and again test users")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=30)
    parser.add_argument("--anneal-steps", type=int, default=200_000)
    parser.add_argument("--beta-cap", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()

    import torch

    from recae.cli.output import render
    from recae.models.multvae import MultVAETrainConfig
    from recae.store.db import open_store
    from recae.store.ingest import ingest_dataset
    from recae.store.matrix import RatingMatrix
    from recae.training.multvae import train_and_evaluate

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_store(f"sqlite:///{Path(tmp) / 'recae.db'}")
        ingest_dataset(engine, "ml-1m", args.data, downloads_dir=Path(tmp) / "dl")
        matrix = RatingMatrix.from_db(engine)
        engine.dispose()
    loaded = time.perf_counter()
    train_config = MultVAETrainConfig(epochs=args.epochs, patience=args.patience, seed=args.seed,
                                      total_anneal_steps=args.anneal_steps, beta_cap=args.beta_cap,
                                      threads=args.threads, device=args.device)

    def on_epoch(report) -> None:  # type: ignore[no-untyped-def]
        if report.epoch % 10 == 0 or report.epoch == 1:
            print(f"  epoch {report.epoch:3d}  loss {report.loss:8.2f}  beta {report.beta:.4f}  "
                  f"val NDCG@100 {report.val_ndcg:.4f}  best {report.best_val_ndcg:.4f}@{report.best_epoch}  "
                  f"{report.seconds:.2f} s", flush=True)

    def on_split(split) -> None:  # type: ignore[no-untyped-def]
        print(f"ml-1m: {split.train.shape[0]} training users ({split.train.nnz} clicks), "
              f"{split.validation.n_users} validation + {split.test.n_users} test users, {split.n_items} items",
              flush=True)

    run = train_and_evaluate(matrix, heldout=args.heldout_users, train_config=train_config, on_split=on_split,
                             on_epoch=on_epoch)
    total = time.perf_counter() - started
    rows = run.rows()
    print(render(rows, "table", title=f"ml-1m test users (seed {args.seed})"))
    summary = {
        "rows": rows, "best_epoch": run.fit.best_epoch, "epochs_run": len(run.fit.history),
        "val_ndcg@100": run.fit.best_val_ndcg, "seconds_per_epoch": run.fit.seconds_per_epoch,
        "fit_seconds": run.fit.seconds, "ingest_seconds": loaded - started, "total_seconds": total,
        "threads": torch.get_num_threads() if args.threads == 0 else args.threads,
        "device": train_config.torch_device().type, "settings": vars(args) | {"data": str(args.data)},
    }
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
