"""What ``parmap bench --fn`` prints and writes.

<out>/results.json   config, machine, auto's decision, every warm pair, every cold call
<out>/report.md      the verdict, the table per target, the warm ladder, the plots
<out>/fn_speedup.png, <out>/cold_start.png   see parmap.bench._plots
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from parmap.backends._base import default_workers
from parmap.bench._report import _jsonable, _loads, _table, _text_table
from parmap.bench._style import label
from parmap.bench._sweep import format_seconds
from parmap.bench._userfn import FnResult
from parmap.bench._verdict import SERIAL, Z95, Figures, Verdict

__all__ = ["fn_text", "write_fn_outputs"]

HEADERS = (
    "target", "warm call", "x serial (range)", "start-up", "first result",
    "run of K calls", "x serial ±95% (range)", "pays off from",
)  # fmt: skip


def _range(low: float, high: float) -> str:
    return f"{low:.2f}-{high:.2f}"


def _name(name: str) -> str:
    return "serial map" if name == "map" else label(name)


def _row(found: Verdict, f: Figures, serial_call: float) -> list[str]:
    warm = f.warm
    if f.name == "map":
        warm_cells = [format_seconds(serial_call), "1.00"]
    elif warm is None:
        warm_cells = ["—", "—"]
    else:
        low, high = sorted(1 / s for s in warm.spread)
        warm_cells = [format_seconds(warm.seconds), f"{1 / warm.speedup:.2f} ({_range(low, high)})"]
    if not f.ran:
        return [_name(f.name), *warm_cells, "—", "—", "cold run failed", "—", "—"]
    startup = "—" if f.name == "map" else _seconds_range(f, "startup")
    total = _seconds_range(f, "total")
    pays = "—" if f.name in SERIAL else _calls(f.breakeven)
    ratio = f"{f.ratio:.2f}"
    if f.name != "map" and f.ratio_error is not None:
        ratio += f" ±{Z95 * f.ratio_error:.2f}"
    if len(f.runs) > 1 and f.name != "map":
        ratio += f" ({_range(*f.ratio_range)})"
    return [_name(f.name), *warm_cells, startup, format_seconds(f.first_call), total, ratio, pays]


def _seconds(value: float) -> str:
    return "0" if value < 1e-6 else format_seconds(value)


def _seconds_range(f: Figures, what: str) -> str:
    value = getattr(f, what)
    low, high = getattr(f, f"{what}_range")
    text = _seconds(value)
    if len(f.runs) > 1:
        text += f" ({_seconds(low)}-{_seconds(high)})"
    return text


def _calls(k: int | None) -> str:
    if k is None:
        return "never"
    return "the 1st call" if k == 1 else f"{k:,} calls"


def table_rows(result: FnResult, found: Verdict) -> list[list[str]]:
    """One row per target: warm call at N, start-up, first result, the run, break-even."""
    serial = [t for c in result.warm if c.n_items == result.n_items for t in c.serial_times]
    serial_call = sorted(serial)[len(serial) // 2] if serial else result.serial_call
    return [_row(found, found.figures[name], serial_call) for name in result.names]


def caution(result: FnResult) -> str:
    """A warning when the machine was busy before the run, else ''."""
    cpus = default_workers()
    load = result.load_before[0] if result.load_before else 0.0
    if load <= 0.5 * cpus:
        return ""
    return (
        f"Caution: the machine was busy when the run started (load average {load:.1f} on "
        f"{cpus} CPUs); ratios are paired with serial calls timed beside them, but the "
        "ranges are wide: rerun when the machine is quiet."
    )


def fn_text(result: FnResult, found: Verdict, out: Path) -> str:
    """What ``parmap bench --fn`` prints at the end."""
    config = result.config
    lines = [""]
    if result.interrupted:
        lines += ["Interrupted: the results below cover only what was measured.", ""]
    lines += [
        f"{config.fn_spec} over {result.n_items:,} items x {config.calls} calls, "
        f"{config.workers} workers (x serial: time / serial map's time; below 1 is faster):",
        "",
        _text_table(HEADERS, table_rows(result, found)),
        "",
        f"Verdict {found.headline}",
        *[f"  {line}" for line in found.lines],
    ]
    lines += [f"note: {note}" for note in result.notes]
    if caution(result):
        lines.append(caution(result))
    lines += [f"failed: {f['target']} ({f['stage']}): {f['error'][:200]}" for f in result.failures]
    lines += ["", f"Report: {out / 'report.md'} (raw data: results.json; plots *.png)"]
    return "\n".join(lines)


def write_fn_outputs(
    result: FnResult,
    found: Verdict,
    out: Path,
    machine: dict[str, Any],
    command: str,
    plots: bool = True,
) -> list[Path]:
    """Write results.json, report.md and the plots into ``out`` (created if needed).

    Args:
        result: what was measured.
        found: the verdict.
        out: the output folder.
        machine: machine facts (``parmap.bench._report.machine_info``).
        command: the command line, for the report.
        plots: also draw the PNG plots.

    Returns:
        The paths written.
    """
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "schema": 1,
        "command": command,
        "machine": machine,
        **result.to_dict(),
        "verdict": {
            "headline": found.headline,
            "lines": found.lines,
            "best": found.best,
            "tied": found.tied,
            "auto_pick": found.auto_pick,
            "breakeven_calls": {n: f.breakeven for n, f in found.figures.items() if f.ran},
        },
    }
    written = [out / "results.json"]
    written[0].write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")
    images: list[Path] = []
    if plots:
        from parmap.bench._plots import draw_fn

        try:
            images = draw_fn(result, found, out)
        except Exception as exc:  # a plot must not cost the measurements
            result.failures.append({"target": "*", "stage": "plots", "error": repr(exc)})
    report = out / "report.md"
    report.write_text(markdown(result, found, machine, command, images))
    return [*written, *images, report]


def markdown(
    result: FnResult, found: Verdict, machine: dict[str, Any], command: str, images: Sequence[Path]
) -> str:
    """The report as Markdown."""
    config = result.config
    parts = [
        f"# parmap benchmark: `{config.fn_spec}`",
        "",
        f"`{command}` — {machine['time_utc']}, {format_seconds(result.elapsed)} of measuring.",
        "",
        f"Machine: {machine['cpus_usable']} usable CPUs ({machine['cpu_model']}), "
        f"{machine['platform']}, {machine['python']}. Load average before/after: "
        f"{_loads(result.load_before)} / {_loads(result.load_after)}.",
        "",
        f"Items: {result.n_items:,} from `{config.items_spec}`, "
        f"{result.item_bytes:,} bytes each pickled; one serial map call over them took "
        f"{format_seconds(result.serial_call)}. A run is {config.calls} calls over those items "
        f"(a GA of {config.calls} generations); {config.workers} workers.",
    ]
    if result.interrupted:
        parts += ["", "> **Interrupted (Ctrl-C): the tables show only what was measured.**"]
    if caution(result):
        parts += ["", f"> **{caution(result)}**"]
    parts += ["", "## Verdict", "", f"**{found.headline}**", ""]
    parts += [f"- {line}" for line in found.lines]
    parts += _table_section(result, found)
    parts += _ladder_section(result, found)
    if result.auto is not None:
        parts += ["", "## What auto predicted", "", "```", result.auto.text, "```"]
    if images:
        parts += ["", "## Plots", ""]
        parts += [f"![{p.stem}]({p.name})" for p in images]
    parts += _problems(result)
    return "\n".join(parts) + "\n"


def _table_section(result: FnResult, found: Verdict) -> list[str]:
    return [
        "",
        "## Per target",
        "",
        "**warm call**: the median of calls with the pools running, timed in adjacent pairs "
        "with serial map (so a burst of other load slows both); **x serial**: time over "
        "serial map's (below 1 is faster), the median pair and the range over the pairs. "
        "**start-up**, **first result** and the **run**: each target in a fresh process "
        "(cold), the median of its cold runs and their range; start-up = first call minus "
        "the run's median warm call; the run's **x serial** is its time over the serial map "
        "calls timed right after each of its calls in the same process, ± the 95% interval "
        "from the scatter of those pairs (the warm calls), then the range over the runs. "
        "**pays off from**: the number of calls from which the run is shorter than serial "
        "map's for good. "
        "**serial map**: those serial calls, from every run.",
        "",
        _table(HEADERS, table_rows(result, found)),
    ]


def _ladder_section(result: FnResult, found: Verdict) -> list[str]:
    names = [n for n in result.config.targets if found.figures[n].ladder]
    if not names:
        return []
    rows = []
    for n in result.counts:
        cells = {c.target: c for c in result.warm if c.n_items == n}
        serial = next((c.serial_seconds for c in cells.values()), None)
        line = [f"{n:,}", "—" if serial is None else format_seconds(serial)]
        for name in names:
            cell = cells.get(name)
            line.append("—" if cell is None else f"{cell.speedup:.2f}")
        rows.append(line)
    return [
        "",
        "## Warm speed-up by item count",
        "",
        "Speed-up over serial map (above 1 is faster) on the first n items, pools running.",
        "",
        _table(["items", "serial map", *map(label, names)], rows),
    ]


def _problems(result: FnResult) -> list[str]:
    parts: list[str] = []
    if result.notes:
        parts += ["", "## Notes", ""] + [f"- {note}" for note in result.notes]
    if result.failures:
        parts += ["", "## Failures", ""]
        parts += [f"- {f['target']} ({f['stage']}): `{f['error']}`" for f in result.failures]
    if result.warnings:
        parts += ["", "## Warnings raised while measuring", ""]
        parts += [f"- `{w}`" for w in result.warnings]
    return parts
