"""`python -m bench [--quick] [--runs N] [NAME ...]`: run the benchmarks and print figures.

Each figure is the median of N runs (at least 5) and is set against a floor
measured in the same run. Exits 1 when a target is missed, so a regression shows.
"""

import argparse
import importlib
import sys
import time

from bench.common import machine_description

BENCHMARKS = {
    "startup": "bench.startup",
    "fresh": "bench.fresh",
    "rebuild": "bench.rebuild",
    "backup": "bench.backup",
    "adoption": "bench.adoption",
    "container": "bench.container",
    "plan": "bench.plan",
    "locks": "bench.locks",
    "plan-postgres": "bench.plan_postgres",
    "lint": "bench.lint",
}
MIN_RUNS = 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--quick", action="store_true", help="small data sets: a smoke run")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per figure (default 5, 7 full)"
    )
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark {', '.join(sorted(unknown))}: use {', '.join(BENCHMARKS)}")
    if args.runs is not None and args.runs < MIN_RUNS:
        parser.error(f"--runs must be at least {MIN_RUNS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = args.runs or (MIN_RUNS if args.quick else 7)
    names = args.names or list(BENCHMARKS)
    print("\n".join(machine_description()))
    print(f"mode: {'quick' if args.quick else 'full'}, {runs} runs per figure (median)\n")
    all_met = True
    for name in names:
        started = time.perf_counter()
        report = importlib.import_module(BENCHMARKS[name]).run(args.quick, runs)
        print(report.render())
        print(f"  ({time.perf_counter() - started:.0f} s)\n", flush=True)
        all_met = all_met and all(verdict.met for verdict in report.verdicts)
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
