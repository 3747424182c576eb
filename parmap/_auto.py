"""``backend="auto"``: run serially, or on the backend predicted fastest, per call.

One decision::

    per-item cost c   remembered from earlier calls of this function, or timed
                      on its first item(s) in the caller (results kept, never
                      recomputed)
    item count n      len(), or read ahead up to READ_AHEAD items of a generator
    candidates        serial, and every installed parallel backend; only the
                      cluster's engine when $RAY_ADDRESS / $DASK_SCHEDULER_ADDRESS
                      is set (or Ray is already initialized)
    prediction        serial: n * c; a backend: its overhead model (parmap._model)
                      + its start-up time unless it is already running
    choice            the smallest prediction; serial unless a backend is predicted
                      SERIAL_MARGIN (1.1x) faster: a model's error near the crossover
                      should cost little, not a needless parallel call
    feedback          the wall time of each call sent to a backend corrects that
                      backend's later predictions for the same function (learn());
                      a warm backend predicted close to serial is tried every
                      EXPLORE_EVERY-th call, so that a pessimistic model is corrected too

The models come from a per-machine calibration that ``parmap bench --calibrate``
writes to the cache directory (``$PARMAP_CALIBRATION`` overrides the path) and
that the first ``auto`` call runs if there is none; built-in conservative
constants stand in when calibration is impossible (``PARMAP_CALIBRATION=defaults``
asks for them). ``parmap.explain(fn, items)`` shows a decision without running
the call; every decision is logged at DEBUG level on the ``parmap`` logger.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from parmap import _registry, _worker
from parmap._batching import costs, read_items
from parmap._config import getenv
from parmap._model import OverheadModel

__all__ = [
    "Calibration",
    "Decision",
    "calibration_path",
    "explain",
    "learn",
    "load_calibration",
    "plan",
]

log = logging.getLogger("parmap")

PARALLEL = ("multiprocessing", "loky", "ray", "dask")
READ_AHEAD = 4096
PROBE_SECONDS = 2e-4
PROBE_ITEMS = 32
SERIAL_MARGIN = 1.1  # a backend must be predicted this much faster than serial
EXPLORE_EVERY = 8  # ... or, warm and predicted within EXPLORE_BAND of serial, be due a try
EXPLORE_BAND = 1.25
CALIBRATION_SCHEMA = 1

# Conservative constants (seconds) for when no calibration can be had: measured
# on a 2-core machine, then rounded up so that auto errs towards serial.
_DEFAULTS: dict[str, dict[str, float]] = {  # fixed, per_item, per_batch, work_factor
    "multiprocessing": {"fixed": 1.5e-3, "per_item": 2e-6, "per_batch": 3e-4, "work_factor": 1.1},
    "loky": {"fixed": 1.5e-3, "per_item": 2e-6, "per_batch": 3e-4, "work_factor": 1.1},
    "ray": {"fixed": 5e-3, "per_item": 3e-6, "per_batch": 1.5e-3, "work_factor": 1.1},
    "dask": {"fixed": 15e-3, "per_item": 3e-6, "per_batch": 3e-3, "work_factor": 1.1},
}
_DEFAULT_STARTUP = {"multiprocessing": 0.5, "loky": 0.5, "ray": 10.0, "dask": 5.0}


@dataclass(frozen=True)
class Calibration:
    """The overhead models ``auto`` predicts with.

    Attributes:
        models: backend name -> fitted model.
        startup: backend name -> seconds its first call costs (pools, clusters).
        created: when it was measured (epoch seconds), None for built-in defaults.
        source: the file it came from, or ``"built-in defaults"``.
    """

    models: dict[str, OverheadModel]
    startup: dict[str, float]
    created: float | None
    source: str

    def floor(self, n_items: int, cost: float, workers: int) -> float:
        """No backend is predicted to run this call faster: a lower bound of every model.

        It counts one batch per worker and no start-up, so it is cheap enough for
        every call; when serial is below it, the predictions can be skipped.
        """
        fixed_floor = self._fixed_floor(workers)
        if n_items >= workers and n_items * cost <= fixed_floor:
            return fixed_floor  # a quick answer for most cheap calls
        batches, work = min(n_items, workers), cost * math.ceil(n_items / workers)
        lowest = math.inf if self.models else 0.0
        for m in self.models.values():
            bound = m.fixed + m.per_item * n_items + m.per_batch * batches + m.work_factor * work
            lowest = min(lowest, bound)
        return lowest

    def _fixed_floor(self, workers: int) -> float:
        """The least any backend spends on a call of ``workers`` items or more, work aside."""
        floors = self.__dict__.get("_fixed_floors")
        if floors is None:
            floors = self.__dict__["_fixed_floors"] = {}
        floor = floors.get(workers)
        if floor is None:
            floor = floors[workers] = min(
                (m.fixed + m.per_batch * workers for m in self.models.values()), default=0.0
            )
        return floor

    def describe(self) -> str:
        """One line for ``parmap info``."""
        if self.created is None:
            return f"{self.source} (run `parmap bench --calibrate` to measure this machine)"
        age = (time.time() - self.created) / 86400
        names = ", ".join(sorted(self.models))
        return f"{self.source}, measured {age:.1f} days ago, for {names}"


def calibration_path() -> Path:
    """Where the calibration lives: ``$PARMAP_CALIBRATION`` or the user's cache folder."""
    override = getenv("PARMAP_CALIBRATION").strip()
    if override and override != "defaults":
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "parmap" / "calibration.json"


