"""``parmap bench --calibrate``: measure this machine for ``backend="auto"``.

A small sweep (OneMax and three CPU-bound costs, four population sizes) over
serial and the installed parallel backends, under a minute on 2 cores; the
fitted overhead models and each backend's start-up time go to the calibration
file that ``parmap._auto`` reads.
"""

from __future__ import annotations

import time
from pathlib import Path

from parmap import _auto, _registry
from parmap.backends._base import default_workers
from parmap.bench._report import machine_info
from parmap.bench._summary import summarize
from parmap.bench._sweep import SweepConfig, run_sweep

__all__ = ["calibrate"]


def calibrate(
    path: Path | None = None,
    *,
    backends: list[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
    complete: bool = False,
) -> _auto.Calibration:
    """Measure the backends, fit their models and write the calibration file.

    Args:
        path: where to write (default: :func:`parmap._auto.calibration_path`).
        backends: parallel backends to measure (default: the installed ones).
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
    path = path or _auto.calibration_path()
    chosen = backends or [b for b in _auto.PARALLEL if _registry.is_installed(b)]
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
    if not models or (complete and missing):
        why = summary.model_errors or result.failures
        names = ", ".join(missing) or "any backend"
        raise RuntimeError(f"calibration fitted no model for {names}: {why}")
    startup = {cold.target: cold.startup_seconds for cold in result.cold if cold.target in models}
    machine = {**machine_info(), "calibration_seconds": round(time.perf_counter() - started, 1)}
    _auto.save_calibration(path, models, startup, machine)
    _auto._loaded.pop(str(path), None)
    _auto._by_setting.clear()
    return _auto.load_calibration(config.workers, calibrate=False)
