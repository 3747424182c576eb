"""The sweep: every target over every (workload, item count) cell, timed warm.

    calibrate the CPU-bound loop in this process (iterations per µs)
    plan the cells; drop those whose serial work exceeds the cell budget
    for each target (map first: it is the serial reference and the oracle):
        cold start: release its workers, time the first call, then warm calls
        for each workload, item counts ascending:
            one warm-up call (first count of each workload, and cheap cells)
            `repeats` timed calls -> median; results checked against map's
            a target that is far slower than serial skips the larger counts
        release its workers
    Ctrl-C anywhere: stop, release the workers, keep every measured row

The sweep only measures; ``analysis`` and ``_report`` turn rows into tables.
"""

from __future__ import annotations

import os
import pickle
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from parmap.bench import workloads
from parmap.bench._targets import MapTarget, Target, make_target

__all__ = ["Cell", "ColdStart", "Row", "SweepConfig", "SweepResult", "Workload", "run_sweep"]

WORKLOAD_KINDS = ("onemax", "cpu", "symreg", "payload", "gilfree")


@dataclass(frozen=True)
class Workload:
    """One fitness function setting: ``kind`` and its parameter.

    ``param`` is the bit count (onemax), the cost in µs (cpu, gilfree), the
    number of data points (symreg) or the item size in bytes (payload).
    """

    kind: str
    param: float

    @property
    def label(self) -> str:
        """A short name for tables, e.g. ``cpu 100 µs``."""
        if self.kind == "onemax":
            return f"OneMax {self.param:g} bits"
        if self.kind == "cpu":
            return f"cpu {format_seconds(self.param * 1e-6)}"
        if self.kind == "symreg":
            return f"symreg {self.param:g} pts"
        if self.kind == "gilfree":
            return f"gil-free {format_seconds(self.param * 1e-6)}"
        return f"payload {format_bytes(self.param)}"

    @property
    def on_cost_axis(self) -> bool:
        """Whether it is a point of the per-item-cost axis (OneMax and cpu)."""
        return self.kind in ("onemax", "cpu")

    def build(self, n_items: int, iterations_per_us: float, payload_cost_us: float) -> tuple[
        Callable[[Any], Any], list[Any]
    ]:  # fmt: skip
        """The function and a deterministic population of ``n_items`` individuals."""
        if self.kind == "onemax":
            return workloads.onemax, workloads.bitstrings(n_items, int(self.param))
        if self.kind == "cpu":
            fn = workloads.CpuFitness.for_cost(self.param, iterations_per_us)
            return fn, workloads.seeds(n_items)
        if self.kind == "symreg":
            return workloads.SymbolicRegression(int(self.param)), workloads.random_trees(n_items)
        if self.kind == "gilfree":
            hashing = workloads.HashFitness.for_cost(self.param, workloads.hash_rate())
            return hashing, workloads.seeds(n_items)
        iterations = round(payload_cost_us * iterations_per_us)
        return workloads.PayloadFitness(iterations), workloads.payloads(n_items, int(self.param))


@dataclass(frozen=True)
class Cell:
    """One point of the sweep: a workload at an item count."""

    workload: Workload
    n_items: int


@dataclass
class SweepConfig:
    """Everything that decides what the sweep measures (see ``parmap bench --help``)."""

    targets: list[str]
    workers: int
    costs_us: list[float]
    counts: list[int]
    workloads: list[str] = field(default_factory=lambda: list(WORKLOAD_KINDS))
    symreg_points: list[int] = field(default_factory=lambda: [200])
    payload_sizes: list[int] = field(default_factory=lambda: [100, 10_000, 1_000_000])
    payload_counts: list[int] = field(default_factory=lambda: [100])
    payload_cost_us: float = 50.0
    gilfree_costs_us: list[float] = field(default_factory=lambda: [1000.0])
    repeats: int = 3
    cell_budget: float = 1.0
    payload_budget_bytes: int = 256 * 2**20
    ray_cap: int = 500
    cold_items: int = 100
    mode: str = "quick"

    def workload_list(self) -> list[Workload]:
        """The workloads to sweep, in order."""
        specs: list[Workload] = []
        if "onemax" in self.workloads:
            specs.append(Workload("onemax", 100))
        if "cpu" in self.workloads:
            specs += [Workload("cpu", c) for c in sorted(self.costs_us)]
        if "symreg" in self.workloads:
            specs += [Workload("symreg", p) for p in sorted(self.symreg_points)]
        if "payload" in self.workloads:
            specs += [Workload("payload", s) for s in sorted(self.payload_sizes)]
        if "gilfree" in self.workloads:
            specs += [Workload("gilfree", c) for c in sorted(self.gilfree_costs_us)]
        return specs


