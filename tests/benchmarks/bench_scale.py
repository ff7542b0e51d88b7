"""Benchmark: the whole pipeline on an ML-25M-shaped synthetic set, stage by stage, each in its own process.

    python tests/benchmarks/bench_scale.py                          # 25,000,095 ratings, every stage
    python tests/benchmarks/bench_scale.py --ratings 1000000        # the same shape scaled down (fewer users)
    python tests/benchmarks/bench_scale.py --work /tmp/recae-scale --stages train-item,precompute

Stages (in this order; --stages picks some, the ones after ``synth`` reuse what earlier runs left in --work):
  synth       `recae synth` writes the CSV (162,541 users x 59,047 films at 25M; users scale with --ratings)
  ingest      recae.store.ingest.ingest_ratings_file into a fresh SQLite store
  matrix      RatingMatrix.from_db (CSR + IdIndex)
  train-item  one epoch of the default model (recae.training.train.default_configs(), e.g. denoising I-AutoRec),
              item orientation, ensemble 1, one weight decay (no grid), 5% validation as in `recae train`;
              the model is saved in --work for the precompute stage
  train-user  the same in user orientation
  precompute  top-N (--top, default 10) of every user from the train-item model, written into the store in one
              transaction together with the champion switch (recae.serving.registry.promote)
  cli         optional: the real `recae train` end to end in one process (split, 1 epoch, test metrics, publish,
              top-100 precompute): the honest overall peak of a training run; ensemble 1 and one weight decay
              unless --cli-defaults, which runs `recae train` with no settings at all (the shipped defaults)
  nightly     optional, after cli: --fresh (default 1%) new ratings of random known users and films dropped in
              the inbox, then the real `recae retrain` with --margin 0 --ndcg-margin 1 (it publishes unless RMSE got worse)
  recommend   optional, after cli: `recae recommend --user 42` in 5 fresh processes (median and worst)

At ML-32M shape (the issue's target: whole default train <= 30 min, nightly <= 30 min, every peak <= 6 GB):
    python tests/benchmarks/bench_scale.py --ratings 32000204 --users 200948 --movies 87585 \
        --stages synth,ingest,cli,nightly,recommend --cli-defaults

Every stage runs in a child process; its wall time, CPU time and peak resident memory (ru_maxrss from wait4)
are its own. The store and CSV stay in --work (default: a folder in the temp dir) for later runs. Figures are
printed as a table at the end, plus the machine's load average (the dev machine is shared). Target for ML-25M
on 2 cores: peak memory <= 6 GB in every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_ingest import ML25M_ROWS, ML25M_USERS  # noqa: E402

ML25M_RATED_MOVIES = 59_047  # films with at least one rating in ML-25M (bench_train.py uses the same shape)
STAGES = ("synth", "ingest", "matrix", "train-item", "train-user", "precompute", "cli", "nightly", "recommend")
DEFAULT_STAGES = STAGES[:-3]
BENCH_VERSION = "bench-scale-item"
TARGET_PEAK_GB = 6.0


@dataclass(frozen=True)
class Shape:
    """Sizes of the synthetic set and where its files live in the work folder."""

    ratings: int
    users: int
    movies: int
    seed: int
    work: Path

    @property
    def tag(self) -> str:
        return f"{self.ratings}x{self.users}x{self.movies}-seed{self.seed}"

    @property
    def csv(self) -> Path:
        return self.work / f"synth-{self.tag}.csv"

    @property
    def home(self) -> Path:
        return self.work / f"home-{self.tag}"

    @property
    def db(self) -> Path:
        return self.home / "recae.db"

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def model_dir(self, orientation: str) -> Path:
        return self.home / f"bench-model-{orientation}"


# --------------------------------------------------------------------------------------------------- children


def _say(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _open(shape: Shape):  # type: ignore[no-untyped-def]
    from recae.store.db import count_ratings, open_store

    if not shape.db.exists():
        raise SystemExit(f"no store at {shape.db}: run the ingest stage first (--stages ingest)")
    engine = open_store(shape.url)
    if count_ratings(engine) != shape.ratings:
        raise SystemExit(f"{shape.db} does not hold {shape.ratings:,} ratings: re-run the ingest stage")
    return engine


def stage_ingest(shape: Shape, args: argparse.Namespace) -> dict[str, object]:
    from recae.store.db import count_ratings, open_store
    from recae.store.ingest import ingest_ratings_file

    if not shape.csv.exists():
        raise SystemExit(f"no CSV at {shape.csv}: run the synth stage first")
    shutil.rmtree(shape.home, ignore_errors=True)
    engine = open_store(shape.url)
    started = time.perf_counter()
    report = ingest_ratings_file(engine, shape.csv, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - started
    assert count_ratings(engine) == report.rows_loaded == shape.ratings, report
    size = sum(p.stat().st_size for p in shape.home.glob("recae.db*"))
    return {"seconds": seconds, "items": report.rows_loaded, "unit": "ratings",
            "note": f"store {size / 2**30:.2f} GiB"}


def stage_matrix(shape: Shape, args: argparse.Namespace) -> dict[str, object]:
    from recae.store.matrix import RatingMatrix

    engine = _open(shape)
    started = time.perf_counter()
    matrix = RatingMatrix.from_db(engine)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "items": matrix.nnz, "unit": "ratings",
            "note": f"{matrix.shape[0]:,} users x {matrix.shape[1]:,} films"}


def _train(shape: Shape, args: argparse.Namespace, orientation: str) -> dict[str, object]:
    from recae.artifacts.model_files import save_model
    from recae.artifacts.train_config import default_configs
    from recae.artifacts.trained_model import TrainedModel
    from recae.evaluation.splits import holdout_validation
    from recae.store.matrix import RatingMatrix
    from recae.training.train import fit

    engine = _open(shape)
    matrix = RatingMatrix.from_db(engine)
    model_cfg, train_cfg = default_configs()
    model_cfg = replace(model_cfg, orientation=orientation)
    train_cfg = replace(train_cfg, ensemble=1, weight_decay_grid=(), epochs=args.epochs, threads=args.threads)
    fit_part, val_part = holdout_validation(matrix, train_cfg.val_fraction, train_cfg.seed)

    def on_epoch(report) -> None:  # type: ignore[no-untyped-def]
        _say(f"{orientation} epoch {report.epoch}: train MSE {report.train_loss:.4f}, validation RMSE "
             f"{report.val_rmse:.4f}, {report.seconds:.1f} s since start")

    started = time.perf_counter()
    result = fit(fit_part, val_part, model_cfg, train_cfg, on_epoch=on_epoch)
    seconds = time.perf_counter() - started
    marks = [0.0] + [h.seconds for h in result.history]
    per_epoch = [b - a for a, b in zip(marks, marks[1:])]  # the first includes setup (CSR transpose, model init)
    if orientation == "item":
        folder = shape.model_dir(orientation)
        shutil.rmtree(folder, ignore_errors=True)
        save_model(TrainedModel.from_fit(result.module, matrix), folder, version=BENCH_VERSION)
    epoch = min(per_epoch[1:]) if len(per_epoch) > 1 else per_epoch[0]
    batch = train_cfg.resolved(fit_part.nnz).batch_ratings
    return {"seconds": epoch, "items": fit_part.nnz, "unit": "ratings",
            "note": f"{model_cfg.name} {list(model_cfg.hidden)}: {len(per_epoch)} epoch(s) "
                    f"{', '.join(f'{s:.0f}' for s in per_epoch)} s; val RMSE "
                    f"{result.history[-1].val_rmse:.3f}; batch {batch:,} ratings",
            "fit_seconds": seconds, "epoch_seconds": per_epoch}


def stage_train_item(shape: Shape, args: argparse.Namespace) -> dict[str, object]:
    return _train(shape, args, "item")


def stage_train_user(shape: Shape, args: argparse.Namespace) -> dict[str, object]:
    return _train(shape, args, "user")


def stage_precompute(shape: Shape, args: argparse.Namespace) -> dict[str, object]:
    import numpy as np
    import torch
    from sqlalchemy import delete, func, insert, select

    from recae.artifacts.model_files import load_model
    from recae.serving.recommend import precompute_batch_users, precompute_recommendations
    from recae.serving.registry import promote
    from recae.store.db import Champion, ModelVersion, Recommendation, utcnow
    from recae.store.matrix import RatingMatrix

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = shape.model_dir("item")
    if not folder.exists():
        raise SystemExit(f"no trained model at {folder}: run the train-item stage first")
    engine = _open(shape)
    matrix = RatingMatrix.from_db(engine)
    trained = load_model(folder)
    if not (np.array_equal(trained.index.user_ids, matrix.index.user_ids)
            and np.array_equal(trained.index.movie_ids, matrix.index.movie_ids)):
        raise SystemExit("the saved model does not match the store: re-run the train-item stage")
    with engine.begin() as conn:  # a model_versions row for the foreign key, as publish() writes it
        conn.execute(delete(Champion))
        conn.execute(delete(Recommendation).where(Recommendation.version == BENCH_VERSION))
        conn.execute(delete(ModelVersion).where(ModelVersion.version == BENCH_VERSION))
        conn.execute(insert(ModelVersion), [{
            "version": BENCH_VERSION, "model": trained.model_config.name, "orientation": "item", "split": "bench",
            "seed": 0, "path": str(folder), "data_fingerprint": "-", "metrics": "{}", "config": "{}",
            "created_at": utcnow()}])
    started = time.perf_counter()
    trained.score_rows(np.array([0]))  # encodes every film once (cached); the real pipeline did so in test metrics
    encode = time.perf_counter() - started
    users = matrix.shape[0]
    done = {"users": 0, "next": 0.1}

    def on_batch(n: int) -> None:
        done["users"] += n
        if done["users"] >= done["next"] * users:
            _say(f"precompute: {done['users']:,} of {users:,} users, {time.perf_counter() - started:.0f} s")
            done["next"] += 0.1

    started = time.perf_counter()
    written = promote(engine, BENCH_VERSION, lambda conn, version: precompute_recommendations(
        conn, version, trained, matrix, n=args.top, on_batch=on_batch))
    seconds = time.perf_counter() - started
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(Recommendation)
                              .where(Recommendation.version == BENCH_VERSION)).scalar_one()
        champion = conn.execute(select(Champion.version)).scalar()
    assert stored == written and champion == BENCH_VERSION, (stored, written, champion)
    return {"seconds": seconds, "items": users, "unit": "users",
            "note": f"{trained.model_config.name} {list(trained.model_config.hidden)}, top-{args.top}: "
                    f"{written:,} rows, {written / seconds:,.0f} rows/s; batches of "
                    f"{precompute_batch_users(matrix.shape[1])} users; film encoding {encode:.1f} s before"}


CHILD_STAGES = {"ingest": stage_ingest, "matrix": stage_matrix, "train-item": stage_train_item,
                "train-user": stage_train_user, "precompute": stage_precompute}


# --------------------------------------------------------------------------------------------------- parent


@dataclass(frozen=True)
class Measured:
    """One stage's figures: ``seconds`` is the timed core (e.g. one epoch), ``wall`` the whole child process."""

    stage: str
    seconds: float
    items: int
    unit: str
    wall: float
    cpu: float
    peak_gb: float
    load_before: float
    load_after: float
    note: str


