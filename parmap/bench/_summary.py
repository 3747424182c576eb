"""From measured rows to what a reader wants: crossovers, models, baseline ratios.

Groups a sweep's rows and hands plain numbers to :mod:`parmap.bench.analysis`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from parmap._model import OverheadModel
from parmap.bench._sweep import Row, SweepResult, Workload
from parmap.bench.analysis import Crossover, Observation, Residual, crossover, fit_model, residuals

__all__ = ["Quality", "Summary", "quality", "summarize"]


@dataclass
class Summary:
    """The tables of the report, computed once for text, Markdown and plots.

    Attributes:
        targets: the compared targets (not the ``map`` reference), in run order.
        cost_workloads: the per-item-cost axis (OneMax, cpu ...), by measured cost.
        measured_cost: workload -> mean serial seconds per item.
        counts: the item counts of the cost axis.
        by_cost: target -> workload -> crossover in item count.
        by_count: target -> item count -> crossover in per-item cost (seconds).
        models: target -> fitted overhead model.
        residuals: target -> the model's predictions of the measured points.
        model_breakeven: target -> workload -> the model's crossover in items.
    """

    targets: list[str]
    cost_workloads: list[Workload]
    measured_cost: dict[Workload, float]
    counts: list[int]
    by_cost: dict[str, dict[Workload, Crossover]] = field(default_factory=dict)
    by_count: dict[str, dict[int, Crossover]] = field(default_factory=dict)
    models: dict[str, OverheadModel] = field(default_factory=dict)
    residuals: dict[str, list[Residual]] = field(default_factory=dict)
    model_breakeven: dict[str, dict[Workload, int | None]] = field(default_factory=dict)
    model_errors: dict[str, str] = field(default_factory=dict)

    @property
    def parallel_targets(self) -> list[str]:
        """The targets that can beat serial: all but parmap's in-process ``serial`` backend."""
        return [t for t in self.targets if t != "serial"]


def workload_of(row: Row) -> Workload:
    """The workload a row measured."""
    return Workload(row.workload, row.param)


def summarize(result: SweepResult) -> Summary:
    """Compute crossovers and fit a model per target.

    Args:
        result: a sweep's measurements (possibly interrupted, possibly partial).

    Returns:
        A :class:`Summary`.
    """
    reference = [r for r in result.rows if r.kind == "reference"]
    measured_cost = _measured_costs(reference)
    cost_workloads = sorted(
        (w for w in measured_cost if w.on_cost_axis), key=lambda w: measured_cost[w]
    )
    targets = [t for t in result.targets if t != "map" and _rows(result.rows, t)]
    counts = sorted({r.n_items for r in reference if workload_of(r).on_cost_axis})
    summary = Summary(targets, cost_workloads, measured_cost, counts)
    for target in targets:
        rows = _rows(result.rows, target)
        summary.by_cost[target] = _by_cost(rows, cost_workloads)
        summary.by_count[target] = _by_count(rows, counts)
        _fit(summary, target, rows, result.targets[target])
    return summary


def _rows(rows: Sequence[Row], target: str) -> list[Row]:
    return [r for r in rows if r.target == target]


def _measured_costs(reference: Sequence[Row]) -> dict[Workload, float]:
    costs: dict[Workload, list[float]] = {}
    for row in reference:
        costs.setdefault(workload_of(row), []).append(row.per_item_cost)
    return {w: statistics.mean(values) for w, values in costs.items()}


def _by_cost(rows: Sequence[Row], workloads: Sequence[Workload]) -> dict[Workload, Crossover]:
    return {
        w: crossover((r.n_items, r.speedup) for r in rows if workload_of(r) == w) for w in workloads
    }


def _by_count(rows: Sequence[Row], counts: Sequence[int]) -> dict[int, Crossover]:
    on_axis = [r for r in rows if workload_of(r).on_cost_axis]
    return {
        n: crossover((r.per_item_cost, r.speedup) for r in on_axis if r.n_items == n)
        for n in counts
    }


