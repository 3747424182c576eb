"""``parmap bench`` / ``python -m parmap.bench``: arguments, the run, the summary."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from parmap import _registry
from parmap.backends._base import default_workers
from parmap.bench._sweep import WORKLOAD_KINDS, SweepConfig, format_seconds, run_sweep
from parmap.bench._targets import BASELINES, DEFAULT_BASELINES, baseline_installed

__all__ = ["build_parser", "main", "make_config"]

QUICK: dict[str, Any] = {
    "costs_us": [10.0, 100.0, 1000.0, 10000.0],
    "counts": [10, 100, 1000, 10000],
    "symreg_points": [200],
    "payload_sizes": [100, 10_000, 1_000_000],
    "payload_counts": [100],
    "repeats": 3,
    "cell_budget": 0.5,
    "ray_cap": 500,
}
FULL: dict[str, Any] = {
    "costs_us": [3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0],
    "counts": [10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000],
    "symreg_points": [200, 2000],
    "payload_sizes": [100, 1000, 10_000, 100_000, 1_000_000],
    "payload_counts": [100, 1000],
    "repeats": 5,
    "cell_budget": 4.0,
    "ray_cap": 2000,
}
_FIRST = {"serial": 0, "multiprocessing": 1, "loky": 2}
_LAST = {
    "dask": 1,
    "dask-map": 2,
    "ray": 3,
    "ray-tasks": 4,
}  # threaded engines after the fork-based pools

DESCRIPTION = """\
Measure from which per-item cost and item count each parmap backend beats plain
serial map on this machine, with cold starts, baselines (multiprocessing.Pool.map,
joblib, naive Ray tasks, Dask's client.map) and a fitted overhead model. Writes
results.json, results.csv, models.json, report.md and PNG plots to --out.

With --fn, measure your own function instead, on your own items: every installed
backend and auto, warm and cold, for a run of --calls calls of --items items (a GA
of K generations), beside plain map; prints a verdict, writes the report and plots:

  parmap bench --fn examples/onemax.py:fitness \\
               --items-from examples/onemax.py:population --items 300 --calls 40
"""
FN_ONLY = ("items_from", "items", "calls", "cold_runs", "cold_budget")
SWEEP_ONLY = ("quick", "costs", "counts", "workloads", "cell_budget", "calibrate")


def _csv_of(parse: Callable[[str], object]) -> Callable[[str], list[object]]:
    def parse_list(text: str) -> list[object]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        return [parse(p) for p in parts]

    return parse_list


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a positive whole number (>= 1)")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``parmap bench``."""
    parser = argparse.ArgumentParser(
        prog="parmap bench", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="a small grid: about 2-3 minutes on 2 cores (default: the full grid, ~30+ minutes)",
    )
    add(
        "--backends",
        type=_csv_of(str),
        metavar="NAME,...",
        help="parmap backends to measure (default: every installed one that loads: "
        + ", ".join(_registry.backend_names())
        + ")",
    )
    add(
        "--baselines",
        type=_csv_of(str),
        metavar="NAME,...",
        help="baselines (peers) beside them, or 'none': "
        + ", ".join(BASELINES)
        + "\n(default: the installed ones of "
        + ", ".join(DEFAULT_BASELINES)
        + "; with --fn: none)",
    )
    add(
        "--workers",
        type=_positive_int,
        default=default_workers(),
        help=f"workers per backend (default: the usable CPUs, {default_workers()})",
    )
    add(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default: ./bench-results; with --fn: ./bench-results/fn-NAME)",
    )
    add("--repeats", type=_positive_int, help="timed warm calls per cell; the median is kept")
    add(
        "--costs",
        type=_csv_of(_positive_float),
        metavar="US,...",
        help="per-item costs of the cpu workload, in microseconds (e.g. 10,100,1000)",
    )
    add(
        "--counts",
        type=_csv_of(_positive_int),
        metavar="N,...",
        help="item counts (population sizes), e.g. 10,100,1000",
    )
    add(
        "--workloads",
        type=_csv_of(str),
        metavar="NAME,...",
        help="workloads to sweep (default: all of " + ", ".join(WORKLOAD_KINDS) + ")",
    )
    add(
        "--cell-budget",
        type=_positive_float,
        metavar="SECONDS",
        help="skip cells with more serial work than this (quick: 0.5, full: 4)",
    )
    add(
        "--calibrate",
        action="store_true",
        help="measure this machine for backend='auto' (under a minute) and write its\n"
        "calibration file ($PARMAP_CALIBRATION or ~/.cache/parmap/calibration.json)",
    )
    _add_fn_options(parser)
    add("--no-plots", action="store_true", help="do not draw the PNG plots")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser  # fmt: skip


