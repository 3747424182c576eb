"""``parmap bench --calibrate``: measure this machine for ``backend="auto"``.

A small sweep (OneMax and three CPU-bound costs, four population sizes) over
serial and the installed backends that ``auto`` may choose, under a minute on
2 cores; the fitted overhead models and each backend's start-up time go to the
calibration file that ``parmap._calibration`` reads.

``python -m parmap.bench._calibrate --first-use PATH`` is the child process
that the first ``auto`` call of a machine starts: it writes PATH only if every
backend was measured, and on SIGTERM (the caller's Ctrl-C) stops its pools and
clusters and writes nothing.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from parmap import _calibration, _registry
from parmap.backends import default_workers
from parmap.bench._report import machine_info
from parmap.bench._summary import summarize
from parmap.bench._sweep import SweepConfig, run_sweep

__all__ = ["calibrate", "candidates"]


def candidates() -> list[str]:
    """The installed backends ``auto`` may choose: the ones calibration measures."""
    return [name for name, cls in _registry.installed_classes().items() if cls.auto]


def calibrate(
    path: Path | None = None,
    *,
    backends: list[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
    complete: bool = False,
) -> _calibration.Calibration:
    """Measure the backends, fit their models and write the calibration file.

    Args:
        path: where to write (default: :func:`parmap._calibration.calibration_path`).
        backends: backends to measure (default: :func:`candidates`).
        workers: workers per backend (default: the usable CPUs).
        progress: show a progress bar.
        complete: write nothing unless every backend was measured (auto's lazy
            calibration: one that failed is tried again by the next process).

    Returns:
        The calibration written.

    Raises:
        RuntimeError: no model could be fitted (every backend failed), or with
            ``complete``, some backend's could not.
    """
    path = path or _calibration.calibration_path()
    chosen = backends or candidates()
    config = SweepConfig(
        targets=["serial", *chosen],
        workers=workers or default_workers(),
        costs_us=[1.0, 20.0, 1000.0],  # 1 µs x 30,000 pins the per-item term
        counts=[30, 300, 3000, 30000],
        workloads=["onemax", "cpu"],
        repeats=3,
        cell_budget=0.35,
        ray_cap=0,
        mode="calibrate",
    )
    started = time.perf_counter()
    result = run_sweep(config, progress=progress)
    summary = summarize(result)
    models = {name: model for name, model in summary.models.items() if name in chosen}
    missing = [name for name in chosen if name not in models]
    if not models or (complete and missing) or result.interrupted:
        why = summary.model_errors or result.failures or "interrupted"
        names = ", ".join(missing) or "any backend"
        raise RuntimeError(f"calibration fitted no model for {names}: {why}")
    startup = {cold.target: cold.startup_seconds for cold in result.cold if cold.target in models}
    machine = {**machine_info(), "calibration_seconds": round(time.perf_counter() - started, 1)}
    _calibration.save(path, models, startup, machine)
    _calibration.reload()
    found = _calibration.read(path)
    assert found is not None, f"{path} was just written"
    return found


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: pools and clusters stop at exit, no file


def main(argv: Sequence[str] | None = None) -> int:
    """The first-use calibration's child process (see the module doc)."""
    parser = argparse.ArgumentParser(prog="python -m parmap.bench._calibrate")
    parser.add_argument("--first-use", type=Path, required=True, metavar="PATH")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides; it sends SIGTERM
    try:
        calibrate(args.first_use, progress=sys.stderr.isatty(), complete=True)
    except RuntimeError as exc:
        print(f"parmap: calibration failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