@dataclass
class Row:
    """One target's median time on one cell.

    ``serial_times`` are serial ``map`` calls timed each just before one of
    ``times``; ``speedup`` is the median of their pairwise ratios.
    """

    target: str
    kind: str
    workload: str
    param: float
    label: str
    n_items: int
    n_measured: int
    scaled: bool
    item_bytes: int
    per_item_cost: float
    serial_seconds: float
    seconds: float
    measured_seconds: float
    speedup: float
    workers: int
    times: list[float]
    serial_times: list[float]


@dataclass
class ColdStart:
    """The first call of a target (workers starting) and its warm calls after."""

    target: str
    kind: str
    n_items: int
    cold_seconds: float
    warm_seconds: float

    @property
    def startup_seconds(self) -> float:
        """Cold minus warm: what starting the workers cost."""
        return max(0.0, self.cold_seconds - self.warm_seconds)


@dataclass
class SweepResult:
    """What a sweep measured, and what it could not."""

    config: SweepConfig
    iterations_per_us: float
    rows: list[Row] = field(default_factory=list)
    cold: list[ColdStart] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    elapsed: float = 0.0
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content (the rows and cold starts as dicts)."""
        data = asdict(self)
        for entry, cold in zip(data["cold"], self.cold, strict=True):
            entry["startup_seconds"] = cold.startup_seconds
        return data


@dataclass
class _CellData:
    fn: Callable[[Any], Any]
    items: list[Any]
    expected: list[Any]
    serial_seconds: float
    item_bytes: int


def format_seconds(seconds: float) -> str:
    """``seconds`` with a readable unit: ns, µs, ms or s (3 significant digits)."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= 0.9995 * scale:  # 0.99999 s is "1 s", not "1e+03 ms"
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def format_bytes(size: float) -> str:
    """``size`` bytes as B, kB or MB (powers of 1000)."""
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size:g} B"


def _load() -> list[float]:
    try:
        return list(os.getloadavg())
    except OSError:  # pragma: no cover
        return []


def plan(config: SweepConfig, iterations_per_us: float) -> tuple[list[Cell], list[dict[str, Any]]]:
    """The cells to measure, and the ones skipped (with the reason)."""
    cells: list[Cell] = []
    skipped: list[dict[str, Any]] = []
    for spec in config.workload_list():
        cost = _estimate_cost(spec, config, iterations_per_us)
        counts = config.payload_counts if spec.kind == "payload" else config.counts
        for n in sorted(set(counts)):
            reason = None
            if cost * n > config.cell_budget:
                reason = f"~{format_seconds(cost * n)} of serial work > cell budget"
            elif spec.kind == "payload" and spec.param * n > config.payload_budget_bytes:
                reason = f"{format_bytes(spec.param * n)} of items > payload budget"
            if reason:
                skipped.append({"target": "*", "label": spec.label, "n_items": n, "why": reason})
            else:
                cells.append(Cell(spec, n))
    return cells, skipped


def _estimate_cost(spec: Workload, config: SweepConfig, iterations_per_us: float) -> float:
    """Seconds per item, estimated before the sweep to apply the cell budget."""
    if spec.kind in ("cpu", "gilfree"):
        return spec.param * 1e-6
    if spec.kind == "payload":
        return config.payload_cost_us * 1e-6 + spec.param * 1e-9
    fn, items = spec.build(20, iterations_per_us, config.payload_cost_us)
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items)


