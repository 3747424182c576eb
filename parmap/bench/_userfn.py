"""``parmap bench --fn``: the user's own function at their item count, warm and cold.

    load the function and the N items once; serial map over them is the oracle
    ask auto what it would choose for this call (parmap.explain), before anything starts
    cold, in rounds: each target in a fresh process, K calls of N items, each followed
        by a serial map call (another round for a target while its cold runs so far
        took under cold_budget)
    warm, in this process, each target in turn:
        one warm-up call of N items (pools start, results checked against map's)
        for each item count of the ladder N, N/3, N/10, N/30 ... (at least 2):
            serial map and the target timed in adjacent pairs, `repeats` pairs
        release its workers
    Ctrl-C anywhere: stop, release the workers, keep what was measured

``_verdict`` turns the result into the verdict; ``_fnreport`` writes the files.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import parmap
from parmap.bench._coldrun import ColdRun, ColdRunRequest, run_cold
from parmap.bench._loader import load_function, load_items, worker_path
from parmap.bench._sweep import _distinct, _load
from parmap.bench._targets import MapTarget, Target, make_target

__all__ = ["AutoPick", "FnConfig", "FnResult", "WarmCell", "estimate", "ladder", "run_fn"]


@dataclass
class FnConfig:
    """What ``parmap bench --fn`` measures (see ``parmap bench --help``)."""

    fn_spec: str
    items_spec: str
    n_items: int | None
    calls: int
    targets: list[str]
    workers: int
    repeats: int = 5
    cold_runs: int = 3
    cold_budget: float = 30.0
    cell_budget: float = 10.0
    ray_cap: int = 500


@dataclass
class WarmCell:
    """One target on the first ``n_items`` items, warm, timed in pairs with serial map."""

    target: str
    n_items: int
    serial_times: list[float]
    times: list[float]

    @property
    def ratios(self) -> list[float]:
        """Speed-up of each pair: serial map's time / the target's."""
        return [s / max(t, 1e-12) for s, t in zip(self.serial_times, self.times, strict=True)]

    @property
    def speedup(self) -> float:
        """The median pair speed-up (above 1: faster than serial map)."""
        return statistics.median(self.ratios)

    @property
    def spread(self) -> tuple[float, float]:
        """The lowest and highest pair speed-up."""
        return min(self.ratios), max(self.ratios)

    @property
    def seconds(self) -> float:
        """The median time of one call."""
        return statistics.median(self.times)

    @property
    def serial_seconds(self) -> float:
        """The median time of serial map on the same items."""
        return statistics.median(self.serial_times)


@dataclass
class AutoPick:
    """What ``parmap.explain`` said ``backend="auto"`` would choose, before anything started."""

    chosen: str
    predictions: dict[str, float]
    text: str
    calibrated: bool = True


@dataclass
class FnResult:
    """What ``parmap bench --fn`` measured, and what it could not."""

    config: FnConfig
    n_items: int
    counts: list[int]
    item_bytes: int
    serial_call: float
    auto: AutoPick | None = None
    warm: list[WarmCell] = field(default_factory=list)
    cold: list[ColdRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    elapsed: float = 0.0
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """``map`` and the targets, in run order."""
        return ["map", *self.config.targets]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content, with each cold run's derived figures."""
        data = asdict(self)
        for entry, run in zip(data["cold"], self.cold, strict=True):
            if run.ok:
                entry.update(total=run.total, ratio=run.ratio, startup=run.startup,
                             warm_call=run.warm_call)  # fmt: skip
        for entry, cell in zip(data["warm"], self.warm, strict=True):
            entry.update(speedup=cell.speedup, spread=cell.spread)
        return data


def ladder(n_items: int) -> list[int]:
    """The item counts measured warm: N, N/3, N/10, N/30 ... down to 2, descending."""
    counts: list[int] = []
    for exponent in range(16):
        for step in (1, 3):
            count = round(n_items / (step * 10**exponent))
            if counts and count < 2:
                return counts
            if not counts or count < counts[-1]:
                counts.append(count)
    return counts


