"""The report's PNG plots (matplotlib, non-interactive Agg backend).

Every target has one look in every figure (:mod:`parmap.bench._style`): a colour
per backend, peers grey and dashed, serial map black. Speed-up axes are
logarithmic and centred on 1 (at least 1/8x to 8x, the 1/4x-4x band in the
middle; a value beyond the axis sits on its edge as a hollow triangle); the
area above 1 (faster than serial) is tinted blue, below it red.

The sweep (``parmap bench``):

- ``speedup_vs_cost.png``: one panel per item count, speed-up vs per-item cost,
  a line per target;
- ``speedup_heatmap.png``: speed-up over per-item cost x item count, per target;
- ``crossover_curves.png``: the item count from which each target beats serial,
  vs per-item cost, measured (markers) and the fitted model's (dotted); targets
  that win already at the fewest items, or never, each get a row of their own in
  the bands at the bottom and top;
- ``cold_start.png``: total wall time of K calls vs K, start-up included, for
  one cell (a call of about 0.1 s), break-even marked;
- ``payload.png``: speed-up vs item size (when the payload workload ran);
- ``model_fit.png``: predicted vs measured time of each fitted model.

The user's function (``parmap bench --fn``):

- ``fn_speedup.png``: warm speed-up vs items per call, with the range of the pairs;
- ``cold_start.png``: the run's total wall time vs calls, measured up to K and
  extrapolated beyond it, break-even marked.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parmap.bench._style import MODEL_STYLE, is_peer, label, style
from parmap.bench._summary import Summary, workload_of
from parmap.bench._sweep import Row, SweepResult, format_bytes, format_seconds

if TYPE_CHECKING:
    from parmap.bench._userfn import FnResult
    from parmap.bench._verdict import Verdict

__all__ = ["ColdLine", "draw_all", "draw_fn", "save"]

FASTER, SLOWER = "#4c72b0", "#c44e52"  # the tints above and below 1x


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure: Any, path: Path) -> Path:
    """Write ``figure`` to ``path`` as PNG and close it."""
    figure.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return path


def draw_all(result: SweepResult, summary: Summary, out: Path) -> list[Path]:
    """Draw every sweep plot that has data into ``out``; return the files written."""
    plt = _pyplot()
    written = []
    draws: tuple[Callable[[Any, SweepResult, Summary], Any], ...] = (
        speedup_vs_cost, speedup_heatmap, crossover_curves, cold_start, payload, model_fit,
    )  # fmt: skip
    for draw in draws:
        figure = draw(plt, result, summary)
        if figure is not None:
            written.append(save(figure, out / f"{draw.__name__}.png"))
    return written


def draw_fn(result: FnResult, found: Verdict, out: Path) -> list[Path]:
    """Draw the plots of ``parmap bench --fn`` into ``out``; return the files written."""
    plt = _pyplot()
    written = []
    for name, draw in (("fn_speedup", fn_speedup), ("cold_start", fn_cold_start)):
        figure = draw(plt, result, found)
        if figure is not None:
            written.append(save(figure, out / f"{name}.png"))
    return written


# -- shared pieces ---------------------------------------------------------------------


def _panels(plt: Any, count: int, width: float = 4.2, height: float = 3.4) -> tuple[Any, list[Any]]:
    columns = 4 if count > 9 else math.ceil(math.sqrt(count))
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


def _ordered(names: Sequence[str]) -> list[str]:
    """parmap's backends first, then the peers, each in run order."""
    return sorted(names, key=is_peer)


def _rows(result: SweepResult, target: str) -> list[Row]:
    return [r for r in result.rows if r.target == target]