def _add_fn_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "your own function (--fn)",
        "Cold: each target in a fresh process, all K calls timed (the first one starts the\n"
        "pool or cluster); warm: in this process, pools running, timed in pairs with map\n"
        "on the first N, N/3, N/10 ... items. The verdict names the shortest run.",
    )
    add = group.add_argument
    add(
        "--fn",
        metavar="SPEC",
        help="your function: package.module:function or path/to/file.py:function\n"
        "(a dotted attribute works too: module:toolbox.evaluate); called as fn(item)",
    )
    add(
        "--items-from",
        "--args-from",
        dest="items_from",
        metavar="SOURCE",
        help="your sample items: module:factory (called once, as factory(N) with --items),\n"
        "module:NAME (a list), or a .json / .pkl file holding a list",
    )
    add(
        "--items",
        type=_positive_int,
        metavar="N",
        help="items per call: the first N of the source's (default: all of them)",
    )
    add(
        "--calls",
        type=_positive_int,
        default=10,
        metavar="K",
        help="calls in a run, e.g. generations of a GA (default: 10)",
    )
    add(
        "--cold-runs",
        type=_positive_int,
        default=3,
        metavar="R",
        help="cold runs per target, fewer once a target spent --cold-budget (default: 3)",
    )
    add(
        "--cold-budget",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="no further cold run of a target once its runs took this long (default: 30)",
    )


def _check_names(
    parser: argparse.ArgumentParser, option: str, names: Sequence[str], valid: Sequence[str]
) -> None:
    for name in names:
        if name not in valid:
            parser.error(f"{option}: unknown name {name!r}; valid names are: {', '.join(valid)}")


def _backends(parser: argparse.ArgumentParser, requested: list[str] | None) -> list[str]:
    if requested is None:
        names = sorted(_registry.available_backends(), key=lambda n: (_FIRST.get(n, 9), n))
        return [name for name in names if _loads(name)]
    _check_names(parser, "--backends", requested, _registry.backend_names())
    for name in requested:
        if name == _registry.AUTO:
            continue
        try:
            _registry.backend_class(name)
        except Exception as exc:
            parser.error(f"--backends: backend {name!r} cannot be used here: {exc}")
    return list(dict.fromkeys(requested))


def _loads(name: str) -> bool:
    try:
        _registry.backend_class(name)
    except Exception as exc:
        print(f"parmap bench: leaving out backend {name!r}: {exc}", file=sys.stderr)
        return False
    return True


def _baselines(parser: argparse.ArgumentParser, requested: list[str] | None) -> list[str]:
    if requested is None:
        return [name for name in DEFAULT_BASELINES if baseline_installed(name)]
    if requested == ["none"]:
        return []
    _check_names(parser, "--baselines", requested, [*BASELINES, "none"])
    for name in requested:
        if name != "none" and not baseline_installed(name):
            parser.error(
                f"--baselines: {name!r} needs {', '.join(BASELINES[name])}, which is not "
                "installed; install it or leave it out"
            )
    return [name for name in dict.fromkeys(requested) if name != "none"]


