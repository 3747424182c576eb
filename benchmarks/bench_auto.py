"""backend="auto" against serial and against the best single backend, in one run.

Targets (auto issue), 2 cores, warm backends:

- trivial fn, 100,000 items: auto within 1.15x of serial;
- 300 items of ~1 µs (a cheap DEAP generation): auto within 1.15x of serial;
- ~10 ms x 200 items: auto within 1.1x of the best single backend's time;
- the harness's cost x count grid (`parmap bench`'s quick grid with --quick, its full
  grid otherwise): auto never more than 1.25x slower than the best choice
  (serial map or any backend) at any point; the worst point is reported.

"Serial" is plain ``list(map(fn, items))``; the parmap serial backend is shown
beside it. The machine is calibrated first (``parmap bench --calibrate``, into a
temporary file unless ``--calibration PATH`` is given), and every parallel
backend is started before timing, so auto sees them warm, as in a long run.
Choices are timed in shuffled turns, each timed call right after an untimed one
of the same kind: the steady state of a loop of calls (a DEAP run), rather than
the state another engine's call just left the process in (on short cells that
alone adds 20-40 µs to whichever call comes next).

    python benchmarks/bench_auto.py [--quick] [--backends multiprocessing,loky]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Checks, fmt_seconds, header, interleaved, median, paired_ratio

import parmap
from parmap.bench import workloads
from parmap.bench._cli import FULL, QUICK

GRID_BUDGET = 1.5  # seconds of serial work per grid cell at most


def square(x: int) -> int:
    return x * x


def runner(fn: Callable[[Any], Any], items: list[Any], backend: str) -> Callable[[], Any]:
    if backend == "map":
        return lambda: list(map(fn, items))
    return lambda: parmap.parmap(fn, items, backend=backend)


def compare(
    fn: Callable[[Any], Any], items: list[Any], names: list[str], repeats: int
) -> dict[str, list[float]]:
    return interleaved({name: runner(fn, items, name) for name in names}, repeats, primed=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and grid points")
    parser.add_argument("--backends", help="parallel backends (default: installed local ones)")
    parser.add_argument("--calibration", type=Path, help="use (or write) this calibration file")
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    local = [b for b in ("multiprocessing", "loky") if b in parmap.available_backends()]
    backends = args.backends.split(",") if args.backends else local
    header(f"backend='auto' vs serial and vs {', '.join(backends)}")

    path = args.calibration or Path(tempfile.mkdtemp(prefix="parmap-auto-")) / "calibration.json"
    os.environ["PARMAP_CALIBRATION"] = str(path)
    if not path.exists():
        from parmap.bench._calibrate import calibrate

        print(f"  calibrating into {path} ...", flush=True)
        calibrate(path, backends=backends, progress=False)
    for name in backends:  # warm: auto sees them running
        parmap.parmap(abs, range(8), backend=name)
    per_us = workloads.calibrate()
    checks = Checks()

    trivial = list(range(100_000))
    t = compare(square, trivial, ["map", "serial", "auto"], repeats * 3)  # 13 ms calls: noisy
    print(f"  trivial x 100,000: map {fmt_seconds(median(t['map']))}, serial backend "
          f"{fmt_seconds(median(t['serial']))}, auto {fmt_seconds(median(t['auto']))}")  # fmt: skip
    checks.at_most("auto / serial map, trivial x 100,000", paired_ratio(t["auto"], t["map"]), 1.15)
    checks.at_most(
        "auto / serial backend, trivial x 100,000", paired_ratio(t["auto"], t["serial"]), 1.15
    )

    cheap = workloads.CpuFitness.for_cost(1.0, per_us)
    items = workloads.seeds(300)
    t = compare(cheap, items, ["map", "serial", "auto"], repeats * 20)
    print(f"  1 µs x 300: map {fmt_seconds(median(t['map']))}, serial backend "
          f"{fmt_seconds(median(t['serial']))}, auto {fmt_seconds(median(t['auto']))}")  # fmt: skip
    checks.at_most("auto / serial map, 1 µs x 300", paired_ratio(t["auto"], t["map"]), 1.15)

    heavy = workloads.CpuFitness.for_cost(10_000.0, per_us)
    items = workloads.seeds(200)
    t = compare(heavy, items, [*backends, "auto"], max(7, repeats))
    best = min(backends, key=lambda b: median(t[b]))
    print("  10 ms x 200: " + ", ".join(f"{n} {fmt_seconds(median(v))}" for n, v in t.items()))
    checks.at_most(
        f"auto / best backend ({best}), 10 ms x 200", paired_ratio(t["auto"], t[best]), 1.1
    )

    worst = grid(per_us, backends, repeats, args.quick)
    checks.at_most(f"auto / best choice, worst grid point ({worst[1]})", worst[0], 1.25)
    parmap.shutdown()
    return checks.summary()


def grid(per_us: float, backends: list[str], repeats: int, quick: bool) -> tuple[float, str]:
    """Time every choice and auto on each point of the harness's grid (``parmap bench``'s,
    quick or full); return the worst auto/best ratio."""
    costs, counts = (QUICK if quick else FULL)["costs_us"], (QUICK if quick else FULL)["counts"]
    print(f"\n  grid: auto time / best choice's time (choices: map, {', '.join(backends)})")
    print("  " + "cost \\ items".ljust(14) + "".join(f"{n:>10,}" for n in counts))
    worst = (0.0, "")
    for cost in costs:
        fn = workloads.CpuFitness.for_cost(cost, per_us)
        cells = []
        for n in counts:
            if n * cost * 1e-6 > GRID_BUDGET:
                cells.append(f"{'-':>10}")
                continue
            rounds = max(repeats, 7, min(100, int(0.15 / (n * cost * 1e-6))))  # steadier cells
            t = compare(fn, workloads.seeds(n), ["map", *backends, "auto"], rounds)
            best = min((name for name in t if name != "auto"), key=lambda b: median(t[b]))
            ratio = paired_ratio(t["auto"], t[best])
            cells.append(f"{ratio:>9.2f}{'*' if best != 'map' else ' '}")
            if ratio > worst[0]:
                worst = (ratio, f"{fmt_seconds(cost * 1e-6)} x {n:,}, best {best}")
        print("  " + fmt_seconds(cost * 1e-6).ljust(14) + "".join(cells))
    print("  (* = a parallel backend was the best choice; '-' = over the time budget)")
    return worst


if __name__ == "__main__":
    sys.exit(main())