def _cost_ticks(ax: Any, costs: Sequence[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(list(costs))
    ax.set_xticklabels([format_seconds(c) for c in costs], rotation=35, fontsize=8)
    ax.minorticks_off()


def _reach(values: Sequence[float]) -> float:
    """The half-range R of a speed-up axis [1/R, R]: 8, or 16 when a value passes 8."""
    top = max([v for v in values if v > 0 and math.isfinite(v)], default=1.0)
    return 16.0 if top > 8 else 8.0


def _speedup_axis(ax: Any, reach: float, label_y: bool = True) -> None:
    """Log speed-up axis centred on 1, from 1/reach to reach, tinted above and below 1."""
    ax.set_yscale("log")
    ax.set_ylim(1 / reach, reach)
    ticks = [2.0**e for e in range(-int(math.log2(reach)), int(math.log2(reach)) + 1)]
    ax.set_yticks(ticks)
    ax.set_yticklabels([f"{t:g}x" for t in ticks], fontsize=8)
    ax.minorticks_off()
    ax.axhspan(1.0, reach, color=FASTER, alpha=0.06, lw=0)
    ax.axhspan(1 / reach, 1.0, color=SLOWER, alpha=0.06, lw=0)
    ax.axhline(1.0, color="black", lw=1.1)
    if label_y:
        ax.set_ylabel("speed-up over serial map")
    ax.grid(True, which="major", alpha=0.3)


def _speedup_line(ax: Any, points: Sequence[tuple[float, float]], name: str, reach: float) -> None:
    """A target's speed-ups; values beyond the axis drawn on its edge as hollow triangles."""
    xs = [x for x, _ in points]
    ys = [min(max(y, 1 / reach), reach) for _, y in points]
    look = style(name)
    ax.plot(xs, ys, ms=5, lw=1.6, **look.line())
    for x, (_, y) in zip(xs, points, strict=True):
        if y < 1 / reach or y > reach:
            edge, marker = (1 / reach, "v") if y < 1 / reach else (reach, "^")
            ax.plot([x], [edge], marker=marker, ms=8, color=look.color, markerfacecolor="white",
                    clip_on=False, ls="")  # fmt: skip


def _legend(figure: Any, axes: Sequence[Any], extra: Sequence[tuple[Any, str]] = ()) -> None:
    """One legend for the figure: every labelled line once, then ``extra`` entries."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(text, handle)
    for handle, text in extra:
        seen.setdefault(text, handle)
    figure.legend(list(seen.values()), list(seen), loc="outside right center", fontsize=9)


def _edge_note(plt: Any) -> tuple[Any, str]:
    proxy = plt.Line2D([], [], ls="", marker="v", color="grey", markerfacecolor="white", ms=8)
    return proxy, "beyond the axis (on its edge)"


# -- sweep -----------------------------------------------------------------------------


def speedup_vs_cost(plt: Any, result: SweepResult, summary: Summary) -> Any:
    """Speed-up vs per-item cost, one panel per item count, one line per target."""
    if not summary.targets or not summary.cost_workloads or not summary.counts:
        return None
    costs = [summary.measured_cost[w] for w in summary.cost_workloads]
    reach = _reach([r.speedup for r in result.rows if r.kind != "reference"])
    figure, axes = _panels(plt, len(summary.counts))
    for ax, n in zip(axes, summary.counts, strict=True):
        for target in _ordered(summary.targets):
            points = sorted(
                (summary.measured_cost[workload_of(r)], r.speedup)
                for r in _rows(result, target)
                if r.n_items == n and workload_of(r).on_cost_axis
            )
            if points:
                _speedup_line(ax, points, target, reach)
        _speedup_axis(ax, reach)
        _cost_ticks(ax, costs)
        ax.set_title(f"{n:,} items per call")
        ax.set_xlabel("per-item cost (serial)")
    _legend(figure, axes, [_edge_note(plt)])
    figure.suptitle("Speed-up over serial map vs per-item cost (above 1x: faster than serial)")
    return figure


def speedup_heatmap(plt: Any, result: SweepResult, summary: Summary) -> Any:
    """Speed-up over per-item cost x item count, one heatmap per target."""
    if not summary.targets or not summary.cost_workloads or not summary.counts:
        return None
    from matplotlib.colors import TwoSlopeNorm

    targets = _ordered(summary.targets)
    figure, axes = _panels(plt, len(targets), width=4.6, height=3.6)
    top = math.log2(max(2, result.config.workers)) + 0.5
    norm = TwoSlopeNorm(vmin=-4.0, vcenter=0.0, vmax=top)
    image = None
    for ax, target in zip(axes, targets, strict=True):
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
        ax.set_title(label(target), color=style(target).color, fontweight="bold")
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
    targets = _ordered(summary.parallel_targets)
    if not targets or not summary.cost_workloads or not summary.counts:
        return None
    figure, ax = plt.subplots(figsize=(9.5, 6), layout="constrained")
    costs = [summary.measured_cost[w] for w in summary.cost_workloads]
    smallest, largest = summary.counts[0], summary.counts[-1]
    step = 1.35  # one row per target inside each band, so no two markers overlap
    top = largest * 1.8
    bottom = smallest / 1.8
    for row, target in enumerate(targets):
        look = style(target).line()
        measured, edges = [], []
        for w in summary.cost_workloads:
            c = summary.by_cost[target][w]
            if c.kind == "between" and c.at is not None:
                measured.append((summary.measured_cost[w], c.at))
            elif c.kind == "never":
                edges.append((summary.measured_cost[w], top * step**row))
            elif c.kind == "below":
                edges.append((summary.measured_cost[w], bottom / step**row))
        if measured:
            ax.plot(*zip(*sorted(measured), strict=True), ms=7, lw=1.8, **look)
        else:
            ax.plot([], [], **look)
        if edges:
            ax.plot(*zip(*edges, strict=True), ls="", ms=7, clip_on=False,
                    **{k: v for k, v in look.items() if k not in ("ls", "label")})  # fmt: skip
        _model_line(ax, summary, target, look["color"])
    high = top * step ** len(targets)
    low = bottom / step ** len(targets)
    ax.axhspan(top / step**0.5, high, color="grey", alpha=0.15, lw=0)
    ax.axhspan(low, bottom * step**0.5, color=FASTER, alpha=0.10, lw=0)
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ticks = [10.0**e for e in range(0, 12) if smallest / 1.5 <= 10.0**e <= largest * 1.5]
    ax.set_yticks(ticks, [f"{t:,.0f}" for t in ticks])
    ax.minorticks_off()
    side = ax.get_yaxis_transform()  # x in axes fractions, y in data
    ax.text(-0.015, math.sqrt(top * high), f"not even\nat {largest:,}", transform=side,
            fontsize=8, ha="right", va="center")  # fmt: skip
    ax.text(-0.015, math.sqrt(low * bottom), f"already\nat {smallest:,}", transform=side,
            fontsize=8, ha="right", va="center")  # fmt: skip
    _cost_ticks(ax, costs)
    ax.set_xlabel("per-item cost (serial)")
    ax.set_ylabel("items needed to beat serial map")
    ax.grid(True, which="major", alpha=0.3)
    model = plt.Line2D([], [], color="black", **MODEL_STYLE)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend([*handles, model], [*labels, "fitted model (dotted, in each colour)"],
              fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # fmt: skip
    ax.set_title("Crossover: below a curve serial wins, above it the target wins")
    return figure


def _model_line(ax: Any, summary: Summary, target: str, color: str) -> None:
    predicted = summary.model_breakeven.get(target, {})
    points = [
        (summary.measured_cost[w], predicted[w])
        for w in summary.cost_workloads
        if predicted.get(w) is not None
    ]
    if points:
        ax.plot(*zip(*points, strict=True), color=color, **MODEL_STYLE)


def payload(plt: Any, result: SweepResult, summary: Summary) -> Any:
    """Speed-up vs item size (the payload workload), one panel per item count."""
    rows = [r for r in result.rows if r.workload == "payload" and r.kind != "reference"]
    if not rows or not summary.targets:
        return None
    counts = sorted({r.n_items for r in rows})
    sizes = sorted({r.param for r in rows})
    reach = _reach([r.speedup for r in rows])
    figure, axes = _panels(plt, len(counts), width=5.5, height=4.0)
    for ax, n in zip(axes, counts, strict=True):
        for target in summary.targets:
            points = sorted(
                (r.param, r.speedup) for r in rows if r.target == target and r.n_items == n
            )
            if points:
                _speedup_line(ax, points, target, reach)
        _speedup_axis(ax, reach)
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([format_bytes(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("item size (pickled)")
        ax.set_title(f"{n:,} items per call")
    _legend(figure, axes, [_edge_note(plt)])
    cost = format_seconds(result.config.payload_cost_us * 1e-6)
    figure.suptitle(f"Serialization: ~{cost} of work per item, growing items")
    return figure


def model_fit(plt: Any, result: SweepResult, summary: Summary) -> Any:
    """Each model's predicted time against the measured time (on the diagonal = exact)."""
    if not summary.residuals:
        return None
    figure, ax = plt.subplots(figsize=(8, 6), layout="constrained")
    low, high = math.inf, 0.0
    for target in _ordered(list(summary.residuals)):
        points = summary.residuals[target]
        measured = [r.observation.seconds for r in points]
        predicted = [max(r.predicted, 1e-7) for r in points]
        low = min(low, *measured, *predicted)
        high = max(high, *measured, *predicted)
        rms = summary.models[target].quality.get("rms_rel", math.nan)
        look = style(target).line()
        look["label"] = f"{look['label']} (rms {rms:.0%})"
        ax.plot(measured, predicted, ms=5, alpha=0.85, **{**look, "ls": ""})
    ax.plot([low, high], [low, high], color="black", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured seconds (median of warm calls)")
    ax.set_ylabel("model's prediction (seconds)")
    ax.set_title("Fitted overhead model: predicted vs measured (on the diagonal: exact)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


@dataclass
class ColdLine:
    """One target's run in a cold-start figure.

    Attributes:
        name: the target.
        totals: total seconds after call 1, 2, ... (start-up in the first).
        measured: how many of those calls were measured (the rest extrapolated).
        breakeven: from how many calls it beats serial map (None: never).
    """

    name: str
    totals: list[float]
    measured: int
    breakeven: int | None


def cold_start(plt: Any, result: SweepResult, summary: Summary) -> Any:
    """Total time of K calls vs K for one cell: start-up (cold table) + K warm calls."""
    from parmap.bench._verdict import SERIAL, breakeven_calls

    startups = {c.target: c.startup_seconds for c in result.cold if c.target not in SERIAL}
    reference = _cold_cell(result, startups)
    if reference is None:
        return None
    same = (reference.workload, reference.param, reference.n_items)
    rows = [r for r in result.rows
            if r.target in startups and (r.workload, r.param, r.n_items) == same]  # fmt: skip
    serial = reference.seconds
    found = {
        r.target: breakeven_calls([startups[r.target] + r.seconds], [serial], r.seconds, serial)
        for r in rows
    }
    calls = max(100, 3 * max((k for k in found.values() if k is not None), default=0))
    lines = [ColdLine("map", [serial * k for k in range(1, calls + 1)], calls, None)]
    for r in sorted(rows, key=lambda r: is_peer(r.target)):
        totals = [startups[r.target] + r.seconds * k for k in range(1, calls + 1)]
        lines.append(ColdLine(r.target, totals, calls, found[r.target]))
    title = (
        f"Cold start: {reference.label} x {reference.n_items:,} items per call "
        f"(serial map {format_seconds(serial)} a call)"
    )
    note = "start-up from the cold-start table (first call - warm call), then K warm calls"
    return _cold_figure(plt, lines, None, title, note)


def _cold_cell(result: SweepResult, startups: dict[str, float]) -> Row | None:
    """The cell to draw: a call of about 0.1 s (a GA generation, say), preferring cells
    where some target with a cold start beats serial warm."""
    candidates = [
        r for r in result.rows if r.kind == "reference" and r.workload in ("onemax", "cpu")
    ]
    if not candidates or not startups:
        return None
    wins = {
        (r.workload, r.param, r.n_items)
        for r in result.rows
        if r.target in startups and r.speedup > 1
    }

    def rank(r: Row) -> tuple[bool, float, int]:
        distance = abs(math.log(max(r.seconds, 1e-9) / 0.1))
        return ((r.workload, r.param, r.n_items) not in wins, distance, -r.n_items)

    return min(candidates, key=rank)


def _cold_figure(
    plt: Any, lines: Sequence[ColdLine], calls: int | None, title: str, note: str
) -> Any:
    figure, ax = plt.subplots(figsize=(9.5, 6), layout="constrained")
    for line in lines:
        look = style(line.name).line()
        text = look.pop("label")
        if line.name not in ("map", "serial"):
            text += ": " + _pays_off(line.breakeven)
        ks = list(range(1, len(line.totals) + 1))
        kept = line.measured
        ax.plot(ks[:kept], line.totals[:kept], lw=1.8, label=text, markevery=0.12, ms=6, **look)
        if kept < len(line.totals):
            ax.plot(ks[kept - 1 :], line.totals[kept - 1 :], lw=1.4,
                    **{**look, "ls": ":", "marker": ""})  # fmt: skip
        if line.breakeven is not None and line.breakeven <= len(line.totals):
            k = line.breakeven
            ax.plot([k], [line.totals[k - 1]], marker="o", ms=11, ls="", color=look["color"],
                    markerfacecolor="none", markeredgewidth=2.2, zorder=5)  # fmt: skip
    if calls is not None:
        ax.axvline(calls, color="grey", ls="--", lw=1)
        ax.text(calls, 0.98, f" your run: {calls:,} calls", transform=ax.get_xaxis_transform(),
                fontsize=8, va="top", color="grey")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("calls in the run (K)")
    ax.set_ylabel("total wall time of the run, start-up included (s)")
    ax.grid(True, which="major", alpha=0.3)
    marker = plt.Line2D([], [], ls="", marker="o", ms=11, color="grey", markerfacecolor="none",
                        markeredgewidth=2.2)  # fmt: skip
    extrapolated = plt.Line2D([], [], color="grey", ls=":")
    handles, labels = ax.get_legend_handles_labels()
    handles += [marker, extrapolated]
    labels += ["break-even: from here on faster than serial map", "extrapolated: + warm calls"]
    ax.legend(handles, labels, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.suptitle(title, fontsize=11)
    ax.set_title(note, fontsize=8, color="grey")
    return figure


def _pays_off(k: int | None) -> str:
    if k is None:
        return "never pays off"
    return "pays off from the 1st call" if k == 1 else f"pays off from {k:,} calls"


# -- the user's function ---------------------------------------------------------------


def fn_speedup(plt: Any, result: FnResult, found: Verdict) -> Any:
    """Warm speed-up over serial map vs items per call, one line per target, with ranges."""
    names = [n for n in result.config.targets if found.figures[n].ladder]
    if not names:
        return None
    figure, ax = plt.subplots(figsize=(9.5, 5.5), layout="constrained")
    values = [c.speedup for c in result.warm] + [v for c in result.warm for v in c.spread]
    reach = _reach(values)
    for position, name in enumerate(names):
        cells = sorted(found.figures[name].ladder, key=lambda c: c.n_items)
        shift = 1.0 + 0.025 * (position - (len(names) - 1) / 2)  # ranges side by side
        points = [(c.n_items * shift, c.speedup) for c in cells]
        _speedup_line(ax, points, name, reach)
        color = style(name).color
        for (x, _), cell in zip(points, cells, strict=True):
            low, high = (min(max(v, 1 / reach), reach) for v in cell.spread)
            ax.plot([x, x], [low, high], color=color, lw=1, alpha=0.6)
    _speedup_axis(ax, reach)
    ax.set_xscale("log")
    ax.set_xticks(result.counts)
    ax.set_xticklabels([f"{n:,}" for n in result.counts])
    ax.minorticks_off()
    ax.axvline(result.n_items, color="grey", ls="--", lw=1)
    ax.set_xlabel("items per call (the first n of your items)")
    spread = plt.Line2D([], [], color="grey", lw=1)
    _legend(figure, [ax], [(spread, "range over the timed pairs"), _edge_note(plt)])
    ax.set_title(
        f"{result.config.fn_spec}: warm speed-up over serial map "
        f"(pools running; serial {format_seconds(result.serial_call)} at {result.n_items:,} items)",
        fontsize=10,
    )
    return figure


def fn_cold_start(plt: Any, result: FnResult, found: Verdict) -> Any:
    """The run's total wall time vs calls, on one serial scale: measured up to K, then
    extrapolated."""
    figures = [f for f in found.figures.values() if f.ran and f.name != "map"]
    if not figures or not found.reference_call:
        return None
    finite = [f.breakeven for f in figures if f.breakeven is not None]
    calls = max(result.config.calls, 10, 3 * max(finite, default=0))
    reference = found.reference_call
    lines = [ColdLine("map", [reference * k for k in range(1, calls + 1)], calls, None)]
    for f in figures:
        scaled = f.scaled_per_call
        per_call = scaled + [f.warm_call * f.scale] * (calls - len(scaled))
        totals = list(itertools.accumulate(per_call))
        lines.append(ColdLine(f.name, totals, len(scaled), f.breakeven))
    title = (
        f"{result.config.fn_spec}: runs of calls over {result.n_items:,} items, "
        "each target started cold in a fresh process"
    )
    note = (
        "solid: measured (median of the cold runs); dotted: + its median warm call\n"
        f"each run scaled to a serial map call of {format_seconds(reference)} by the serial "
        "calls timed beside it, so runs made at different moments compare"
    )
    return _cold_figure(plt, lines, result.config.calls, title, note)
