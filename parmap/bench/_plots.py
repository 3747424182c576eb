"""The report's PNG plots (matplotlib, non-interactive Agg backend).

- ``speedup_vs_cost.png``: speed-up over serial vs per-item cost, one panel per
  target, one line per item count, the 1.0 line dashed;
- ``speedup_heatmap.png``: speed-up over per-item cost x item count per target;
- ``crossover_curves.png``: the item count from which each target beats serial,
  vs per-item cost: measured (markers) and the fitted model's (dashed);
- ``payload.png``: speed-up vs item size (when the payload workload ran);
- ``model_fit.png``: predicted vs measured time of each fitted model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from parmap.bench._summary import Summary, workload_of
from parmap.bench._sweep import Row, SweepResult, format_bytes, format_seconds

__all__ = ["draw_all"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_all(result: SweepResult, summary: Summary, out: Path) -> list[Path]:
    """Draw every plot that has data into ``out``; return the files written."""
    plt = _pyplot()
    written = []
    for draw in (speedup_vs_cost, speedup_heatmap, crossover_curves, payload, model_fit):
        figure = draw(plt, result, summary)
        if figure is None:
            continue
        path = out / f"{draw.__name__}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def _panels(plt: Any, count: int, width: float = 4.2, height: float = 3.4) -> tuple[Any, list[Any]]:
    columns = min(count, 4 if count > 6 else 3)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(width * columns, height * rows),
        squeeze=False,
        layout="constrained",
    )
    flat = [ax for line in axes for ax in line]
    for ax in flat[count:]:
        ax.set_visible(False)
    return figure, flat[:count]


def _rows(result: SweepResult, target: str) -> list[Row]:
    return [r for r in result.rows if r.target == target]


def _cost_ticks(ax: Any, costs: Sequence[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(list(costs))
    ax.set_xticklabels([format_seconds(c) for c in costs], rotation=35, fontsize=8)
    ax.minorticks_off()


def speedup_vs_cost(plt: Any, result: SweepResult, summary: Summary) -> Any:
    """Speed-up vs per-item cost, per target (one line per item count)."""
    if not summary.targets or not summary.cost_workloads:
        return None
    costs = [summary.measured_cost[w] for w in summary.cost_workloads]
    figure, axes = _panels(plt, len(summary.targets))
    shades = [i / max(1, len(summary.counts) - 1) for i in range(len(summary.counts))]
    colors = plt.cm.viridis(shades)
    top = max([r.speedup for r in result.rows if r.kind != "reference"] + [2.0])
    for ax, target in zip(axes, summary.targets, strict=True):
        rows = [r for r in _rows(result, target) if workload_of(r).on_cost_axis]
        for color, n in zip(colors, summary.counts, strict=True):
            points = sorted(
                (summary.measured_cost[workload_of(r)], r.speedup) for r in rows if r.n_items == n
            )
            if points:
                ax.plot(*zip(*points, strict=True), "o-", color=color, label=f"{n:,}", ms=4)
        ax.axhline(1.0, color="black", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_ylim(min(0.01, _floor(result)), top * 1.5)
        _cost_ticks(ax, costs)
        ax.set_title(target)
        ax.set_xlabel("per-item cost (serial)")
        ax.set_ylabel("speed-up over serial map")
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=9, title="items")
    figure.suptitle("Speed-up vs per-item cost (above the dashed 1.0 line: faster than serial)")
    return figure


def _floor(result: SweepResult) -> float:
    values = [r.speedup for r in result.rows if r.kind != "reference" and r.speedup > 0]
    return min(values, default=0.01) * 0.7


def speedup_heatmap(plt: Any, result: SweepResult, summary: Summary) -> Any:
    """Speed-up over per-item cost x item count, one heatmap per target."""
    if not summary.targets or not summary.cost_workloads or not summary.counts:
        return None
    from matplotlib.colors import TwoSlopeNorm

    figure, axes = _panels(plt, len(summary.targets), width=4.6, height=3.6)
    top = math.log2(max(2, result.config.workers)) + 0.5
    norm = TwoSlopeNorm(vmin=-4.0, vcenter=0.0, vmax=top)
    image = None
    for ax, target in zip(axes, summary.targets, strict=True):
        grid = _grid(result, summary, target)
        shown = [[math.log2(v) if v == v else math.nan for v in line] for line in grid]
        image = ax.imshow(shown, cmap="RdBu", norm=norm, aspect="auto", origin="lower")
        for i, line in enumerate(shown):
            for j, value in enumerate(line):
                if value == value:
                    color = "white" if value < -2.5 or value > 0.8 * top else "black"
                    text = f"{grid[i][j]:.2g}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
        ax.set_xticks(range(len(summary.counts)))
        ax.set_xticklabels([f"{n:,}" for n in summary.counts], fontsize=8)
        ax.set_yticks(range(len(summary.cost_workloads)))
        ax.set_yticklabels(
            [format_seconds(summary.measured_cost[w]) for w in summary.cost_workloads], fontsize=8
        )
        ax.set_xlabel("items")
        ax.set_ylabel("per-item cost")
        ax.set_title(target)
    ticks = [t for t in range(-4, 4) if t <= top]
    bar = figure.colorbar(image, ax=axes, shrink=0.8, ticks=ticks)
    bar.ax.set_yticklabels([f"1/{2**-t}" if t < 0 else f"{2**t}" for t in ticks])
    bar.set_label("speed-up over serial (blue: faster, red: slower)")
    figure.suptitle("Speed-up over serial map (blank: not measured)")
    return figure


def _grid(result: SweepResult, summary: Summary, target: str) -> list[list[float]]:
    index = {(workload_of(r), r.n_items): r.speedup for r in _rows(result, target)}
    return [[index.get((w, n), math.nan) for n in summary.counts] for w in summary.cost_workloads]


def crossover_curves(plt: Any, result: SweepResult, summary: Summary) -> Any:
    """Item count from which each target beats serial, vs per-item cost."""
    targets = summary.parallel_targets
    if not targets or not summary.cost_workloads:
        return None
    figure, ax = plt.subplots(figsize=(8.5, 5.5))
    costs = [summary.measured_cost[w] for w in summary.cost_workloads]
    colors = plt.cm.tab10(range(len(targets)))
    largest = summary.counts[-1] if summary.counts else 1
    for position, (color, target) in enumerate(zip(colors, targets, strict=True)):
        shift = 1.0 + 0.05 * (position - (len(targets) - 1) / 2)  # markers side by side
        points = {"between": [], "below": [], "never": []}  # type: dict[str, list[Any]]
        for w in summary.cost_workloads:
            c = summary.by_cost[target][w]
            if c.kind in points and c.at is not None:
                at = largest * 3 if c.kind == "never" else c.at
                x = summary.measured_cost[w] * (1.0 if c.kind == "between" else shift)
                points[c.kind].append((x, at))
        found = sorted(points["between"] + points["below"])
        if found:
            ax.plot(*zip(*found, strict=True), "-", color=color)
        for kind, marker in (("between", "o"), ("below", "v"), ("never", "^")):
            if points[kind]:
                ax.plot(*zip(*points[kind], strict=True), marker, color=color, ms=7)
        ax.plot([], [], "o-", color=color, label=target)
        predicted = summary.model_breakeven.get(target, {})
        model_points = [
            (summary.measured_cost[w], predicted[w])
            for w in summary.cost_workloads
            if predicted.get(w) is not None
        ]
        if model_points:
            ax.plot(*zip(*model_points, strict=True), "--", color=color, alpha=0.6, lw=1)
    ax.set_yscale("log")
    _cost_ticks(ax, costs)
    ax.set_xlabel("per-item cost (serial)")
    ax.set_ylabel("items needed to beat serial map")
    ax.axhspan(largest * 1.5, largest * 6, color="grey", alpha=0.15)
    ax.text(
        costs[0], largest * 4.5, "  ^ does not beat serial even at the largest item count measured",
        fontsize=8, va="center",
    )  # fmt: skip
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(
        fontsize=9, loc="lower left", title_fontsize=8,
        title="measured (solid; v: already at the\nsmallest count) / model (dashed)",
    )  # fmt: skip
    ax.set_title("Crossover: below a curve serial wins, above it the backend wins")
    figure.tight_layout()
    return figure


def payload(plt: Any, result: SweepResult, summary: Summary) -> Any:
    """Speed-up vs item size (the payload workload)."""
    rows = [r for r in result.rows if r.workload == "payload" and r.kind != "reference"]
    if not rows or not summary.targets:
        return None
    figure, ax = plt.subplots(figsize=(8, 5))
    colors = plt.cm.tab10(range(len(summary.targets)))
    counts = sorted({r.n_items for r in rows})
    for color, target in zip(colors, summary.targets, strict=True):
        for style, n in zip(("o-", "s--", "^:"), counts, strict=False):
            points = sorted(
                (r.param, r.speedup) for r in rows if r.target == target and r.n_items == n
            )
            if points:
                label = target if n == counts[0] else None
                ax.plot(*zip(*points, strict=True), style, color=color, label=label, ms=4)
    sizes = sorted({r.param for r in rows})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([format_bytes(s) for s in sizes])
    ax.minorticks_off()
    ax.axhline(1.0, color="black", ls="--", lw=1)
    ax.set_xlabel("item size (pickled)")
    ax.set_ylabel("speed-up over serial map")
    cost = format_seconds(result.config.payload_cost_us * 1e-6)
    ax.set_title(f"Serialization: ~{cost} of work per item, {', '.join(map(str, counts))} items")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    return figure


def model_fit(plt: Any, result: SweepResult, summary: Summary) -> Any:
    """Each model's predicted time against the measured time (on the diagonal = exact)."""
    if not summary.residuals:
        return None
    figure, ax = plt.subplots(figsize=(7, 6))
    colors = plt.cm.tab10(range(len(summary.residuals)))
    low, high = math.inf, 0.0
    for color, (target, points) in zip(colors, summary.residuals.items(), strict=True):
        measured = [r.observation.seconds for r in points]
        predicted = [max(r.predicted, 1e-7) for r in points]
        low = min(low, *measured, *predicted)
        high = max(high, *measured, *predicted)
        rms = summary.models[target].quality.get("rms_rel", math.nan)
        ax.scatter(measured, predicted, s=14, color=color, label=f"{target} (rms {rms:.0%})")
    ax.plot([low, high], [low, high], color="black", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured seconds (median of warm calls)")
    ax.set_ylabel("model's prediction (seconds)")
    ax.set_title("Fitted overhead model: predicted vs measured")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure
