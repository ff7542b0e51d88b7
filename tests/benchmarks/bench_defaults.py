"""Choosing defaults without looking at a test fold: settings compared on a validation carve of the training part.

The training part of a split (ml-100k u1.base, or the ml-1m random 90/10 training part) is carved once more: 10%
of it (seed 99, never a test rating) is the development set, the rest trains. Each variant (settings of
``[model]``/``[train]`` as key=value pairs) is trained with the product's own path (``train_split``) for each
initialisation seed, and its RMSE and NDCG@10 on the development carve are printed as mean +- sd. The split's
test part is never read. This is how the "Development protocol" table of tests/benchmarks/README.md was made.

    python tests/benchmarks/bench_defaults.py --split u1 --variant "" --variant "blend_fraction=0.01"
    python tests/benchmarks/bench_defaults.py --split u1 --variant "partner_members=0" --variant "hidden=[500]"
    python tests/benchmarks/bench_defaults.py --split ml-1m --init-seeds 1 --variant "" --variant "ensemble=2"
    python tests/benchmarks/bench_defaults.py --split u1 --compare-carving    # cross-carved vs one shared carve
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEVELOPMENT_CARVE_SEED = 99


def parse_variant(text: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """``"hidden=[500],lr=0.001"`` -> model settings, train settings (values read as JSON, else as strings)."""
    from dataclasses import fields

    from recae.artifacts.train_config import TrainConfig

    train_names = {f.name for f in fields(TrainConfig)}
    model_part, train_part = {}, {}
    for item in filter(None, (part.strip() for part in _split_top_level(text))):
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, list):
            value = tuple(value)
        (train_part if key in train_names else model_part)[key.strip()] = value
    return model_part, train_part


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="u1", help="u1..u5 (ml-100k) or ml-1m (random 90/10, seed 0)")
    parser.add_argument("--variant", action="append", default=[], help='settings, e.g. "hidden=[500],lr=0.001"')
    parser.add_argument("--init-seeds", type=int, default=2, help="init seeds 0..N-1")
    parser.add_argument("--seeds", help="these init seeds instead, e.g. 2,3")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/recae-bench"))
    parser.add_argument("--compare-carving", action="store_true",
                        help="the item ensemble alone (no partner, no ranker), cross-carved vs one shared carve")
    args = parser.parse_args()
    from dataclasses import replace

    from recae.artifacts.train_config import default_configs
    from recae.evaluation.splits import Split, holdout_validation
    from recae.training.train import train_split
    from tests.benchmarks.bench_seeds import load_groups, load_split

    split = load_split(args.split, args.cache)
    groups = load_groups(args.split, args.cache, split.train.index)  # the catalogue's genres and eras
    fit_part, development = holdout_validation(split.train, 0.1, DEVELOPMENT_CARVE_SEED)
    inner = Split(split.spec, fit_part, development)  # the test part of `split` is not used below
    if args.compare_carving:
        compare_carving(fit_part, development, args)
        return
    for text in args.variant or [""]:
        model_part, train_part = parse_variant(text)
        model_cfg, train_cfg = default_configs(**model_part)
        scores = []
        seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else range(args.init_seeds)
        for init_seed in seeds:
            started = time.perf_counter()
            metrics = train_split(inner, model_cfg, replace(train_cfg, **train_part, init_seed=init_seed),
                                  groups=groups).metrics
            scores.append((metrics["test_rmse"], metrics.get("test_ndcg@10", float("nan"))))
            print(json.dumps({"split": args.split, "variant": text or "defaults", "init_seed": init_seed,
                              "dev_rmse": round(scores[-1][0], 5), "dev_ndcg@10": round(scores[-1][1], 4),
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)
        rmse = [s[0] for s in scores]
        spread = f" ± {statistics.stdev(rmse):.4f}" if len(rmse) > 1 else ""
        print(f"# {args.split} {text or 'defaults'}: development-carve RMSE {statistics.mean(rmse):.4f}{spread}, "
              f"NDCG@10 {statistics.mean(s[1] for s in scores):.4f}", flush=True)


def compare_carving(fit_part, development, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    """Members each stopping on their own carve (the default) against members sharing one carve."""
    from dataclasses import replace

    from recae.artifacts.train_config import default_configs
    from recae.artifacts.trained_model import TrainedModel
    from recae.evaluation.splits import holdout_validation
    from recae.training.train import fit, fit_cross_carved, test_metrics

    model_cfg, train_cfg = default_configs()
    train_cfg = replace(train_cfg, partner_members=0, ranker="none")
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else range(args.init_seeds)
    for init_seed in seeds:
        cfg = replace(train_cfg, init_seed=init_seed)
        cross = fit_cross_carved(fit_part, model_cfg, cfg).module
        shared = fit(*holdout_validation(fit_part, cfg.val_fraction, cfg.seed), model_cfg, cfg).module
        scores = {name: test_metrics(TrainedModel.from_fit(module, fit_part), development)["test_rmse"]
                  for name, module in (("cross_carved", cross), ("shared_carve", shared))}
        print(json.dumps({"split": args.split, "init_seed": init_seed, **{k: round(v, 5) for k, v in scores.items()}}),
              flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
