"""Small helpers shared by the scripts in ``benchmarks/``.

Each script measures its figures side by side in one run and prints them with
``Checks`` (a ratio against a target, PASS/FAIL) so a reader sees at a glance
what was met. Timing is wall-clock (``time.perf_counter``); the median of a few
repeats is the figure, so one noisy run does not decide a verdict. To compare
two things, time them in turns (``interleaved``) and take the median of the
round-by-round ratios (``paired_ratio``): a burst of other load then slows both.

    from _common import Checks, header, interleaved, paired_ratio

    checks = Checks()
    times = interleaved({"serial": lambda: list(map(fn, items)),
                         "loky": lambda: parmap.parmap(fn, items, backend="loky")}, repeats=5)
    checks.at_most("loky / serial, 10 ms x 200", paired_ratio(times["loky"], times["serial"]), 0.53)
    sys.exit(checks.summary())

Run the scripts from the repository root (``python benchmarks/bench_core.py``);
they add their own folder to ``sys.path``, so ``import _common`` works.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Check",
    "Checks",
    "cpu_count",
    "fmt_seconds",
    "header",
    "interleaved",
    "median",
    "median_time",
    "paired_ratio",
    "ratio_line",
    "spin",
    "spin_loops",
    "spinning",
    "time_call",
    "timings",
]


def cpu_count() -> int:
    """The CPUs this process may run on (the affinity mask, not the machine total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def header(title: str) -> None:
    """Print a title line with the machine facts a figure depends on."""
    print(f"== {title}")
    print(
        f"   Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{cpu_count()} CPUs usable, load average {_load()}"
    )


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def time_call(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn()`` takes (wall clock)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timings(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn()``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return [time_call(fn) for _ in range(repeats)]


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (which must not be empty)."""
    return statistics.median(values)


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls of ``fn()`` after ``warmup`` untimed ones."""
    return median(timings(fn, repeats, warmup))


def interleaved(
    calls: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, *, primed: bool = False
) -> dict[str, list[float]]:
    """Seconds of each call, timed in turns so drifting load hits all alike.

    The order is shuffled each round (seeded, so runs repeat): a call that
    leaves the machine in a worse state (threads winding down, a CPU clocked
    down while it waited) then slows each of the others about equally often.

    Args:
        calls: name -> a call to time.
        repeats: timed rounds.
        warmup: untimed rounds first.
        primed: precede each timed call by an untimed call of the same kind, so
            that it is measured in the state a loop of such calls leaves (caches,
            threads of the previous call's engine), not in the state another
            engine's call left.

    Returns:
        name -> the seconds of its ``repeats`` calls, round by round.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    names, order = list(calls), random.Random(len(calls) * 1000 + repeats)
    for _ in range(repeats):
        order.shuffle(names)
        for name in names:
            if primed:
                calls[name]()
            times[name].append(time_call(calls[name]))
    return times


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median of round-by-round ratios of two :func:`interleaved` series."""
    return median([a / b for a, b in zip(numerator, denominator, strict=True) if b > 0])


def spin(iterations: int) -> int:
    """A pure-Python CPU loop (holds the GIL): ``iterations`` additions."""
    total = 0
    for i in range(iterations):
        total += i
    return total


def spin_loops(seconds: float) -> int:
    """Iterations of :func:`spin` that take about ``seconds`` here (the fastest of a few
    probes: the speed of an uncontended CPU)."""
    probe = 200_000
    best = min(time_call(lambda: spin(probe)) for _ in range(7))
    return max(1, round(probe * seconds / best))


def spinning(loops: int) -> Callable[[int], int]:
    """A pure-Python function of ``loops`` :func:`spin` iterations per item."""

    def work(x: int) -> int:
        return spin(loops) + x

    return work


def fmt_seconds(seconds: float) -> str:
    """``seconds`` with a unit a person reads easily: ns, µs, ms or s."""
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


@dataclass
class Check:
    """One measured figure against its target."""

    name: str
    value: float
    target: float
    passed: bool
    relation: str

    def line(self) -> str:
        """The PASS/FAIL line printed for this check."""
        verdict = "PASS" if self.passed else "FAIL"
        target = f"{self.relation} {self.target:g}"
        return f"  [{verdict}] {self.name}: {self.value:.3g} (target {target})"


@dataclass
class Checks:
    """The verdicts of one script; :meth:`summary` returns its exit status."""

    results: list[Check] = field(default_factory=list)

    def at_most(self, name: str, value: float, target: float) -> bool:
        """Record and print ``value <= target`` (e.g. a time ratio that must stay low)."""
        return self._add(Check(name, value, target, value <= target, "<="))

    def at_least(self, name: str, value: float, target: float) -> bool:
        """Record and print ``value >= target`` (e.g. a speed-up that must be reached)."""
        return self._add(Check(name, value, target, value >= target, ">="))

    def _add(self, check: Check) -> bool:
        self.results.append(check)
        print(check.line(), flush=True)
        return check.passed

    def summary(self) -> int:
        """Print the tally; return 0 when every check passed, else 1."""
        failed = [c for c in self.results if not c.passed]
        print(f"\n{len(self.results) - len(failed)}/{len(self.results)} checks passed")
        for check in failed:
            print("  failed:", check.line().strip())
        return 1 if failed else 0


def ratio_line(name: str, numerator: float, denominator: float) -> str:
    """``name: a / b = r`` with both times shown, for figures reported without a target."""
    ratio = numerator / denominator if denominator > 0 else float("inf")
    return f"  {name}: {fmt_seconds(numerator)} / {fmt_seconds(denominator)} = {ratio:.3f}x"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("this module holds helpers; run one of the bench_*.py scripts")


class Ceiling:
    """The best parallel / serial ratio this machine allows right now, for CPU work.

    One plain forked process per CPU, started before any backend (forking a
    process that runs Ray's threads is unsafe). :meth:`split` runs the same
    items in equal contiguous shares on them: time it beside serial with
    :func:`interleaved`. On idle cores the ratio is 1 / CPUs; on a shared VM it
    is often far above, and no scheduler can beat it.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or cpu_count()
        self.pool = multiprocessing.get_context("fork").Pool(self.workers)
        self.pool.map(_run_share, [_share(abs, [0])] * self.workers, 1)  # started

    def split(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Callable[[], None]:
        """A call that maps ``fn`` over ``items`` in one equal share per process."""
        n, w = len(items), self.workers
        shares = [_share(fn, items[k * n // w : (k + 1) * n // w]) for k in range(w)]
        return lambda: self.pool.map(_run_share, shares, 1) and None

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def _share(fn: Callable[[Any], Any], items: Sequence[Any]) -> bytes:
    import cloudpickle  # closures too

    return cloudpickle.dumps((fn, list(items)))


def _run_share(blob: bytes) -> None:
    import pickle

    fn, items = pickle.loads(blob)
    for item in items:
        fn(item)
