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
  (Pool.map, joblib and the serial backend are printed beside it);

and the ``serial`` backend within 1.3x of ``list(map(fn, items))`` on the
trivial workload.

Run from the repository root: ``python benchmarks/bench_core.py``
(``--quick`` for fewer repeats). Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Checks, fmt_seconds, header, median_time, ratio_line

import parmap
from parmap.backends._base import default_workers
from parmap.bench import workloads


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


class Baselines:
    """The baseline and serial times, measured once and shared by every backend's checks."""

    def __init__(self, repeats: int, workers: int) -> None:
        self.workers = workers
        self.trivial = list(range(100_000))
        self.small = list(range(300))
        self.expected = list(map(square, self.trivial))
        self.map = median_time(lambda: list(map(square, self.trivial)), repeats)
        serial = lambda: parmap.parmap(square, self.trivial, backend="serial")  # noqa: E731
        _same(serial(), self.expected, "serial backend")
        self.serial = median_time(serial, repeats)
        self.serial300 = median_time(
            lambda: parmap.parmap(square, self.small, backend="serial"), 30
        )
        with multiprocessing.Pool(workers) as pool:
            _same(pool.map(square, self.trivial), self.expected, "Pool.map")
            self.pool = median_time(lambda: pool.map(square, self.trivial), repeats)
            self.pool300 = median_time(lambda: pool.map(square, self.small), 30)
        _same(_joblib(square, self.trivial, workers), self.expected, "joblib")
        self.joblib = median_time(lambda: _joblib(square, self.trivial, workers), 3)
        self.joblib300 = median_time(lambda: _joblib(square, self.small, workers), 30)
        _stop_joblib()


def check_serial(checks: Checks, base: Baselines) -> None:
    print("\nserial backend, x*x x 100,000 items")
    print(ratio_line("serial backend / list(map)", base.serial, base.map))
    checks.at_most("serial backend / list(map), x*x x 100,000", base.serial / base.map, 1.3)


def check_backend(
    checks: Checks, backend: str, base: Baselines, cpu: dict[str, Any], repeats: int
) -> None:
    """The figures of one process backend, on a warm pool."""
    w = base.workers

    def run(fn: Callable[[Any], Any], items: list[Any]) -> Callable[[], list[Any]]:
        return lambda: parmap.parmap(fn, items, backend=backend, workers=w)

    print(f"\n{backend} ({w} workers, warm pool)")
    _same(run(square, base.trivial)(), base.expected, backend)  # starts the pool, learns cost
    trivial = median_time(run(square, base.trivial), repeats)
    print(ratio_line(f"{backend} / Pool.map, x*x x 100,000", trivial, base.pool))
    checks.at_most(f"{backend} / Pool.map, x*x x 100,000", trivial / base.pool, 1.2)
    print(ratio_line(f"joblib / {backend}, x*x x 100,000", base.joblib, trivial))
    checks.at_least(f"joblib loky / {backend}, x*x x 100,000", base.joblib / trivial, 20)
    for name, target in (("100us", 0.6), ("10ms", 0.53)):
        fn, items, serial, expected = cpu[name]
        _same(run(fn, items)(), expected, backend)
        seconds = median_time(run(fn, items), cpu["repeats"][name], warmup=0)
        label = f"{backend} / serial, {cpu['labels'][name]}"
        print(ratio_line(label, seconds, serial))
        checks.at_most(label, seconds / serial, target)
    per_call = median_time(run(square, base.small), 30)
    print(
        f"  one call, 300 trivial items (median of 30): {backend} {fmt_seconds(per_call)}; "
        f"Pool.map {fmt_seconds(base.pool300)}, joblib {fmt_seconds(base.joblib300)}, "
        f"serial backend {fmt_seconds(base.serial300)}"
    )
    checks.at_most(f"{backend} ms per call, 300 trivial items", per_call * 1e3, 2.5)
    parmap.shutdown(backend)


def cpu_workloads(repeats: int) -> dict[str, Any]:
    """The ~100 µs and ~10 ms pure-Python workloads and their serial times."""
    per_us = workloads.calibrate()
    cases = {"100us": (100.0, 5_000), "10ms": (10_000.0, 200)}
    out: dict[str, Any] = {"labels": {}, "repeats": {"100us": repeats, "10ms": 3}}
    for name, (cost_us, count) in cases.items():
        fn = workloads.CpuFitness.for_cost(cost_us, per_us)
        items = workloads.seeds(count)
        expected = list(map(fn, items))
        serial = median_time(lambda fn=fn, items=items: list(map(fn, items)), 3, warmup=0)
        out[name] = (fn, items, serial, expected)
        out["labels"][name] = f"{fmt_seconds(serial / count)} x {count:,} items"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument(
        "--backends", default="multiprocessing,loky", help="comma-separated process backends"
    )
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    workers = default_workers()
    header(f"parmap core figures ({workers} workers, median of {repeats} warm calls)")
    checks = Checks()
    base = Baselines(repeats, workers)
    print(
        f"\nbaselines: list(map) {fmt_seconds(base.map)}, Pool.map {fmt_seconds(base.pool)}, "
        f"joblib loky {fmt_seconds(base.joblib)} (x*x x 100,000)"
    )
    cpu = cpu_workloads(repeats)
    check_serial(checks, base)
    for backend in args.backends.split(","):
        check_backend(checks, backend.strip(), base, cpu, repeats)
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