def run_child(cmd: list[str]) -> tuple[str, float, float, float]:
    """Run ``cmd``; returns (stdout, wall seconds, CPU seconds, peak RSS in GB of 10^9 bytes, as the targets are
    stated; it printed GiB under a GB label before 2026-12-06) of that process alone."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed with exit code {proc.returncode}")
    return out, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024 / 1e9  # Linux: KiB; GB = 10^9 bytes


def measure(stage: str, shape: Shape, args: argparse.Namespace) -> Measured:
    load_before = os.getloadavg()[0]
    if stage == "synth":
        shape.work.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "recae", "synth", "--users", str(shape.users), "--movies", str(shape.movies),
               "--ratings", str(shape.ratings), "--seed", str(shape.seed), "--out", str(shape.csv),
               "--format", "json"]
        out, wall, cpu, peak = run_child(cmd)
        summary = json.loads(out)
        figures = {"seconds": wall, "items": shape.ratings, "unit": "ratings",
                   "note": f"{summary['users']:,} users, {summary['movies_rated']:,} films rated, "
                           f"{shape.csv.stat().st_size / 2**20:,.0f} MiB CSV"}
    elif stage == "cli":  # the real `recae train`: 1 epoch, ensemble 1, one weight decay, top-100 precompute
        if not shape.db.exists():
            raise SystemExit(f"no store at {shape.db}: run the ingest stage first (--stages ingest)")
        config = shape.home / "bench-train.toml"
        threads = f"threads = {args.threads}\n" if args.threads else ""
        config.write_text(f"[train]\nepochs = {args.epochs}\nensemble = 1\nweight_decay = 100.0\n{threads}")
        settings = [] if args.cli_defaults else ["--config", str(config)]
        cmd = [sys.executable, "-m", "recae", "-v", "--home", str(shape.home), "train", *settings, "--format", "json"]
        out, wall, cpu, peak = run_child(cmd)
        summary = json.loads(out)
        what = "the shipped defaults" if args.cli_defaults else f"{args.epochs} epoch(s), ensemble 1"
        figures = {"seconds": wall, "items": shape.ratings, "unit": "ratings",
                   "note": f"`recae train` ({what}; split, ranker, test metrics, publish, top-100): fit "
                           f"{summary['seconds']:.0f} s, test RMSE {summary['test_rmse']:.3f}, NDCG@10 "
                           f"{summary.get('test_ndcg@10') or float('nan'):.4f}, {_hidden(shape)}"}
    elif stage == "nightly":
        fresh = _drop_fresh_ratings(shape, args.fresh, args.fresh_seed)
        cmd = [sys.executable, "-m", "recae", "-v", "--home", str(shape.home), "retrain", "--margin", "0",
               "--ndcg-margin", "1"]
        out, wall, cpu, peak = run_child(cmd)
        report = json.loads(out)
        figures = {"seconds": wall, "items": fresh, "unit": "fresh ratings",
                   "note": f"`recae retrain` (margins 0 RMSE, 1 NDCG): {report.get('decision')}, "
                           f"{json.dumps(report.get('metrics', {}).get('warm_start'))} warm start"}
    elif stage == "recommend":
        walls = []
        for _ in range(5):
            _, one, cpu, peak = run_child([sys.executable, "-m", "recae", "--home", str(shape.home), "recommend",
                                           "--user", "42", "--format", "json"])
            walls.append(one)
        wall = sorted(walls)[2]
        figures = {"seconds": wall, "items": 1, "unit": "lists",
                   "note": f"`recae recommend --user 42`: median {wall:.3f} s, worst {max(walls):.3f} s of 5"}
    else:
        cmd = [sys.executable, __file__, "--child", stage, "--work", str(shape.work), "--ratings",
               str(shape.ratings), "--users", str(shape.users), "--movies", str(shape.movies), "--seed",
               str(shape.seed), "--top", str(args.top), "--epochs", str(args.epochs), "--threads", str(args.threads)]
        out, wall, cpu, peak = run_child(cmd)
        figures = json.loads(out.strip().splitlines()[-1])
    return Measured(stage=stage, seconds=float(figures["seconds"]), items=int(figures["items"]),
                    unit=str(figures["unit"]), wall=wall, cpu=cpu, peak_gb=peak, load_before=load_before,
                    load_after=os.getloadavg()[0], note=str(figures.get("note", "")))


def _drop_fresh_ratings(shape: Shape, share: float, seed: int) -> int:
    """Write ``share`` x the ratings as new ratings of random known users and films into the home's inbox (a new
    ``seed`` for each night: a file ingested before changes nothing)."""
    import numpy as np

    count = max(1, round(shape.ratings * share))
    rng = np.random.default_rng(seed)
    users = rng.integers(1, shape.users + 1, count)
    movies = rng.integers(1, shape.movies + 1, count)
    ratings = rng.integers(1, 11, count) / 2.0  # 0.5 .. 5 in half stars
    inbox = shape.home / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    with open(inbox / f"fresh-{count}-seed{seed}.csv", "w", encoding="utf-8") as out:
        out.write("user_id,movie_id,rating,timestamp\n")
        stamp = int(time.time())
        out.writelines(f"{u},{m},{r:g},{stamp}\n" for u, m, r in zip(users, movies, ratings, strict=True))
    return count


def _hidden(shape: Shape) -> str:
    """Width of the newest published model in the store (the cli stage's), from its meta.json."""
    metas = sorted((shape.home / "models").glob("*/meta.json"))
    if not metas:
        return "no model"
    meta = json.loads(metas[-1].read_text(encoding="utf-8"))
    return f"{meta['model']} {meta['model_config']['hidden']} ({(meta['train_config'] or {}).get('ensemble')} members)"


def print_table(shape: Shape, results: list[Measured]) -> None:
    print(f"\nSynthetic set: {shape.ratings:,} ratings, {shape.users:,} users, {shape.movies:,} films "
          f"(seed {shape.seed}); {os.cpu_count()} CPUs; work folder {shape.work}")
    header = f"{'stage':<11}{'seconds':>9}{'throughput':>22}{'wall s':>8}{'CPU s':>8}{'peak GB':>9}{'load':>11}  note"
    print(header)
    print("-" * len(header))
    for r in results:
        rate = f"{r.items / r.seconds:,.0f} {r.unit}/s" if r.seconds > 0 else "-"
        print(f"{r.stage:<11}{r.seconds:>9.1f}{rate:>22}{r.wall:>8.1f}{r.cpu:>8.1f}{r.peak_gb:>9.2f}"
              f"{r.load_before:>5.1f}->{r.load_after:<4.1f}  {r.note}")
    if results:
        worst = max(results, key=lambda r: r.peak_gb)
        verdict = "met" if worst.peak_gb <= TARGET_PEAK_GB else "MISSED"
        print(f"overall peak: {worst.peak_gb:.2f} GB in {worst.stage} (target <= {TARGET_PEAK_GB:g} GB: {verdict})")
    print(json.dumps({"shape": {"ratings": shape.ratings, "users": shape.users, "movies": shape.movies},
                      "stages": [r.__dict__ for r in results]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=ML25M_ROWS, help="ratings to generate (default ML-25M's)")
    parser.add_argument("--users", type=int, default=0,
                        help="users (default: ML-25M's 162,541 scaled by --ratings / 25,000,095)")
    parser.add_argument("--movies", type=int, default=ML25M_RATED_MOVIES, help="films (default ML-25M's 59,047)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "recae-bench-scale",
                        help="folder for the CSV, store and model; reused between runs")
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                        help=f"comma-separated stages among {', '.join(STAGES)} (default: all but cli); "
                             "synth is skipped when its CSV exists")
    parser.add_argument("--top", type=int, default=10, help="films precomputed per user (serving stores 100)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each training stage (>= 2: the fastest "
                                                              "later epoch is reported, without setup)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, all cores)")
    parser.add_argument("--cli-defaults", action="store_true",
                        help="cli stage: `recae train` with the shipped defaults (no settings at all)")
    parser.add_argument("--fresh", type=float, default=0.01, help="nightly stage: new ratings as a share of --ratings")
    parser.add_argument("--fresh-seed", type=int, default=1, help="nightly stage: seed of the new ratings (a new one "
                                                                     "each night)")
    parser.add_argument("--child", choices=sorted(CHILD_STAGES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    users = args.users or max(1, round(ML25M_USERS * args.ratings / ML25M_ROWS))
    shape = Shape(ratings=args.ratings, users=users, movies=args.movies, seed=args.seed, work=args.work)
    if args.child:
        import logging

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        print(json.dumps(CHILD_STAGES[args.child](shape, args)))
        return
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage {unknown[0]!r}; choose among {', '.join(STAGES)}")
    results = []
    for stage in [s for s in STAGES if s in stages]:
        if stage == "synth" and shape.csv.exists():
            print(f"synth: reusing {shape.csv}", file=sys.stderr)
            continue
        print(f"{stage} ...", file=sys.stderr, flush=True)
        result = measure(stage, shape, args)
        print(f"{stage}: {result.seconds:.1f} s, peak {result.peak_gb:.2f} GB, {result.note}", file=sys.stderr,
              flush=True)
        results.append(result)
    print_table(shape, results)


if __name__ == "__main__":
    main()
