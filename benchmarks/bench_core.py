"""The core issue's performance figures, measured side by side in one run.

On the usable CPUs (2 on the reference machine), warm pools, for each process
backend (multiprocessing and loky):

- trivial ``x*x`` over 100,000 items vs ``multiprocessing.Pool.map`` with its
  default chunking: within 1.2x;
- the same vs ``joblib.Parallel(backend="loky")`` with auto batching: at least
  20x faster;
- ~100 µs of pure Python x 5,000 items: <= 0.6x the serial time;
- ~10 ms x 200 items: <= 0.53x the serial time;
- the time of one call over 300 trivial items, median of 30 calls: <= 2.5 ms
  (Pool.map, joblib and the serial backend are timed beside it);

and the ``serial`` backend within 1.3x of ``list(map(fn, items))`` on the
trivial workload.

Every comparison times its sides in turns (shuffled each round) and reports
the median of the round-by-round ratios, so load from other work on the
machine slows all sides alike. Beside the CPU-bound ratios, the same items in
equal shares on plain processes show the machine's ceiling at that moment.
The Pool and joblib's workers stay started (idle) while parmap's run.

Run from the repository root: ``python benchmarks/bench_core.py``
(``--quick`` for fewer repeats). Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Ceiling, Checks, fmt_seconds, header, interleaved, paired_ratio

import parmap
from parmap.backends._base import default_workers
from parmap.bench import workloads

TRIVIAL = list(range(100_000))
SMALL = list(range(300))


def square(x: int) -> int:
    return x * x


def _same(results: list[Any], expected: list[Any], what: str) -> None:
    if results != expected:
        raise SystemExit(f"{what} returned wrong results: the benchmark is void")


def _joblib(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    from joblib import Parallel, delayed

    return list(Parallel(n_jobs=workers, backend="loky")(delayed(fn)(x) for x in items))


def _stop_joblib() -> None:
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def _show(times: dict[str, list[float]]) -> str:
    return ", ".join(f"{name} {fmt_seconds(statistics.median(t))}" for name, t in times.items())


def check_serial(checks: Checks, repeats: int) -> None:
    print("\nserial backend vs list(map), x*x x 100,000 items")
    times = interleaved(
        {
            "list(map)": lambda: list(map(square, TRIVIAL)),
            "serial backend": lambda: parmap.parmap(square, TRIVIAL, backend="serial"),
        },
        repeats,
    )
    print("  medians:", _show(times))
    ratio = paired_ratio(times["serial backend"], times["list(map)"])
    checks.at_most("serial backend / list(map), x*x x 100,000", ratio, 1.3)


class Backend:
    """One process backend's figures, beside the baselines (both warm)."""

    def __init__(self, name: str, pool: Any, ceiling: Ceiling, workers: int, repeats: int) -> None:
        self.name = name
        self.pool = pool
        self.ceiling = ceiling
        self.workers = workers
        self.repeats = repeats

    def call(self, fn: Callable[[Any], Any], items: list[Any]) -> Callable[[], list[Any]]:
        return lambda: parmap.parmap(fn, items, backend=self.name, workers=self.workers)

    def check(self, checks: Checks, cpu: dict[str, Any]) -> None:
        print(f"\n{self.name} ({self.workers} workers, warm pool)")
        _same(self.call(square, TRIVIAL)(), list(map(square, TRIVIAL)), self.name)
        self.trivial(checks)
        for name, target in (("100us", 0.6), ("10ms", 0.53)):
            self.cpu_bound(checks, *cpu[name], target)
        self.per_call(checks)

    def trivial(self, checks: Checks) -> None:
        times = interleaved(
            {
                self.name: self.call(square, TRIVIAL),
                "Pool.map": lambda: self.pool.map(square, TRIVIAL),
            },
            self.repeats,
        )
        print("  x*x x 100,000:", _show(times))
        ratio = paired_ratio(times[self.name], times["Pool.map"])
        checks.at_most(f"{self.name} / Pool.map, x*x x 100,000", ratio, 1.2)
        times = interleaved(
            {
                self.name: self.call(square, TRIVIAL),
                "joblib": lambda: _joblib(square, TRIVIAL, self.workers),
            },
            max(3, self.repeats - 2),
        )
        print("  x*x x 100,000:", _show(times))
        ratio = paired_ratio(times["joblib"], times[self.name])
        checks.at_least(f"joblib loky / {self.name}, x*x x 100,000", ratio, 20)

    def cpu_bound(
        self, checks: Checks, fn: Any, items: list[Any], repeats: int, target: float
    ) -> None:
        _same(self.call(fn, items)(), list(map(fn, items)), self.name)
        times = interleaved(
            {
                "serial": lambda: list(map(fn, items)),
                self.name: self.call(fn, items),
                "plain processes": self.ceiling.split(fn, items),
            },
            repeats,
            warmup=0,
        )
        per_item = statistics.median(times["serial"]) / len(items)
        label = f"{self.name} / serial, {fmt_seconds(per_item)} x {len(items):,} items"
        ceiling = paired_ratio(times["plain processes"], times["serial"])
        print(f"  {fmt_seconds(per_item)} x {len(items):,}:", _show(times))
        print(f"  (the machine's ceiling now: equal shares on plain processes, {ceiling:.3f})")
        checks.at_most(label, paired_ratio(times[self.name], times["serial"]), target)

    def per_call(self, checks: Checks) -> None:
        times = interleaved(
            {
                self.name: self.call(square, SMALL),
                "Pool.map": lambda: self.pool.map(square, SMALL),
                "joblib": lambda: _joblib(square, SMALL, self.workers),
                "serial backend": lambda: parmap.parmap(square, SMALL, backend="serial"),
            },
            30,
        )
        print("  one call over 300 trivial items (median of 30):", _show(times))
        seconds = statistics.median(times[self.name])
        checks.at_most(f"{self.name} ms per call, 300 trivial items", seconds * 1e3, 2.5)


def cpu_workloads(quick: bool) -> dict[str, Any]:
    """The ~100 µs x 5,000 and ~10 ms x 200 pure-Python workloads (fn, items, repeats)."""
    per_us = workloads.calibrate()
    return {
        "100us": (workloads.CpuFitness.for_cost(100.0, per_us), workloads.seeds(5_000),
                  3 if quick else 5),
        "10ms": (workloads.CpuFitness.for_cost(10_000.0, per_us), workloads.seeds(200),
                 2 if quick else 3),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument(
        "--backends", default="multiprocessing,loky", help="comma-separated process backends"
    )
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    workers = default_workers()
    header(f"parmap core figures ({workers} workers, {repeats} interleaved rounds per ratio)")
    checks = Checks()
    cpu = cpu_workloads(args.quick)
    check_serial(checks, repeats)
    ceiling = Ceiling(workers)
    with multiprocessing.Pool(workers) as pool:
        pool.map(square, SMALL)  # started
        for name in args.backends.split(","):
            Backend(name.strip(), pool, ceiling, workers, repeats).check(checks, cpu)
            parmap.shutdown(name.strip())
    ceiling.close()
    _stop_joblib()
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
