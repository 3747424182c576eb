"""The output folder: raw results (JSON, CSV), models, a Markdown report, a text summary.

<out>/results.json     config, machine, calibration, every row, cold starts, models
<out>/results.csv      one line per (target, workload, item count)
<out>/residuals.csv    each fitted model's prediction next to each measured point
<out>/models.json      the fitted models (parmap._model.load_models reads it)
<out>/report.md        the tables below and the plots
<out>/*.png            see parmap.bench._plots
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from parmap._model import save_models
from parmap.backends._base import default_workers
from parmap.bench._summary import Summary, quality, workload_of
from parmap.bench._sweep import (
    WORKLOAD_KINDS,
    Row,
    SweepResult,
    Workload,
    format_bytes,
    format_seconds,
)

__all__ = ["machine_info", "text_summary", "write_outputs"]

PACKAGES = (
    "parmap-backends", "cloudpickle", "loky", "tqdm", "ray", "dask", "distributed",
    "joblib", "numpy", "matplotlib", "psutil", "deap",
)  # fmt: skip


def machine_info() -> dict[str, Any]:
    """CPU count, memory, OS, Python and package versions of this machine."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": default_workers(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
        "time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "packages": {name: _version(name) for name in PACKAGES},
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_outputs(
    result: SweepResult,
    summary: Summary,
    out: Path,
    machine: dict[str, Any],
    command: str,
    plots: bool = True,
) -> list[Path]:
    """Write every output file into ``out`` (created if needed).

    Args:
        result: the sweep's measurements.
        summary: their analysis.
        out: the output folder.
        machine: :func:`machine_info`'s facts.
        command: the command line, for the report.
        plots: also draw the PNG plots.

    Returns:
        The paths written.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _write_json(out / "results.json", result, summary, machine, command),
        _write_csv(out / "results.csv", result.rows),
        _write_residuals(out / "residuals.csv", summary),
    ]
    if summary.models:
        save_models(out / "models.json", summary.models, machine)
        written.append(out / "models.json")
    images: list[Path] = []
    if plots:
        from parmap.bench._plots import draw_all

        try:
            images = draw_all(result, summary, out)
        except Exception as exc:  # a plot must not cost the measurements
            result.failures.append({"target": "*", "stage": "plots", "error": repr(exc)})
    report = out / "report.md"
    report.write_text(markdown(result, summary, machine, command, images))
    return [*written, *images, report]


def _write_json(
    path: Path, result: SweepResult, summary: Summary, machine: dict[str, Any], command: str
) -> Path:
    document = {
        "schema": 1,
        "command": command,
        "machine": machine,
        **result.to_dict(),
        "models": {name: model.to_dict() for name, model in summary.models.items()},
        "crossovers": {
            target: {
                "by_cost": {w.label: vars(c) for w, c in summary.by_cost[target].items()},
                "by_count": {str(n): vars(c) for n, c in summary.by_count[target].items()},
            }
            for target in summary.targets
        },
    }
    path.write_text(json.dumps(document, indent=1, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)


CSV_FIELDS = (
    "target", "kind", "workload", "param", "label", "n_items", "n_measured", "scaled",
    "item_bytes", "per_item_cost", "serial_seconds", "seconds", "measured_seconds",
    "speedup", "workers", "times", "serial_times",
)  # fmt: skip


def _write_csv(path: Path, rows: Sequence[Row]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_FIELDS)
        for row in rows:
            values = [getattr(row, name) for name in CSV_FIELDS]
            values[-2] = ";".join(f"{t:.6g}" for t in row.times)
            values[-1] = ";".join(f"{t:.6g}" for t in row.serial_times)
            writer.writerow(values)
    return path


def _write_residuals(path: Path, summary: Summary) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["target", "workload", "n_items", "per_item_cost", "item_bytes", "measured",
             "predicted", "relative_error"]
        )  # fmt: skip
        for target, points in summary.residuals.items():
            for r in points:
                o = r.observation
                writer.writerow(
                    [target, o.label, o.n_items, f"{o.per_item_cost:.6g}", o.item_bytes,
                     f"{o.seconds:.6g}", f"{r.predicted:.6g}", f"{r.relative:.4f}"]
                )  # fmt: skip
    return path


# -- tables --------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def cost_label(summary: Summary, workload: Workload) -> str:
    """``cpu 100 µs (measured 121 µs)``: the nominal label with the measured cost."""
    return f"{workload.label} ({format_seconds(summary.measured_cost[workload])})"


def crossover_by_cost_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: smallest item count from which each target beats serial."""
    targets = summary.parallel_targets
    headers = ["per-item cost (measured)", *targets]
    rows = [
        [cost_label(summary, w), *(summary.by_cost[t][w].label() for t in targets)]
        for w in summary.cost_workloads
    ]
    return headers, rows


def crossover_by_count_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: smallest per-item cost from which each target beats serial."""
    targets = summary.parallel_targets
    headers = ["items", *targets]
    rows = []
    for n in summary.counts:
        cells = [summary.by_count[t][n].label(format_seconds) for t in targets]
        rows.append([f"{n:,}", *cells])
    return headers, rows


def _cells(result: SweepResult) -> list[tuple[Workload, int]]:
    """The measured (workload, item count) cells, in table order."""
    return sorted(
        {(workload_of(r), r.n_items) for r in result.rows if r.kind == "reference"},
        key=lambda c: (_order(c[0]), c[0].param, c[1]),
    )


def _index(result: SweepResult) -> dict[tuple[str, Workload, int], Row]:
    return {(r.target, workload_of(r), r.n_items): r for r in result.rows}


def _speedup_rows(result: SweepResult, summary: Summary) -> list[list[str]]:
    index = _index(result)
    rows = []
    for workload, n in _cells(result):
        serial = index[("map", workload, n)].seconds
        line = [workload.label, f"{n:,}", format_seconds(serial)]
        for target in summary.targets:
            row = index.get((target, workload, n))
            line.append("—" if row is None else _speedup_cell(row))
        rows.append(line)
    return rows


def _order(workload: Workload) -> int:
    return WORKLOAD_KINDS.index(workload.kind)


def _speedup_cell(row: Row) -> str:
    text = f"{row.speedup:.2f}"
    if row.speedup > 1:
        text = f"**{text}**"
    return text + ("*" if row.scaled else "")


def _cold_rows(result: SweepResult) -> list[list[str]]:
    return [
        [c.target, c.kind, format_seconds(c.cold_seconds), format_seconds(c.warm_seconds),
         format_seconds(c.startup_seconds)]
        for c in result.cold
    ]  # fmt: skip


def _baseline_rows(result: SweepResult, summary: Summary) -> tuple[list[str], list[list[str]]]:
    baselines = [t for t in summary.targets if result.targets[t]["kind"] == "baseline"]
    ours = [t for t in summary.parallel_targets if result.targets[t]["kind"] == "parmap"]
    headers = ["workload", "items", "serial map", "best parmap", *baselines]
    index = _index(result)
    rows = []
    for workload, n in _cells(result):
        candidates = [index[(t, workload, n)] for t in ours if (t, workload, n) in index]
        if not candidates:
            continue
        best = min(candidates, key=lambda r: r.seconds)
        line = [workload.label, f"{n:,}", format_seconds(best.serial_seconds),
                f"{best.target} {format_seconds(best.seconds)}"]  # fmt: skip
        for baseline in baselines:
            row = index.get((baseline, workload, n))
            line.append("—" if row is None else _versus(row, best))
        rows.append(line)
    return headers, rows


def _versus(row: Row, best: Row) -> str:
    mark = "*" if row.scaled else ""
    return f"{format_seconds(row.seconds)}{mark} ({row.seconds / best.seconds:.2g}x)"


def _model_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for target, m in summary.models.items():
        rows.append(
            [target, m.batching, str(m.workers), format_seconds(m.fixed),
             format_seconds(m.per_item), f"{format_seconds(m.per_byte * 1e6)}/MB",
             format_seconds(m.per_batch), f"{m.work_factor:.2f}",
             f"{m.quality.get('rms_rel', math.nan):.0%}",
             f"{m.quality.get('max_rel', math.nan):.0%}", f"{m.quality.get('points', 0):.0f}"]
        )  # fmt: skip
    return rows


def _residual_rows(summary: Summary, target: str) -> list[list[str]]:
    return [
        [r.observation.label, f"{r.observation.n_items:,}", format_seconds(r.observation.seconds),
         format_seconds(r.predicted), f"{r.relative:+.0%}"]
        for r in summary.residuals[target]
    ]  # fmt: skip


def markdown(
    result: SweepResult,
    summary: Summary,
    machine: dict[str, Any],
    command: str,
    images: Sequence[Path],
) -> str:
    """The report as Markdown."""
    config = result.config
    parts = [
        "# parmap benchmark report",
        "",
        f"`{command}` — {machine['time_utc']}, {config.mode} mode, "
        f"{format_seconds(result.elapsed)} of measuring.",
        "",
        f"Machine: {machine['cpus_usable']} usable CPUs ({machine['cpu_model']}), "
        f"{machine.get('memory_gib', '?')} GiB, {machine['platform']}, {machine['python']}. "
        f"Load average before/after: {_loads(result.load_before)} / {_loads(result.load_after)}. "
        "Packages: " + ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v) + ".",
        "",
        f"Workers: {config.workers}; each time is the median of {config.repeats} warm calls "
        "(pools started, function cost learned); cold starts are in their own table. "
        "**Speed-up** = time of plain serial `list(map(fn, items))` / time of the target "
        "(above 1 is faster than serial), the median of the ratios of serial and target "
        "calls timed one right after the other, so a burst of other load slows both. "
        "`*` = measured on fewer items and scaled.",
    ]
    if result.interrupted:
        parts += ["", "> **Interrupted (Ctrl-C): the tables show only what was measured.**"]
    warning = caution(result, machine["cpus_usable"])
    if warning:
        parts += ["", f"> **{warning}**"]
    parts += _crossover_section(summary)
    parts += ["", "## Speed-up over serial map", ""]
    headers = ["workload", "items", "serial map", *summary.targets]
    parts.append(_table(headers, _speedup_rows(result, summary)))
    parts += _cold_section(result)
    parts += _baseline_section(result, summary)
    parts += _model_section(summary)
    if images:
        parts += ["", "## Plots", ""]
        parts += [f"![{p.stem}]({p.name})" for p in images]
    parts += _quality_section(result, machine["cpus_usable"])
    parts += _problems_section(result)
    return "\n".join(parts) + "\n"


def _quality_section(result: SweepResult, cpus: int) -> list[str]:
    q = quality(result, cpus)
    serial = "not measured" if q.serial_range is None else "{:.2f}x-{:.2f}x".format(*q.serial_range)
    return [
        "",
        "## Measurement quality",
        "",
        f"- load average before / after: {_loads(result.load_before)} / "
        f"{_loads(result.load_after)} on {cpus} CPUs (our own workers add up to {cpus})",
        f"- parmap's serial backend vs serial map on cells of 5 ms or more: {serial} "
        "(same work, in-process: the spread is this run's noise)",
        f"- cells with a speed-up above the worker count (impossible): {len(q.impossible)}",
        f"- cells of 1 ms or more whose repeated serial calls varied by more than 1.5x: "
        f"{q.noisy} of {q.cells}",
    ]


def _loads(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values) or "n/a"


def _crossover_section(summary: Summary) -> list[str]:
    return [
        "",
        "## Crossover points",
        "",
        "Smallest item count from which each target beats serial map (at that count and "
        "every larger one measured), per per-item cost; `≈` interpolated between grid "
        "points on log-log axes, `≤` already at the smallest count, `>` not even at the "
        "largest. parmap's `serial` backend runs in the caller and is left out.",
        "",
        _table(*crossover_by_cost_rows(summary)),
        "",
        "Smallest per-item cost from which each target beats serial, per item count:",
        "",
        _table(*crossover_by_count_rows(summary)),
    ]


def _cold_section(result: SweepResult) -> list[str]:
    n = result.cold[0].n_items if result.cold else result.config.cold_items
    return [
        "",
        "## Cold start vs warm call",
        "",
        f"First call (workers or cluster starting) and then the median warm call, both "
        f"OneMax on {n} items; start-up = cold - warm. `cold_start.png` adds it to K warm "
        "calls of one cell and marks from how many calls each target pays off.",
        "",
        _table(["target", "kind", "cold first call", "warm call", "start-up"], _cold_rows(result)),
    ]


def _baseline_section(result: SweepResult, summary: Summary) -> list[str]:
    headers, rows = _baseline_rows(result, summary)
    if len(headers) == 4 or not rows:
        return []
    return [
        "",
        "## Baselines: what parmap's batching is worth",
        "",
        "Time of each baseline, and in brackets how many times the fastest parmap backend's "
        "time it is (above 1: parmap is faster). `ray-tasks` and `dask-map` submit one task "
        f"per item; they run at most {result.config.ray_cap} items per call, scaled up (`*`).",
        "",
        _table(headers, rows),
    ]


def _model_section(summary: Summary) -> list[str]:
    parts = [
        "",
        "## Fitted overhead model",
        "",
        "time ≈ fixed + per_item·n + per_byte·n·bytes + per_batch·batches + "
        "work_factor·cost·⌈n/workers⌉, fitted by non-negative least squares on relative "
        "errors (`models.json` holds the constants; `parmap._model.OverheadModel` "
        "predicts with them). rms/max: relative error of the predictions over the "
        "measured points.",
        "",
        _table(
            [
                "target",
                "batching",
                "workers",
                "fixed",
                "per item",
                "per byte",
                "per batch",
                "work factor",
                "rms err",
                "max err",
                "points",
            ],
            _model_rows(summary),
        ),
    ]
    for target, error in summary.model_errors.items():
        parts += ["", f"No model for {target}: {error}"]
    for target in summary.models:
        parts += [
            "",
            f"<details><summary>{target}: predicted vs measured</summary>",
            "",
            _table(
                ["workload", "items", "measured", "predicted", "error"],
                _residual_rows(summary, target),
            ),
            "",
            "</details>",
        ]
    return parts


def _problems_section(result: SweepResult) -> list[str]:
    parts: list[str] = []
    if result.skipped:
        parts += ["", "## Skipped cells", ""]
        parts += [
            f"- {s['target']}: {s['label']} x {s['n_items']:,}: {s['why']}" for s in result.skipped
        ]
    if result.failures:
        parts += ["", "## Failures", ""]
        parts += [f"- {f['target']} ({f['stage']}): `{f['error']}`" for f in result.failures]
    if result.warnings:
        parts += ["", "## Warnings raised while measuring", ""]
        parts += [f"- `{w}`" for w in result.warnings]
    return parts


def caution(result: SweepResult, cpus: int) -> str:
    """A warning when the run looks disturbed by other work, else ''."""
    notes = quality(result, cpus).cautions()
    if not notes:
        return ""
    return (
        "Caution: other work on the machine probably skewed these figures: "
        + "; ".join(notes)
        + ". Rerun when the machine is quiet."
    )


def text_summary(result: SweepResult, summary: Summary, out: Path) -> str:
    """What ``parmap bench`` prints at the end: crossovers, cold starts, where the files are."""
    lines = [""]
    if result.interrupted:
        lines += ["Interrupted: the results below cover only what was measured.", ""]
    if summary.parallel_targets and summary.cost_workloads:
        lines += ["Smallest item count from which each backend beats serial map:", ""]
        lines.append(_text_table(*crossover_by_cost_rows(summary)))
        lines.append("")
    if result.cold:
        lines.append(f"Cold start (first call) / warm call, OneMax x {result.cold[0].n_items}:")
        lines += [
            f"  {c.target:<14} {format_seconds(c.cold_seconds):>10} / "
            + format_seconds(c.warm_seconds)
            for c in result.cold
        ]
        lines.append("")
    for failure in result.failures:
        lines.append(f"failed: {failure['target']} ({failure['stage']}): {failure['error'][:200]}")
    if result.warnings:
        lines.append(f"{len(result.warnings)} distinct warning(s) while measuring: see the report")
    warning = caution(result, default_workers())
    if warning:
        lines += [warning, ""]
    best = _best_summary(result)
    if best:
        lines += [best, ""]
    lines.append(f"Report: {out / 'report.md'} (raw data: results.json, results.csv; plots *.png)")
    return "\n".join(lines)


def _best_summary(result: SweepResult) -> str:
    parallel = [r for r in result.rows if r.kind == "parmap" and r.target != "serial"]
    if not parallel:
        return ""
    best = max(parallel, key=lambda r: r.speedup)
    return (
        f"Best speed-up: {best.speedup:.2f}x ({best.target}, {best.label} x {best.n_items:,}; "
        f"{format_bytes(best.item_bytes)} per item)"
    )
