"""The default model's test figures as mean +- standard deviation over initialisation seeds, beside the baselines.

For each split (ml-100k's canonical u1..u5 folds, ml-1m random 90/10 with split seed 0) the split and its
validation carves stay fixed (``seed = 0``) while ``init_seed`` runs over 0..N-1, so the spread is the
initialisation's alone. The baselines (global mean, user+item biases, truncated SVD, most popular, EASE) are fitted
on exactly the same training part and scored on the same test part; they are deterministic, so they have no
spread. Nothing here chooses anything: every setting was chosen on validation carves before the run
(tests/benchmarks/README.md, "Development protocol"), and each test part is scored once per trained model.

Results are appended to ``--out`` (JSON lines) as they come, so an interrupted run resumes where it stopped; the
summary table ("Accuracy over seeds" in tests/benchmarks/README.md) is printed from that file.

    python tests/benchmarks/bench_seeds.py                                   # everything (about an hour)
    python tests/benchmarks/bench_seeds.py --splits u1,u2,u3,u4,u5 --out /tmp/seeds-100k.jsonl
    python tests/benchmarks/bench_seeds.py --splits ml-1m --out /tmp/seeds-1m.jsonl
    python tests/benchmarks/bench_seeds.py --summary /tmp/seeds-100k.jsonl /tmp/seeds-1m.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
FOLDS = ("u1", "u2", "u3", "u4", "u5")


def load_split(name: str, cache: Path, seed: int = 0):  # type: ignore[no-untyped-def]
    """The split `recae train --split NAME` would use (ml-1m: random 90/10 with ``seed``), from a store under
    ``cache`` (ingested by recae.store.ingest on first use)."""
    from recae.evaluation.splits import SplitSpec, split_from_store
    from recae.store.db import open_store
    from recae.store.ingest import ingest_dataset
    from recae.store.matrix import RatingMatrix

    dataset = "ml-1m" if name == "ml-1m" else "ml-100k"
    if not (DATA / dataset).exists():
        sys.exit(f"{DATA / dataset} is missing: this benchmark reads the real MovieLens data")
    cache.mkdir(parents=True, exist_ok=True)
    db = cache / f"{dataset}.db"
    fresh = not db.exists()
    engine = open_store(f"sqlite:///{db}")
    if fresh:
        ingest_dataset(engine, dataset, DATA / dataset, downloads_dir=cache / "dl")
    matrix = RatingMatrix.from_db(engine)
    spec = SplitSpec("random", test_fraction=0.1, seed=seed) if name == "ml-1m" else SplitSpec(name)
    split = split_from_store(engine, matrix, spec)
    engine.dispose()
    return split


def load_groups(name: str, cache: Path, index):  # type: ignore[no-untyped-def]
    """The films' genres and eras for ``index`` (the stacked side part's input), from the store ``load_split`` made."""
    from recae.models.side_part import groups_from_store
    from recae.store.db import open_store

    engine = open_store(f"sqlite:///{cache / ('ml-1m' if name == 'ml-1m' else 'ml-100k')}.db")
    try:
        return groups_from_store(engine, index)
    finally:
        engine.dispose()


def baseline_rows(name: str, split) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    from recae.evaluation.evaluate import evaluate_baselines
    from recae.serving.evaluate_version import ranking_baselines

    rows = [{"split": name, "model": result.name, "test_rmse": result.rating.rmse,
             "test_ndcg@10": result.ranking.ndcg if result.ranking else None}
            for result in evaluate_baselines(split.train, split.test, ranking_k=10).results()]
    for list_name, quality in ranking_baselines(split.train, split.test, ks=(10,)).items():
        rows.append({"split": name, "model": list_name, "test_rmse": None, "test_ndcg@10": quality.at[10].ndcg})
    return rows


def model_row(name: str, split, init_seed: int, groups=None) -> dict:  # type: ignore[no-untyped-def,type-arg]
    from dataclasses import replace

    from recae.artifacts.train_config import default_configs
    from recae.training.train import train_split

    model_cfg, train_cfg = default_configs()
    train_cfg = replace(train_cfg, seed=0, init_seed=init_seed)
    started = time.perf_counter()
    metrics = train_split(split, model_cfg, train_cfg, groups=groups).metrics
    return {"split": name, "model": "default", "init_seed": init_seed, "test_rmse": metrics["test_rmse"],
            "test_ndcg@10": metrics.get("test_ndcg@10"), "val_rmse": metrics["val_rmse"],
            "blend_weight": metrics.get("blend_weight"), "seconds": round(time.perf_counter() - started, 1),
            **{key: value for key, value in metrics.items()
               if key.startswith("blend_weight_") or key == "blend_intercept"}}  # the stacked mix's weights


def read_rows(paths: list[Path]) -> list[dict]:  # type: ignore[type-arg]
    rows = []
    for path in paths:
        if path.exists():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "-"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def summary(rows: list[dict]) -> str:  # type: ignore[type-arg]
    """Markdown: per split the model's mean +- sd over init seeds and the baselines; then the ml-100k 5-fold mean
    (per seed, the mean over the five folds; then mean +- sd over seeds)."""
    models = [r for r in rows if r["model"] == "default"]
    splits = [s for s in (*FOLDS, "ml-1m") if any(r["split"] == s for r in rows)]
    names = ["global_mean", "biases", "svd", "most_popular", "ease"]
    lines = ["| split | seeds | default RMSE | default NDCG@10 | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for split in splits:
        ours = [r for r in models if r["split"] == split]
        cells = [_baseline_cell([r for r in rows if r["split"] == split and r["model"] == name]) for name in names]
        lines.append(f"| {split} | {len(ours)} | {mean_sd([r['test_rmse'] for r in ours])} | "
                     f"{mean_sd([r['test_ndcg@10'] for r in ours])} | " + " | ".join(cells) + " |")
    seeds = sorted({r["init_seed"] for r in models if r["split"] in FOLDS})
    complete = [s for s in seeds if all(any(r["split"] == f and r["init_seed"] == s for r in models) for f in FOLDS)]
    if complete:
        per_seed = [statistics.mean(r["test_rmse"] for r in models if r["split"] in FOLDS and r["init_seed"] == s)
                    for s in complete]
        per_seed_ndcg = [statistics.mean(r["test_ndcg@10"] for r in models if r["split"] in FOLDS
                                         and r["init_seed"] == s) for s in complete]
        lines.append(f"| ml-100k 5-fold mean | {len(complete)} | {mean_sd(per_seed)} | {mean_sd(per_seed_ndcg)} | "
                     + " | ".join(_baseline_cell([r for r in rows if r["model"] == n and r["split"] in FOLDS],
                                                 len(FOLDS)) for n in names) + " |")
    return "\n".join(lines)


def _baseline_cell(found: list[dict], needed: int = 1) -> str:  # type: ignore[type-arg]
    """A baseline's RMSE (its NDCG@10 for the list baselines), the mean when several splits are given."""
    if len(found) < needed or not found:
        return "-"
    key = "test_rmse" if found[0]["test_rmse"] is not None else "test_ndcg@10"
    return f"{statistics.mean(r[key] for r in found):.4f}" + ("" if key == "test_rmse" else " (NDCG)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", default=",".join((*FOLDS, "ml-1m")))
    parser.add_argument("--init-seeds", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/recae-bench"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/recae-bench/seeds.jsonl"))
    parser.add_argument("--summary", type=Path, nargs="*", help="only print the table of these result files")
    args = parser.parse_args()
    if args.summary:
        print(summary(read_rows(args.summary)))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = read_rows([args.out])
    for name in args.splits.split(","):
        split = load_split(name, args.cache)
        todo = [] if any(r["split"] == name and r["model"] != "default" for r in done) else baseline_rows(name, split)
        for row in todo:
            _append(args.out, row)
        for init_seed in range(args.init_seeds):
            if not any(r["split"] == name and r.get("init_seed") == init_seed for r in done):
                _append(args.out, model_row(name, split, init_seed, load_groups(name, args.cache, split.train.index)))
    print(summary(read_rows([args.out])))


def _append(path: Path, row: dict) -> None:  # type: ignore[type-arg]
    print(json.dumps(row), flush=True)
    with path.open("a") as out:
        out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