def estimate(config: FnConfig, serial_call: float, n_items: int) -> float:
    """Roughly how many seconds the whole measurement takes (for the user, up front).

    A cold run costs about two serial runs (the target's calls and the serial calls
    beside them) plus a few seconds of start-up; the warm pairs about two serial
    calls per pair over the ladder.
    """
    run = 2 * config.calls * serial_call + 5.0
    runs = max(1, min(config.cold_runs, math.ceil(config.cold_budget / run)))
    ladder_share = sum(ladder(n_items)) / n_items
    warm = 2 * config.repeats * ladder_share * serial_call + 3.0
    return len(config.targets) * (runs * run + warm)


@dataclass
class _Loaded:
    fn: Callable[[Any], Any]
    items: list[Any]
    expected: list[Any]
    paths: list[str]


def load(config: FnConfig) -> tuple[_Loaded, float]:
    """The function, the items and serial map's results; the seconds of that serial call.

    Raises:
        SpecError: a bad ``--fn`` or ``--items-from``.
    """
    fn = load_function(config.fn_spec)
    items, item_paths = load_items(config.items_spec, config.n_items)
    start = time.perf_counter()
    expected = list(map(fn.obj, items))
    seconds = time.perf_counter() - start
    return _Loaded(fn.obj, items, expected, [*fn.paths, *item_paths]), seconds


