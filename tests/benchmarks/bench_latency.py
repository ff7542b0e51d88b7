"""Benchmark: how long the everyday commands take as a user runs them, each in a fresh process.

    python tests/benchmarks/bench_latency.py                  # quickstart ml-100k into a temporary RECAE_HOME first
    python tests/benchmarks/bench_latency.py --home /tmp/qs   # a home that already has a published model
    python tests/benchmarks/bench_latency.py --only help,recommend --repeat 5

Each command runs once untimed (the page cache warm, as for a user who has run recae before), then ``--repeat``
times, each a new ``recae`` process (the installed console script, else ``python -m recae``); the median and the
worst wall time are printed. Targets (issue 25, 2 cores): ``recae --help`` <= 0.15 s and ``recae recommend
--user 42`` (a SQLite store's precomputed list) <= 0.15 s, median of 5.

Adding a figure (fold-in, the serve worker's RSS and percentiles, ...): write a function ``(home, repeat) ->
list[Figure]`` and register it with ``@bench("name")``; ``--only name`` then runs it alone. ``command_wall``
times a command line; a figure that is not a wall time fills ``Figure`` its own way (``unit``, ``values``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


@dataclass(frozen=True)
class Figure:
    """One measured thing: its name (the command as typed), its values, their unit."""

    name: str
    values: list[float]
    unit: str = "s"

    def line(self) -> str:
        median, worst = statistics.median(self.values), max(self.values)
        return f"{self.name}: median {median:.3f} {self.unit}, worst {worst:.3f} {self.unit} over {len(self.values)} runs"


Bench = Callable[[Path, int], list[Figure]]
#: The benchmarks, in the order they run; ``@bench`` adds one.
BENCHES: dict[str, Bench] = {}


def bench(name: str) -> Callable[[Bench], Bench]:
    """Register a benchmark function under ``name`` (what ``--only`` selects)."""

    def register(function: Bench) -> Bench:
        BENCHES[name] = function
        return function

    return register


def recae_command() -> list[str]:
    """The ``recae`` a user runs: the console script beside this interpreter, else ``python -m recae``."""
    script = Path(sys.executable).with_name("recae")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "recae"]


def command_wall(home: Path, args: list[str], repeat: int) -> Figure:
    """Wall seconds of ``recae ARGS`` (RECAE_HOME=home), a fresh process per run, after one untimed run."""
    env = {**os.environ, "RECAE_HOME": str(home)}
    argv = [*recae_command(), *args]
    subprocess.run(argv, env=env, check=True, capture_output=True)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return Figure(" ".join(["recae", *args]), times)


@bench("help")
def bench_help(home: Path, repeat: int) -> list[Figure]:
    """``recae --help``: the group lists its commands without importing one."""
    return [command_wall(home, ["--help"], repeat)]


@bench("recommend")
def bench_recommend(home: Path, repeat: int) -> list[Figure]:
    """``recae recommend --user 42``: the champion's precomputed list, read with sqlite3 alone."""
    return [command_wall(home, ["recommend", "--user", "42"], repeat)]


def quickstart_home(data: Path) -> Path:
    """A temporary RECAE_HOME with ml-100k ingested and the default model published (``recae quickstart``)."""
    home = Path(tempfile.mkdtemp(prefix="recae-bench-latency-"))
    print(f"recae quickstart --path {data} into {home} ...", file=sys.stderr)
    subprocess.run([*recae_command(), "quickstart", "--path", str(data)], env={**os.environ, "RECAE_HOME": str(home)},
                   check=True, capture_output=True)
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="a home with a published model (default: quickstart a new one)")
    parser.add_argument("--data", type=Path, default=ML100K, help="ml-100k folder or zip for the quickstart")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per command")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated, of: {', '.join(BENCHES)}")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHES)}")
    home = args.home or quickstart_home(args.data)
    try:
        for name in chosen:
            for figure in BENCHES[name](home, args.repeat):
                print(figure.line(), flush=True)
    finally:
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
