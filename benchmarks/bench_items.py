"""What the per-item policy costs: item_timeout= and return_exceptions= on and off, side by side.

Target (per-item policy issue): with ``item_timeout`` set, cheap items are still
batched, and the guard costs at most 1.2x on a workload of 100 µs items, on every
backend that can stop an item. Each backend's calls with and without the guard
are timed in shuffled turns, warm, and the median of the round-by-round ratios is
reported (load from other work slows both sides alike).

Also shown (no target): ``return_exceptions=True`` alone, whose worker loop runs
item by item instead of through ``map``.

    python benchmarks/bench_items.py [--quick] [--backends loky,ray] [--items 5000]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Checks, fmt_seconds, header, interleaved, median, paired_ratio

import parmap
from parmap.bench import workloads

STOPPING = ("multiprocessing", "loky", "ray", "dask")
LIMIT = 30.0  # seconds: never reached by a 100 µs item, so only the guard's cost shows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--backends", help="comma-separated (default: the installed ones)")
    parser.add_argument("--items", type=int, default=5_000, help="items per call")
    args = parser.parse_args()
    names = args.backends.split(",") if args.backends else [
        b for b in STOPPING if b in parmap.available_backends()
    ]  # fmt: skip
    rounds = 5 if args.quick else 11
    header(f"item_timeout / return_exceptions overhead, {args.items:,} items of 100 µs")
    fitness = workloads.CpuFitness.for_cost(100.0, workloads.calibrate())
    items = workloads.seeds(args.items)
    expected = list(map(fitness, items))
    checks = Checks()
    for name in names:

        def call(name: str = name, **options: object) -> object:
            return lambda: parmap.parmap(fitness, items, backend=name, **options)

        for options in ({}, {"item_timeout": LIMIT}, {"return_exceptions": True}):
            if call(**options)() != expected:  # warm: workers up, per-item cost learned
                raise SystemExit(f"{name} returned wrong results: the benchmark is void")
        times = interleaved(
            {
                "plain": call(),
                "item_timeout": call(item_timeout=LIMIT),
                "return_exceptions": call(return_exceptions=True),
            },
            rounds,
        )
        shown = ", ".join(f"{k} {fmt_seconds(median(v))}" for k, v in times.items())
        print(f"\n{name}: {shown}")
        guard = paired_ratio(times["item_timeout"], times["plain"])
        checks.at_most(f"{name}: item_timeout={LIMIT:g} / plain", guard, 1.2)
        kept = paired_ratio(times["return_exceptions"], times["plain"])
        print(f"  return_exceptions=True / plain: {kept:.3f}")
        parmap.shutdown(name)
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