class _FnBench:
    """The state of one run (see the module docstring)."""

    def __init__(self, config: FnConfig, loaded: _Loaded, serial_call: float) -> None:
        self.config = config
        self.loaded = loaded
        self.bar: Any = None
        n = len(loaded.items)
        size = len(_dumps(loaded.items[0]))
        self.result = FnResult(config, n, ladder(n), size, serial_call, load_before=_load())

    def note(self, message: str) -> None:
        self.bar.write(f"parmap bench: {message}", file=sys.stderr)

    def run(self, folder: Path) -> FnResult:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.result.auto = self.ask_auto()
                self.run_cold(folder)
                with _worker_path(self.loaded.paths):
                    for name in self.config.targets:
                        self.run_warm(name)
            except KeyboardInterrupt:
                self.result.interrupted = True
                self.note("interrupted: writing what was measured so far")
        self.result.warnings = _distinct(caught)
        self.result.elapsed = time.perf_counter() - start
        self.result.load_after = _load()
        return self.result

    def ask_auto(self) -> AutoPick | None:
        """auto's choice for the first call of the run (no backend running yet)."""
        if "auto" not in self.config.targets:
            return None
        self.bar.set_postfix_str("auto: explain")
        fn, items, workers = self.loaded.fn, self.loaded.items, self.config.workers
        try:
            decision = parmap.explain(fn, items, workers=workers, file=None)
        except Exception as exc:  # the runs still tell what auto did
            self._fail("auto", "explain", f"{type(exc).__name__}: {exc}")
            return None
        calibration = getattr(decision, "calibration", None)
        measured = getattr(calibration, "created", None) is not None  # not built-in defaults
        return AutoPick(decision.chosen, dict(decision.predictions), str(decision), measured)

    # -- cold --------------------------------------------------------------------------

    def run_cold(self, folder: Path) -> None:
        items_file = folder / "items.pkl"
        items_file.write_bytes(_dumps((self.loaded.items, self.loaded.expected)))
        spent = dict.fromkeys(self.config.targets, 0.0)
        for round_ in range(self.config.cold_runs):
            for name in self.config.targets:
                if round_ and (spent[name] >= self.config.cold_budget or self._failed(name)):
                    self.bar.update(1)
                    continue
                self.bar.set_postfix_str(f"{name}: cold run {round_ + 1}")
                started = time.perf_counter()
                self._cold_run(name, items_file)
                spent[name] += time.perf_counter() - started
                self.bar.update(1)

    def _cold_run(self, name: str, items_file: Path) -> None:
        config = self.config
        request = ColdRunRequest(config.fn_spec, name, config.calls, config.workers, config.ray_cap)
        timeout = 600 + 5 * self.result.serial_call * config.calls
        run = run_cold(request, items_file, self.loaded.paths, timeout)
        self.result.cold.append(run)
        if run.error:
            self._fail(name, "cold run", run.error)
        elif not run.results_match:
            self._differs(name, "cold run")

    def _failed(self, name: str) -> bool:
        return any(f["target"] == name for f in self.result.failures)

    # -- warm --------------------------------------------------------------------------

    def run_warm(self, name: str) -> None:
        self.bar.set_postfix_str(f"{name}: warm")
        try:
            target = make_target(name, self.config.workers, self.config.ray_cap)
        except Exception as exc:
            self._fail(name, "start", f"{type(exc).__name__}: {exc}")
            self.bar.update(1 + len(self.result.counts))
            return
        try:
            if target.run(self.loaded.fn, self.loaded.items) != self.loaded.expected:
                self._differs(name, "warm-up call")
            self.bar.update(1)
            for n in self.result.counts:
                self.bar.set_postfix_str(f"{name}: warm, {n:,} items")
                self.result.warm.append(self._pairs(target, n))
                self.bar.update(1)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            self._fail(name, "warm", f"{type(exc).__name__}: {exc}")
        finally:
            _stop(target)

    def _pairs(self, target: Target, n: int) -> WarmCell:
        """Serial map and the target, call after call, so a burst of load slows both."""
        fn, items = self.loaded.fn, self.loaded.items[:n]
        cell = WarmCell(target.name, n, [], [])
        started = time.perf_counter()
        reference = MapTarget()
        while len(cell.times) < self.config.repeats:
            for runner, times in ((reference, cell.serial_times), (target, cell.times)):
                start = time.perf_counter()
                runner.run(fn, items)
                times.append(time.perf_counter() - start)
            if len(cell.times) >= 3 and time.perf_counter() - started > self.config.cell_budget:
                break
        return cell

    def _fail(self, name: str, stage: str, message: str) -> None:
        self.result.failures.append({"target": name, "stage": stage, "error": message})
        self.note(f"{name} failed ({stage}): {message.splitlines()[0][:200]}")

    def _differs(self, name: str, where: str) -> None:
        note = (
            f"{name}: results differ from serial map's ({where}); a function with "
            "randomness does that, otherwise please report it"
        )
        if note not in self.result.notes:
            self.result.notes.append(note)


def _stop(target: Target) -> None:
    with contextlib.suppress(Exception):  # best effort: the measurements stand
        target.stop()


def _dumps(obj: Any) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


@contextlib.contextmanager
def _worker_path(paths: list[str]) -> Iterator[None]:
    """``$PYTHONPATH`` with the user's folders while this process starts workers."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = worker_path(paths)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def run_fn(
    config: FnConfig, loaded: _Loaded, serial_call: float, progress: bool = True
) -> FnResult:
    """Measure the user's function: cold runs in fresh processes, then warm in this one.

    Args:
        config: what to measure.
        loaded: the function, items and serial results (:func:`load`).
        serial_call: seconds of one serial map call over the items.
        progress: show a progress bar on stderr.

    Returns:
        The measurements (``interrupted`` is True after Ctrl-C).
    """
    from tqdm.auto import tqdm

    bench = _FnBench(config, loaded, serial_call)
    total = len(config.targets) * (config.cold_runs + 1 + len(bench.result.counts))
    bar = tqdm(total=total, desc="parmap bench --fn", unit="step", disable=not progress,
               file=sys.stderr)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="parmap-bench-") as folder, bar as bench.bar:
        return bench.run(Path(folder))