def make_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> SweepConfig:
    """Turn parsed arguments into a :class:`SweepConfig` (errors go to ``parser.error``)."""
    grid = QUICK if args.quick else FULL
    workloads = list(WORKLOAD_KINDS) if args.workloads is None else args.workloads
    _check_names(parser, "--workloads", workloads, WORKLOAD_KINDS)
    targets = _backends(parser, args.backends) + _baselines(parser, args.baselines)
    if not targets:
        parser.error("nothing to measure: give at least one backend or baseline")
    targets.sort(key=lambda name: _LAST.get(name, 0))
    return SweepConfig(
        targets=targets,
        workers=args.workers,
        costs_us=sorted(set(args.costs or grid["costs_us"])),
        counts=sorted(set(args.counts or grid["counts"])),
        workloads=list(dict.fromkeys(workloads)),
        symreg_points=grid["symreg_points"],
        payload_sizes=grid["payload_sizes"],
        payload_counts=grid["payload_counts"],
        repeats=args.repeats or grid["repeats"],
        cell_budget=args.cell_budget or grid["cell_budget"],
        ray_cap=grid["ray_cap"],
        mode="quick" if args.quick else "full",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the exit status (130 after Ctrl-C, files still written).

    Args:
        argv: the arguments after ``parmap bench`` (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 130 when interrupted.

    Raises:
        SystemExit: for bad arguments (status 2, with a message naming valid values).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_mode(args, parser)
    if args.fn:
        return _run_fn(args, parser, argv)
    if args.calibrate:
        return _calibrate(args, parser)
    config = make_config(args, parser)
    args.out = args.out or Path("bench-results")
    command = "parmap bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print(
        f"parmap bench ({config.mode}): {', '.join(config.targets)}; {config.workers} workers; "
        f"costs {', '.join(format_seconds(c * 1e-6) for c in config.costs_us)}; "
        f"items {', '.join(f'{n:,}' for n in config.counts)}; median of {config.repeats}",
        flush=True,
    )
    from parmap.bench._report import machine_info, text_summary, write_outputs
    from parmap.bench._summary import summarize

    machine = machine_info()
    result = run_sweep(config, progress=not args.no_progress)
    started = time.perf_counter()
    summary = summarize(result)
    write_outputs(result, summary, args.out, machine, command, plots=not args.no_plots)
    print(text_summary(result, summary, args.out))
    print(f"(measured in {format_seconds(result.elapsed)}, "
          f"reported in {format_seconds(time.perf_counter() - started)})")  # fmt: skip
    return 130 if result.interrupted else 0


def _check_mode(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--fn and the sweep's grid options exclude each other; --fn needs its items."""

    def given(names: Sequence[str]) -> list[str]:
        return [
            "--" + name.replace("_", "-")
            for name in names
            if getattr(args, name) != parser.get_default(name)
        ]

    if args.fn:
        clash = given(SWEEP_ONLY)
        if clash:
            parser.error(f"{', '.join(clash)}: not with --fn (they set the sweep's grid)")
        if not args.items_from:
            parser.error(
                "--fn needs your sample items: --items-from module:factory (called with N), "
                "module:NAME (a list) or a .json / .pkl file; none are invented"
            )
        return
    stray = given(FN_ONLY)
    if stray:
        parser.error(f"{', '.join(stray)}: only with --fn (your own function)")


def _fn_targets(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    backends = _backends(parser, args.backends)
    if args.backends is None:
        backends.append(_registry.AUTO)
    targets = backends + _baselines(parser, args.baselines or ["none"])
    targets.sort(key=lambda name: _LAST.get(name, 0) + 10 * (name == _registry.AUTO))
    return targets


def _default_out(spec: str) -> Path:
    module, _, attribute = spec.rpartition(":")
    name = f"{Path(module).stem if module.endswith('.py') else module}.{attribute}"
    return Path("bench-results") / (
        "fn-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    )


def _run_fn(
    args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> int:
    from parmap.bench._fnreport import fn_text, write_fn_outputs
    from parmap.bench._loader import SpecError
    from parmap.bench._report import machine_info
    from parmap.bench._userfn import FnConfig, estimate, load, run_fn
    from parmap.bench._verdict import verdict

    config = FnConfig(
        fn_spec=args.fn,
        items_spec=args.items_from,
        n_items=args.items,
        calls=args.calls,
        targets=_fn_targets(parser, args),
        workers=args.workers,
        repeats=args.repeats or 5,
        cold_runs=args.cold_runs,
        cold_budget=args.cold_budget,
    )
    try:
        loaded, serial_call = load(config)
    except SpecError as exc:
        parser.error(str(exc))
    out = args.out or _default_out(args.fn)
    serial_run = format_seconds(serial_call * config.calls)
    minutes = estimate(config, serial_call, len(loaded.items)) / 60
    print(
        f"parmap bench --fn {config.fn_spec}: {len(loaded.items):,} items x {config.calls} "
        f"calls; {', '.join(config.targets)}; {config.workers} workers; one serial call "
        f"{format_seconds(serial_call)}, a serial run ~{serial_run}; this takes roughly "
        f"{minutes:.0f} minute{'s' if round(minutes) != 1 else ''} (fewer --calls: less)",
        flush=True,
    )
    result = run_fn(config, loaded, serial_call, progress=not args.no_progress)
    found = verdict(result)
    command = "parmap bench " + " ".join(sys.argv[1:] if argv is None else argv)
    write_fn_outputs(result, found, out, machine_info(), command, plots=not args.no_plots)
    print(fn_text(result, found, out))
    return 130 if result.interrupted else 0


def _calibrate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from parmap.bench._calibrate import calibrate

    backends = _backends(parser, args.backends)
    parallel = [b for b in backends if b not in ("serial", "auto")] or None
    calibration = calibrate(backends=parallel, workers=args.workers, progress=not args.no_progress)
    print(f"calibration: {calibration.describe()}")
    for name, model in sorted(calibration.models.items()):
        start = calibration.startup.get(name, 0.0)
        print(
            f"  {name:<16} fixed {format_seconds(model.fixed)}, per item "
            f"{format_seconds(model.per_item)}, per batch {format_seconds(model.per_batch)}, "
            f"work x{model.work_factor:.2f}, start-up {format_seconds(start)}"
        )
    return 0