class _Sweep:
    """The state of one run (see the module docstring)."""

    def __init__(self, config: SweepConfig) -> None:
        self.config = config
        self.bar: Any = None
        self.result = SweepResult(config, workloads.calibrate(), load_before=_load())
        self.cells, self.result.skipped = plan(config, self.result.iterations_per_us)
        self.data: dict[Cell, _CellData] = {}

    def note(self, message: str) -> None:
        self.bar.write(f"parmap bench: {message}", file=sys.stderr)

    def run(self) -> SweepResult:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                for name in ["map", *self.config.targets]:
                    self.run_target(name)
            except KeyboardInterrupt:
                self.result.interrupted = True
                self.note("interrupted: writing what was measured so far")
        self.result.warnings = _distinct(caught)
        self.result.elapsed = time.perf_counter() - start
        self.result.load_after = _load()
        return self.result

    def run_target(self, name: str) -> None:
        try:
            target: Target = MapTarget() if name == "map" else self._make(name)
        except Exception as exc:
            self._fail(name, "start", exc)
            self.bar.update(len(self.cells) + 1)
            return
        try:
            self.bar.set_postfix_str(f"{name}: cold start")
            if target.kind != "reference":
                self.result.cold.append(self._cold_start(target))
            self.bar.update(1)
            for group in _groups(self.cells):
                self._run_group(target, group)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            self._fail(name, "sweep", exc)
        finally:  # also on Ctrl-C: the rows measured so far need their target's facts
            self._stop(target)
            self.result.targets[name] = {
                "kind": target.kind,
                "workers": target.workers,
                "batching": target.batching,
                "batch_overhead": target.batch_overhead,
                "item_cap": target.item_cap,
            }

    def _make(self, name: str) -> Target:
        return make_target(name, self.config.workers, self.config.ray_cap)

    def _stop(self, target: Target) -> None:
        try:
            target.stop()
        except Exception as exc:  # pragma: no cover - best effort
            self._fail(target.name, "stop", exc)

    def _fail(self, name: str, stage: str, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}".strip()
        self.result.failures.append({"target": name, "stage": stage, "error": message})
        self.note(f"{name} failed ({stage}): {message.splitlines()[0][:200]}")

    def _cold_start(self, target: Target) -> ColdStart:
        items = workloads.bitstrings(self.config.cold_items)
        expected = list(map(workloads.onemax, items))
        target.stop()
        start = time.perf_counter()
        _check(target, target.run(workloads.onemax, items), expected, "cold start")
        cold = time.perf_counter() - start
        warm = _times(target, workloads.onemax, items, max(5, self.config.repeats))
        return ColdStart(target.name, target.kind, len(items), cold, statistics.median(warm))

    def _run_group(self, target: Target, cells: list[Cell]) -> None:
        too_slow = False
        for position, cell in enumerate(cells):
            self.bar.set_postfix_str(f"{target.name}: {cell.workload.label} x {cell.n_items}")
            if too_slow:
                why = "skipped: this target was far slower than serial at a smaller count"
                self.result.skipped.append(_skip(target.name, cell, why))
            elif target.kind == "reference" or cell in self.data:
                row = self._measure(target, cell, warmup=position == 0)
                self.result.rows.append(row)
                too_slow = row.seconds > max(2.0, 20 * row.serial_seconds)
            self.bar.update(1)

    def _measure(self, target: Target, cell: Cell, warmup: bool) -> Row:
        if target.kind == "reference":
            return self._reference(target, cell)
        data = self.data[cell]
        items, expected = data.items, data.expected
        if target.item_cap is not None and len(items) > target.item_cap:
            items, expected = items[: target.item_cap], expected[: target.item_cap]
        if warmup or data.serial_seconds < 0.1:
            _check(target, target.run(data.fn, items), expected, cell.workload.label)
        serial, times = _paired(
            target, data.fn, items, expected, self.config.repeats, self._long_call
        )
        scale = cell.n_items / len(items)
        return Row(
            **self._cell_fields(target, cell, data, len(items)),
            per_item_cost=statistics.median(serial) / len(items),
            serial_seconds=statistics.median(serial) * scale,
            seconds=statistics.median(times) * scale,
            measured_seconds=statistics.median(times),
            speedup=statistics.median(_ratios(serial, times)),
            times=times,
            serial_times=serial,
        )

    @property
    def _long_call(self) -> float:
        return 3 * self.config.cell_budget

    def _reference(self, target: Target, cell: Cell) -> Row:
        fn, items = cell.workload.build(
            cell.n_items, self.result.iterations_per_us, self.config.payload_cost_us
        )
        expected = target.run(fn, items)  # also the warm-up
        times = _times(target, fn, items, self.config.repeats, expected, self._long_call)
        serial = statistics.median(times)
        size = len(pickle.dumps(items[0], protocol=5))
        data = _CellData(fn, items, expected, serial, size)
        self.data[cell] = data
        return Row(
            **self._cell_fields(target, cell, data, len(items)),
            per_item_cost=serial / len(items),
            serial_seconds=serial,
            seconds=serial,
            measured_seconds=serial,
            speedup=1.0,
            times=times,
            serial_times=times,
        )

    def _cell_fields(
        self, target: Target, cell: Cell, data: _CellData, n_measured: int
    ) -> dict[str, Any]:
        return {
            "target": target.name,
            "kind": target.kind,
            "workload": cell.workload.kind,
            "param": cell.workload.param,
            "label": cell.workload.label,
            "n_items": cell.n_items,
            "n_measured": n_measured,
            "scaled": n_measured < cell.n_items,
            "item_bytes": data.item_bytes,
            "workers": target.workers,
        }


