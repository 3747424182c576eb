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
from parmap.bench._targets import BASELINES, baseline_installed

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
_LAST = {"dask": 1, "ray": 2, "ray-tasks": 3}  # threaded engines after the fork-based pools

DESCRIPTION = """\
Measure from which per-item cost and item count each parmap backend beats plain
serial map on this machine, with cold starts, baselines (multiprocessing.Pool.map,
joblib, naive Ray tasks) and a fitted overhead model. Writes results.json,
results.csv, models.json, report.md and PNG plots to --out.
"""


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
        help="baselines beside them, or 'none' (default: every installed one: "
        + ", ".join(BASELINES)
        + ")",
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
        default=Path("bench-results"),
        metavar="DIR",
        help="output folder (default: ./bench-results)",
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
    add("--no-plots", action="store_true", help="do not draw the PNG plots")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser  # fmt: skip


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
        return [name for name in BASELINES if baseline_installed(name)]
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
    if args.calibrate:
        return _calibrate(args, parser)
    config = make_config(args, parser)
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
