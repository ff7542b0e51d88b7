"""RBMs on MovieLens: the I-RBM / U-RBM for CF, and RBM pretraining of a deep stacked autoencoder.

Data is ingested with recae.store.ingest into a store under --cache (reused on later runs) and split as `recae train`
does: ml-1m random 90/10 (--seed), ml-100k the canonical u1 fold. Every choice is made on a validation carve of
the training part (train_cfg.val_fraction, the trainer's own); the test part is scored once, at the end.

    python tests/benchmarks/bench_rbm.py cf --dataset ml-1m --orientation item           # I-RBM
    python tests/benchmarks/bench_rbm.py cf --dataset ml-1m --orientation user           # U-RBM
    python tests/benchmarks/bench_rbm.py cf --dataset ml-1m --no-test --hidden 250 --cd-lr 0.02   # tuning (val only)
    python tests/benchmarks/bench_rbm.py deep --dataset ml-100k --init rbm               # rbm | autoencoder | random
    python tests/benchmarks/bench_rbm.py baselines --dataset ml-1m

Timings are wall-clock with --threads CPU threads; on a machine shared with other jobs they are pessimistic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_split(dataset: str, seed: int, cache: Path):  # type: ignore[no-untyped-def]
    """The split `recae train` would use: ml-100k u1, or ml-1m random 90/10 with ``seed``."""
    from tests.benchmarks.bench_seeds import load_split as named_split

    return named_split("u1" if dataset == "ml-100k" else dataset, cache, seed)


def report(name: str, split, trained, fit, seconds: float, test: bool) -> dict:  # type: ignore[no-untyped-def]
    from recae.training.train import test_metrics

    row = {"model": name, "val_rmse": round(fit.best_val_rmse, 4), "best_epoch": fit.best_epoch,
           "epochs": fit.epochs_run, "seconds": round(seconds, 1)}
    if test:
        row.update({k: round(v, 4) for k, v in test_metrics(trained, split.test).items()})
    print(json.dumps(row), flush=True)
    return row


def run_cf(args: argparse.Namespace, split) -> None:  # type: ignore[no-untyped-def]
    from recae.artifacts.train_config import TrainConfig
    from recae.artifacts.trained_model import TrainedModel
    from recae.models.build import model_config
    from recae.training.train import fit_cross_carved

    given = {"hidden": (args.hidden,) if args.hidden else None, "cd_lr": args.cd_lr, "cd_momentum": args.cd_momentum,
             "cd_weight_decay": args.cd_weight_decay, "cd_steps": args.cd_steps, "cd_steps_every": args.cd_steps_every,
             "conditional": args.conditional}
    model_cfg = model_config("rbm", orientation=args.orientation,  # unset flags: the model's own defaults
                             **{k: v for k, v in given.items() if v is not None})
    train_cfg = TrainConfig(epochs=args.epochs, patience=args.patience, seed=args.seed, ensemble=1,
                            partner_members=0, threads=args.threads, batch_ratings=args.batch_ratings)
    started = time.perf_counter()
    fit = fit_cross_carved(split.train, model_cfg, train_cfg, on_epoch=_print_epoch)
    seconds = time.perf_counter() - started
    trained = TrainedModel.from_fit(fit.module, split.train)
    name = (f"{'I' if args.orientation == 'item' else 'U'}-RBM F={model_cfg.hidden[0]} lr={model_cfg.cd_lr} "
            f"wd={model_cfg.cd_weight_decay} T={model_cfg.cd_steps} every={model_cfg.cd_steps_every} "
            f"cond={model_cfg.conditional} batch={args.batch_ratings}")
    report(name, split, trained, fit, seconds, not args.no_test)


def run_deep(args: argparse.Namespace, split) -> None:  # type: ignore[no-untyped-def]
    from recae.artifacts.train_config import TrainConfig
    from recae.artifacts.trained_model import TrainedModel
    from recae.models.build import model_config
    from recae.training.train import fit_cross_carved

    hidden = tuple(int(h) for h in args.layers.split(","))
    pretrain = {"random": {}, "rbm": {"pretrain": "rbm", "pretrain_epochs": args.pretrain_epochs},
                "autoencoder": {"pretrain": "autoencoder", "pretrain_epochs": args.pretrain_epochs}}[args.init]
    cd = {"cd_lr": args.cd_lr} if args.cd_lr is not None else {}
    model_cfg = model_config("stacked", orientation=args.orientation, hidden=hidden, **cd, **pretrain)
    train_cfg = TrainConfig(epochs=args.epochs, patience=args.patience, seed=args.seed, ensemble=1,
                            partner_members=0, threads=args.threads, weight_decay=args.weight_decay)
    started = time.perf_counter()
    fit = fit_cross_carved(split.train, model_cfg, train_cfg, on_progress=lambda m: print(" ", m, flush=True),
                           on_epoch=_print_epoch)
    seconds = time.perf_counter() - started
    trained = TrainedModel.from_fit(fit.module, split.train)
    report(f"stacked {args.layers} init={args.init}", split, trained, fit, seconds, not args.no_test)


def run_baselines(args: argparse.Namespace, split) -> None:  # type: ignore[no-untyped-def]
    from recae.evaluation.evaluate import evaluate_baselines

    started = time.perf_counter()
    for result in evaluate_baselines(split.train, split.test).results():
        print(json.dumps({"model": result.name, "test_rmse": round(result.rating.rmse, 4)}), flush=True)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1)}))


def _print_epoch(report) -> None:  # type: ignore[no-untyped-def]
    print(f"  epoch {report.epoch:3d}  train {report.train_loss:.4f}  val {report.val_rmse:.4f}  "
          f"best {report.best_val_rmse:.4f}@{report.best_epoch}  {report.seconds:.1f} s", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["cf", "deep", "baselines"])
    parser.add_argument("--dataset", choices=["ml-100k", "ml-1m"], default="ml-1m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--orientation", choices=["item", "user"], default="item")
    # unset CD flags take the model's own defaults (recae.models.rbm_cf.RatingRBM.defaults; ModelConfig for pretraining)
    parser.add_argument("--hidden", type=int, help="cf: hidden units F")
    parser.add_argument("--cd-lr", type=float)
    parser.add_argument("--cd-momentum", type=float)
    parser.add_argument("--cd-weight-decay", type=float)
    parser.add_argument("--cd-steps", type=int)
    parser.add_argument("--cd-steps-every", type=int, help="cf: raise T every N epochs along 1, 3, 5, 9")
    parser.add_argument("--conditional", action=argparse.BooleanOptionalAction,
                        help="cf: conditional RBM (D . r, r = rated units); unset: the model's default")
    parser.add_argument("--batch-ratings", type=int, default=0)
    parser.add_argument("--layers", default="500,250,500", help="deep: hidden sizes of the stacked AE")
    parser.add_argument("--init", choices=["random", "rbm", "autoencoder"], default="rbm")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--weight-decay", type=float, default=100.0, help="deep: fine-tuning lambda")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-test", action="store_true", help="tuning: report validation only")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/recae-bench-rbm"))
    args = parser.parse_args()
    split = load_split(args.dataset, args.seed, args.cache)
    {"cf": run_cf, "deep": run_deep, "baselines": run_baselines}[args.what](args, split)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
