"""Threads and the caller's own executor, measured side by side in one run (issue 22).

On the usable CPUs (2 on the reference machine), warm backends:

- GIL-free work, 48 x sha256 of 4 MiB (distinct buffers): ``backend="threads"``
  at most 0.6x the serial time (beside it the process backends, which pickle
  each 4 MiB item to a worker, and two plain threads of a ThreadPoolExecutor:
  what threads get on the machine at that moment);
- 100,000 trivial items through a user's ``ProcessPoolExecutor`` passed as
  ``backend=``: within 10x of serial (beside it, ``executor.map`` with one
  future per item, timed on 2,000 items and scaled, marked as such);
- ``backend="auto"`` within 1.15x of the best choice (serial ``map`` or any local
  backend) on that GIL-free workload and on a GIL-bound one (~10 ms of pure
  Python x 200 items), after calibrating this machine (into a temporary file
  unless ``--calibration PATH`` is given). auto's first call of each function
  (which measures how it scales on threads) is an untimed warm-up, as in a
  DEAP run's later generations.

Every comparison times its sides in turns (shuffled each round, each timed call
right after an untimed one of the same kind) and reports the median of the
round-by-round ratios. Beside the GIL-bound ratios, the same items in equal
shares on plain forked processes show the machine's ceiling at that moment.

    python benchmarks/bench_threads.py [--quick] [--calibration PATH]

Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    Ceiling,
    Checks,
    fmt_seconds,
    header,
    interleaved,
    median,
    paired_ratio,
    spin_loops,
    spinning,
)

import parmap

LOCAL = ("threads", "multiprocessing", "loky")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def square(x: int) -> int:
    return x * x


def runner(fn: Callable[[Any], Any], items: list[Any], backend: Any) -> Callable[[], Any]:
    if backend == "map":
        return lambda: list(map(fn, items))
    return lambda: parmap.parmap(fn, items, backend=backend)


def compare(
    fn: Callable[[Any], Any], items: list[Any], choices: dict[str, Any], repeats: int
) -> dict[str, list[float]]:
    calls = {name: runner(fn, items, backend) for name, backend in choices.items()}
    return interleaved(calls, repeats, primed=True)


def line(title: str, times: dict[str, list[float]]) -> None:
    print(f"  {title}: " + ", ".join(f"{n} {fmt_seconds(median(t))}" for n, t in times.items()))


def auto_says(fn: Callable[[Any], Any], items: list[Any]) -> str:
    """What auto chooses now for these items, and how it found the function scales on
    threads (from its remembered costs: nothing runs)."""
    decision = parmap.explain(fn, items)
    return f"chooses {decision.chosen}; on threads: {decision.on_threads or 'not considered'}"


def gil_free(checks: Checks, repeats: int) -> None:
    items = [os.urandom(4 << 20) for _ in range(48)]
    choices = {"map": "map", **{name: name for name in LOCAL}, "auto": "auto"}
    calls = {name: runner(sha256, items, backend) for name, backend in choices.items()}
    with cf.ThreadPoolExecutor(2) as peer:  # what two plain threads get right now
        calls["2 plain threads"] = lambda: list(peer.map(sha256, items))
        t = interleaved(calls, repeats, primed=True)
    line("48 x sha256 of 4 MiB", t)
    for name in ("multiprocessing", "loky", "2 plain threads"):
        print(f"    {name} / serial: {paired_ratio(t[name], t['map']):.2f}")
    checks.at_most("threads / serial, 48 x sha256 of 4 MiB", paired_ratio(t["threads"], t["map"]),
                   0.6)  # fmt: skip
    best = min((n for n in choices if n != "auto"), key=lambda n: median(t[n]))
    ratio = paired_ratio(t["auto"], t[best])
    print(f"    auto: {auto_says(sha256, items)}")
    checks.at_most(f"auto / best choice ({best}), GIL-free 48 x sha256 of 4 MiB", ratio, 1.15)


def gil_bound(checks: Checks, repeats: int, ceiling: Ceiling) -> None:
    work = spinning(spin_loops(0.01))
    items = list(range(200))
    choices = {"map": "map", **{name: name for name in LOCAL}, "auto": "auto"}
    calls = {name: runner(work, items, backend) for name, backend in choices.items()}
    calls["ceiling"] = ceiling.split(work, items)
    t = interleaved(calls, repeats, primed=True)
    line("GIL-bound ~10 ms x 200", t)
    print(f"    machine's ceiling now: {paired_ratio(t['ceiling'], t['map']):.2f} x serial")
    best = min((n for n in t if n not in ("auto", "ceiling")), key=lambda n: median(t[n]))
    ratio = paired_ratio(t["auto"], t[best])
    print(f"    auto: {auto_says(work, items)}")
    checks.at_most(f"auto / best choice ({best}), GIL-bound ~10 ms x 200", ratio, 1.15)


def user_executor(checks: Checks, repeats: int) -> None:
    items = list(range(100_000))
    context = multiprocessing.get_context("forkserver")
    with cf.ProcessPoolExecutor(2, mp_context=context) as executor:
        t = compare(square, items, {"map": "map", "executor": executor}, repeats * 2)
        line("trivial x 100,000", {"map": t["map"], "parmap on the executor": t["executor"]})
        few = items[:2000]
        per_future = interleaved({"map": lambda: list(executor.map(square, few))}, 3)["map"]
        scaled = median(per_future) * len(items) / len(few)
        print(f"    one future per item (executor.map, 2,000 items, scaled): "
              f"{fmt_seconds(scaled)} = {scaled / median(t['map']):.0f}x serial")  # fmt: skip
        ratio = paired_ratio(t["executor"], t["map"])
        checks.at_most("your ProcessPoolExecutor / serial, trivial x 100,000", ratio, 10.0)


def calibrated(path: Path | None) -> None:
    path = path or Path(tempfile.mkdtemp(prefix="parmap-threads-")) / "calibration.json"
    os.environ["PARMAP_CALIBRATION"] = str(path)
    if not path.exists():
        from parmap.bench._calibrate import calibrate

        print(f"  calibrating {', '.join(LOCAL)} into {path} ...", flush=True)
        calibrate(path, backends=list(LOCAL), progress=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--calibration", type=Path, help="use (or write) this calibration file")
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    header("threads, the caller's executor, and auto between threads and processes")
    ceiling = Ceiling()  # forked before any backend starts a thread
    try:
        calibrated(args.calibration)
        for name in LOCAL:  # warm: auto sees them running, as in a long run
            parmap.parmap(abs, range(8), backend=name)
        checks = Checks()
        gil_free(checks, repeats)
        gil_bound(checks, repeats, ceiling)
        user_executor(checks, repeats)
    finally:
        ceiling.close()
        parmap.shutdown()
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