def defaults(workers: int) -> Calibration:
    """Built-in conservative models for ``workers`` workers."""
    models = {
        name: OverheadModel.from_dict(
            {"backend": name, "workers": workers, "batch_overhead": _batch_overhead(name), **c}
        )
        for name, c in _DEFAULTS.items()
    }
    return Calibration(models, dict(_DEFAULT_STARTUP), None, "built-in defaults")


def _batch_overhead(name: str) -> float:
    try:
        return _registry.backend_class(name).batch_overhead
    except ImportError:
        return 1e-3


def save_calibration(
    path: Path, models: dict[str, OverheadModel], startup: dict[str, float], machine: dict[str, Any]
) -> None:
    """Write a calibration file (the format :func:`load_calibration` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "schema": CALIBRATION_SCHEMA,
        "created": time.time(),
        "machine": machine,
        "models": {name: model.to_dict() for name, model in models.items()},
        "startup": startup,
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    temporary.replace(path)


_loaded: dict[str, Calibration] = {}
_by_setting: dict[tuple[str, int], Calibration] = {}  # ($PARMAP_CALIBRATION, workers) -> it
_lock = threading.Lock()


def load_calibration(workers: int, *, calibrate: bool = True) -> Calibration:
    """The calibration in use, measuring it first when there is none.

    Args:
        workers: the worker count the defaults are for, when used.
        calibrate: run the calibration if no file exists (it takes under a minute).

    Returns:
        A :class:`Calibration`; built-in defaults when none can be had.
    """
    setting = getenv("PARMAP_CALIBRATION").strip()
    cached = _by_setting.get((setting, workers))
    if cached is not None:
        return cached
    use_defaults = setting == "defaults"
    key = f"defaults:{workers}" if use_defaults else str(calibration_path())
    cached = _loaded.get(key)
    if cached is not None:
        _by_setting[(setting, workers)] = cached
        return cached
    with _lock:
        calibration = None if use_defaults else _read(Path(key))
        if calibration is None and calibrate and not use_defaults:
            calibration = _measure(Path(key))
        if calibration is None:
            calibration = defaults(workers)
            if not use_defaults and calibrate:
                key = f"defaults:{workers}"  # calibration failed: do not try on every call
        _loaded[key] = _by_setting[(setting, workers)] = calibration
        return calibration


def _read(path: Path) -> Calibration | None:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("parmap: ignoring unreadable calibration %s (%s)", path, exc)
        return None
    if document.get("schema") != CALIBRATION_SCHEMA:
        log.warning("parmap: calibration %s is of another version; measuring again", path)
        return None
    models = {k: OverheadModel.from_dict(v) for k, v in document["models"].items()}
    return Calibration(models, document.get("startup", {}), document.get("created"), str(path))


def _measure(path: Path) -> Calibration | None:
    if _worker.in_worker or multiprocessing.parent_process() is not None:
        # A worker, or a child re-running a script that lacks the __main__ guard: pools
        # started here would nest or fail, and a partial calibration would stay on disk.
        return None
    print(
        f"parmap: calibrating backend='auto' for this machine, once (under a minute); "
        f"writing {path}",
        file=sys.stderr,
        flush=True,
    )
    try:
        from parmap.bench._calibrate import calibrate

        calibrate(path, progress=False, complete=True)
    except Exception as exc:  # numpy missing, a backend that will not start...
        log.warning("parmap: calibration failed (%s); using built-in defaults", exc)
        return None
    return _read(path)


@dataclass
class Decision:
    """What ``auto`` chose for one call, and why."""

    fn: str
    n_items: int
    n_exact: bool
    per_item_cost: float
    cost_source: str
    predictions: dict[str, float]
    startup: dict[str, float]
    chosen: str
    calibration: Calibration | None
    probe: list[Any] = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        n = f"{self.n_items + len(self.probe):,}" + ("" if self.n_exact else "+")
        lines = [
            f"parmap auto: {self.fn} over {n} items of ~{_fmt(self.per_item_cost)} each "
            f"({self.cost_source}); predictions for the {self.n_items:,} left:",
            f"  calibration: {self.calibration.describe() if self.calibration else 'none'}",
        ]
        for name, seconds in sorted(self.predictions.items(), key=lambda kv: kv[1]):
            mark = "->" if name == self.chosen else "  "
            start = self.startup.get(name, 0.0)
            extra = f" (incl. {_fmt(start)} start-up)" if start else ""
            lines.append(f"  {mark} {name:<16} predicted {_fmt(seconds)}{extra}")
        return "\n".join(lines)


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def plan(
    fn_name: str,
    items: Iterator[Any],
    total: int | None,
    workers: int | None,
    probe: Callable[[int], list[Any]],
) -> tuple[Decision, Iterator[Any], int | None]:
    """Decide one call.

    Args:
        fn_name: the function's qualified name (its cost-memory key).
        items: the input; the probe consumes its first items.
        total: the item count, if known.
        workers: the requested worker count, if any.
        probe: runs the function serially on the next ``k`` items of ``items``
            and returns their results (a serial parmap call: same errors, same
            initializer semantics); its timing lands in the cost memory.

    Returns:
        The decision (its ``probe`` holds the results already computed), the
        rest of the input, and the count of the rest when known.
    """
    key = "name:" + fn_name
    cost = costs.get(key)
    probed: list[Any] = []
    source = "remembered from earlier calls"
    if cost is None:
        probed = list(probe(1))
        if probed and (costs.get(key) or 0.0) * PROBE_ITEMS < PROBE_SECONDS:
            probed += probe(PROBE_ITEMS - 1)  # cheap: time a few more for a steadier figure
        cost = costs.get(key) or 0.0
        source = f"timed on {len(probed)} item(s) in the caller"
    remaining = None if total is None else max(0, total - len(probed))
    rest, n_rest, exact = _count(items, remaining, len(probed))
    decision = decide(fn_name, n_rest, exact, cost, source, workers or _default_workers())
    decision.probe = probed
    log.debug("%s", decision)
    return decision, rest, n_rest if exact else None


def stays_serial(fn_name: str, n_items: int | None, workers: int | None) -> bool:
    """True when ``fn``'s remembered cost makes serial beat every backend's lower bound:
    the fast path of ``auto``, decided without probing or predicting."""
    cost = costs.peek("name:" + fn_name)
    if cost is None or n_items is None:
        return False
    workers = workers or _default_workers()
    floor = load_calibration(workers).floor(n_items, cost, workers)
    serial = n_items * cost * EXPLORE_BAND <= floor  # beyond even a try (see _explore)
    if serial and log.isEnabledFor(logging.DEBUG):
        log.debug(
            "parmap auto: %s over %d items of ~%s each: serial (below every backend's lower bound)",
            fn_name, n_items, _fmt(cost),
        )  # fmt: skip
    return serial


def _count(
    items: Iterator[Any], remaining: int | None, start: int
) -> tuple[Iterator[Any], int, bool]:
    if remaining is not None:
        return items, remaining, True
    ahead = read_items(items, READ_AHEAD, start)
    rest = itertools.chain(ahead, items)
    return rest, len(ahead), len(ahead) < READ_AHEAD


@functools.cache
def _default_workers() -> int:
    from parmap.backends._base import default_workers

    return default_workers()


def decide(
    fn_name: str, n_items: int, exact: bool, cost: float, source: str, workers: int
) -> Decision:
    """Predict each candidate and choose (see the module docstring)."""
    serial_seconds = n_items * cost
    predictions = {"serial": serial_seconds}
    decision = Decision(fn_name, n_items, exact, cost, source, predictions, {}, "serial", None)
    calibration = load_calibration(workers)
    decision.calibration = calibration
    if n_items < 2 or serial_seconds * EXPLORE_BAND <= calibration.floor(n_items, cost, workers):
        return decision  # no backend can win: skip the candidates
    candidates = _candidates()
    for name in candidates:
        model = calibration.models.get(name)
        if model is None:
            continue
        if model.workers != workers:
            model = dataclasses.replace(model, workers=workers)
        startup = 0.0 if _running(name) else calibration.startup.get(name, 0.0)
        if startup + model.fixed >= serial_seconds:
            continue  # cannot win: skip the batch simulation
        correction = _corrections.get((fn_name, name), 1.0)
        predictions[name] = model.predict(n_items, cost) * correction + startup
        decision.startup[name] = startup
    best = min((n for n in predictions if n != "serial"), key=predictions.__getitem__, default="")
    if not best:
        return decision
    clear_win = predictions[best] * SERIAL_MARGIN < serial_seconds  # models err: no close calls
    close = predictions[best] < serial_seconds * EXPLORE_BAND
    if clear_win or (close and _explore(fn_name, best, decision)):
        decision.chosen = best
    return decision


def _explore(fn_name: str, name: str, decision: Decision) -> bool:
    """Whether to try, this once, a warm backend predicted close to serial.

    Feedback only corrects the backends auto runs. A warm backend predicted
    within EXPLORE_BAND of serial is tried every EXPLORE_EVERY-th decision for
    the function, so a pessimistic model gets corrected too; once the tries show
    it slower, its correction lifts it out of the band and the tries stop.
    """
    if decision.startup.get(name):
        return False
    key = (fn_name, name)
    _bounded(_explored)[key] = _explored.get(key, 0) + 1
    return _explored[key] % EXPLORE_EVERY == 0


_corrections: dict[tuple[str, str], float] = {}  # (fn, backend) -> seen / predicted
_first_calls: set[tuple[str, str]] = set()
_explored: dict[tuple[str, str], int] = {}
_FEEDBACK_ENTRIES = 4096


def _bounded(table: Any) -> Any:
    """``table``, emptied first if full: a program that maps a new callable object on
    every call must not grow the feedback tables (or the cost memory) without bound."""
    if len(table) >= _FEEDBACK_ENTRIES:
        table.clear()
    return table


def forget(fn_name: str) -> None:
    """Drop the feedback about a function (a callable object that died)."""
    for table in (_corrections, _explored):
        for key in [key for key in list(table) if key[0] == fn_name]:
            table.pop(key, None)
    for key in [key for key in list(_first_calls) if key[0] == fn_name]:
        _first_calls.discard(key)


def learn(decision: Decision, seconds: float) -> None:
    """Correct a backend's predictions for one function by a call's measured wall time.

    A model fitted on other workloads can be off for this one (costly items or
    results to pickle, a cost that varies); after each call sent to a warm
    backend (but the first, which also ships the function and warms the
    workers), the ratio of the wall time to the prediction is folded into that
    function's correction (smoothed geometrically), so a wrong choice is not
    repeated for long.
    """
    name = decision.chosen
    predicted = decision.predictions.get(name)
    if name == "serial" or not predicted or decision.startup.get(name):
        return
    key = (decision.fn, name)
    if key not in _first_calls:  # the first call also ships fn and warms the workers: not typical
        _bounded(_first_calls).add(key)
        return
    ratio = min(max(seconds / predicted, 0.1), 10.0)
    correction = min(max(_corrections.get(key, 1.0) * ratio**0.5, 0.25), 20.0)
    _bounded(_corrections)[key] = correction
    log.debug("parmap auto: %s on %s took %s, predicted %s", *key, _fmt(seconds), _fmt(predicted))


def _candidates() -> list[str]:
    clusters = [
        name
        for name, variable in (("ray", "RAY_ADDRESS"), ("dask", "DASK_SCHEDULER_ADDRESS"))
        if getenv(variable) or (name == "ray" and _ray_initialized())
    ]
    names = clusters or list(PARALLEL)
    return [name for name in names if _registry.is_installed(name)]


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _running(name: str) -> bool:
    if name == "ray" and _ray_initialized():
        return True
    return any(backend.name == name for backend in _registry.live_backends())


def explain(
    fn: Callable[..., Any],
    *iterables: Iterable[Any],
    workers: int | None = None,
    file: IO[str] | None = sys.stdout,
) -> Decision:
    """Show what ``backend="auto"`` would choose for this call, without running it.

    The per-item cost is remembered from earlier calls of ``fn`` or, failing
    that, timed on its first item(s) here (``fn`` is called on them).

    Args:
        fn: the function.
        *iterables: the items, as for :func:`parmap.parmap`.
        workers: the worker count to predict for (default: all usable CPUs).
        file: where to print the decision (None: do not print).

    Returns:
        The :class:`Decision`, whose ``str()`` is the printed table.
    """
    from parmap._api import _cost_name, _probe_runner, _total, _zip

    items = _zip(iterables)
    probe = _probe_runner(fn, items, {}, len(iterables) > 1, [])
    decision, _, _ = plan(_cost_name(fn), items, _total(iterables), workers, probe)
    if file is not None:
        print(decision, file=file)
    return decision