def observations(rows: Sequence[Row]) -> list[Observation]:
    """The points a model is fitted to: what was really measured (not scaled)."""
    return [
        Observation(
            n_items=r.n_measured,
            per_item_cost=r.per_item_cost,
            item_bytes=r.item_bytes,
            seconds=r.measured_seconds,
            label=r.label,
        )
        for r in rows
    ]


def _fit(summary: Summary, target: str, rows: Sequence[Row], info: dict[str, object]) -> None:
    template = OverheadModel(
        backend=target,
        workers=int(info.get("workers") or 1),  # type: ignore[call-overload]
        batching=str(info.get("batching") or "single"),
        batch_overhead=float(info.get("batch_overhead") or 0.0),  # type: ignore[arg-type]
    )
    points = observations(rows)
    try:
        model = fit_model(points, template)
    except Exception as exc:  # e.g. numpy missing; the rest of the report still stands
        summary.model_errors[target] = f"{type(exc).__name__}: {exc}"
        return
    summary.models[target] = model
    summary.residuals[target] = residuals(model, points)
    summary.model_breakeven[target] = {
        w: model.breakeven_items(summary.measured_cost[w], _bytes(rows, w), limit=10**6)
        for w in summary.cost_workloads
    }


def _bytes(rows: Sequence[Row], workload: Workload) -> float:
    sizes = [r.item_bytes for r in rows if workload_of(r) == workload]
    return float(statistics.mean(sizes)) if sizes else 0.0


@dataclass
class Quality:
    """How much to trust a run: signs that other work disturbed the timings.

    Attributes:
        cpus: the usable CPUs.
        load_before: the 1-minute load average when the run started.
        impossible: cells whose speed-up exceeds the target's worker count by
            more than 15% (impossible for CPU-bound Python: the serial side was slowed).
        serial_range: min and max speed-up of parmap's ``serial`` backend on
            cells of at least 5 ms (it does the same work in-process: ideally 1.0).
        noisy: cells of 1 ms or more whose repeated serial calls differ by more than 1.5x.
        cells: the cells of 1 ms or more (all targets).
    """

    cpus: int
    load_before: float | None
    impossible: list[str]
    serial_range: tuple[float, float] | None
    noisy: int
    cells: int

    def cautions(self) -> list[str]:
        """One sentence per sign of disturbance (empty when the run looks clean)."""
        notes = []
        if self.load_before is not None and self.load_before > 0.5 * self.cpus:
            notes.append(
                f"the machine was already busy when the run started (load average "
                f"{self.load_before:.1f} on {self.cpus} CPUs)"
            )
        if self.impossible:
            notes.append(
                f"{len(self.impossible)} cell(s) show a speed-up above the worker count, "
                f"impossible for this CPU-bound work (e.g. {self.impossible[0]})"
            )
        if self.serial_range and (self.serial_range[0] < 0.85 or self.serial_range[1] > 1.15):
            low, high = self.serial_range
            notes.append(
                f"parmap's serial backend, which does the same work in-process, measured "
                f"{low:.2f}x-{high:.2f}x of serial map (ideally 1.00x)"
            )
        if self.noisy > max(2, self.cells // 10):
            notes.append(f"{self.noisy} of {self.cells} cells had serial times varying by >1.5x")
        return notes


def quality(result: SweepResult, cpus: int) -> Quality:
    """Look for signs that other work on the machine disturbed the run."""
    measured = [r for r in result.rows if r.kind != "reference"]
    impossible = [
        f"{r.target} {r.speedup:.2f}x on {r.label} x {r.n_items:,}"
        for r in measured
        if r.speedup > 1.15 * max(1, r.workers)
    ]
    heavy = [r.speedup for r in measured if r.target == "serial" and r.serial_seconds >= 5e-3]
    timed = [r.serial_times for r in result.rows if r.serial_times and min(r.serial_times) > 1e-3]
    noisy = sum(1 for times in timed if max(times) > 1.5 * min(times))
    return Quality(
        cpus=cpus,
        load_before=result.load_before[0] if result.load_before else None,
        impossible=impossible,
        serial_range=(min(heavy), max(heavy)) if heavy else None,
        noisy=noisy,
        cells=len(timed),
    )
