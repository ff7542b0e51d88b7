"""Benchmark: peak resident memory of training the default item network on a saved CSR, with the data held as
``recae train`` holds it (the split's training part and its blend carve) — where ``recae train``'s peak is at
ML-32M shape.

    python tests/benchmarks/bench_train_memory.py --npz x32.npz --epochs 2

Prints the resident memory with the data held, then after the epochs with the process's peak.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sparse_ease import as_matrix  # noqa: E402

from recae.artifacts.train_config import default_configs  # noqa: E402
from recae.evaluation.splits import random_split  # noqa: E402
from recae.training.ensemble import blend_carve  # noqa: E402
from recae.training.train import fit_cross_carved  # noqa: E402


def rss_gb() -> float:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1e6


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, required=True, help="a scipy.sparse .npz of ratings (users x films)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    split = random_split(as_matrix(sp.load_npz(args.npz).tocsr().astype(np.float32)), 0.1, 0)
    model_cfg, train_cfg = default_configs()
    train_cfg = replace(train_cfg, epochs=args.epochs).sized(split.train.nnz)
    fit_part, _blend_part = blend_carve(split.train, train_cfg)
    print(f"data held: RSS {rss_gb():.2f} GB, peak {peak_gb():.2f} GB", flush=True)
    started = time.perf_counter()
    fit_cross_carved(fit_part, model_cfg, train_cfg)
    print(f"after {args.epochs} epochs ({time.perf_counter() - started:.0f} s): RSS {rss_gb():.2f} GB, "
          f"peak {peak_gb():.2f} GB", flush=True)


if __name__ == "__main__":
    main()