def _distinct(caught: list[warnings.WarningMessage]) -> list[str]:
    """The warnings raised during the sweep, each once, with how often it came."""
    counts: dict[str, int] = {}
    for w in caught:
        text = f"{w.category.__name__}: {str(w.message).splitlines()[0]} ({w.filename}:{w.lineno})"
        counts[text] = counts.get(text, 0) + 1
    return [f"{text} x{n}" if n > 1 else text for text, n in counts.items()]


def _groups(cells: list[Cell]) -> Iterator[list[Cell]]:
    """The cells of each workload, item counts ascending."""
    by_workload: dict[Workload, list[Cell]] = {}
    for cell in cells:
        by_workload.setdefault(cell.workload, []).append(cell)
    for group in by_workload.values():
        yield sorted(group, key=lambda c: c.n_items)


def _skip(target: str, cell: Cell, why: str) -> dict[str, Any]:
    return {"target": target, "label": cell.workload.label, "n_items": cell.n_items, "why": why}


def _times(
    target: Target,
    fn: Callable[[Any], Any],
    items: list[Any],
    repeats: int,
    expected: list[Any] | None = None,
    long_call: float = float("inf"),
) -> list[float]:
    """Seconds of ``repeats`` calls (fewer when one call is longer than ``long_call``)."""
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        results = target.run(fn, items)
        times.append(time.perf_counter() - start)
        if expected is not None and len(times) == 1:
            _check(target, results, expected, "sweep")
        if times[-1] > long_call:
            break
    return times


def _paired(
    target: Target,
    fn: Callable[[Any], Any],
    items: list[Any],
    expected: list[Any],
    repeats: int,
    long_call: float,
) -> tuple[list[float], list[float]]:
    """Seconds of serial ``map`` and of the target, call after call (pairs close in time).

    A burst of other load then slows both sides of a pair, not only one.
    """
    serial: list[float] = []
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        list(map(fn, items))
        serial.append(time.perf_counter() - start)
        start = time.perf_counter()
        results = target.run(fn, items)
        times.append(time.perf_counter() - start)
        if len(times) == 1:
            _check(target, results, expected, "sweep")
        if serial[-1] + times[-1] > long_call:
            break
    return serial, times


def _ratios(serial: list[float], times: list[float]) -> list[float]:
    return [s / max(t, 1e-12) for s, t in zip(serial, times, strict=True)]


def _check(target: Target, results: list[Any], expected: list[Any], where: str) -> None:
    if results != expected:
        raise RuntimeError(
            f"{target.name} returned results that differ from serial map's ({where}); "
            "this is a bug, please report it"
        )


def run_sweep(config: SweepConfig, progress: bool = True) -> SweepResult:
    """Measure every target of ``config``; Ctrl-C stops early and keeps what was measured.

    Args:
        config: what to measure.
        progress: show a progress bar on stderr.

    Returns:
        The measurements (``interrupted`` is True after Ctrl-C).
    """
    from tqdm.auto import tqdm

    sweep = _Sweep(config)  # calibrates and plans
    total = (len(sweep.cells) + 1) * (len(config.targets) + 1)
    with tqdm(
        total=total, desc="parmap bench", unit="cell", disable=not progress, file=sys.stderr
    ) as sweep.bar:
        return sweep.run()
