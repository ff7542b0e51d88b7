"""Benchmark: wall time of `recae recommend` as a user runs it (a fresh process each time).

    python tests/benchmarks/bench_recommend.py                        # trains a home from ../shared/data first
    python tests/benchmarks/bench_recommend.py --home /tmp/qs --repeat 5

Targets on the 2-core dev machine: `recommend --user 42` <= 0.5 s (precomputed, no torch import);
fold-in of a new user (`--rate ...`) <= 3 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


def wall(args: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "recae", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("/tmp/recae-bench-recommend"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    home = ["--home", str(args.home)]
    if not (args.home / "models").exists():
        print(f"training a model in {args.home} with quickstart ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "recae", *home, "quickstart", "--path", str(ML100K)], check=True,
                       capture_output=True)
    cases = {
        "recommend --user 42": [*home, "recommend", "--user", "42"],
        "recommend --user 42 --genre Comedy --min-year 1990": [*home, "recommend", "--user", "42", "--genre",
                                                               "Comedy", "--min-year", "1990"],
        "recommend --rate 50=5 --rate 172=4 --rate 133=1 (fold-in)": [*home, "recommend", "--rate", "50=5",
                                                                      "--rate", "172=4", "--rate", "133=1"],
    }
    for name, argv in cases.items():
        times = wall(argv, args.repeat)
        print(f"{name}: median {statistics.median(times):.3f} s, best {min(times):.3f} s over {len(times)} runs")


if __name__ == "__main__":
    main()
