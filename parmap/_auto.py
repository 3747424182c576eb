"""``backend="auto"``: run serially, or on the backend predicted fastest, per call.

One decision::

    per-item cost c   remembered from earlier calls of this function, or timed
                      on its first item(s) in the caller (results kept, never
                      recomputed)
    item size b       the pickled size of the next item (its large buffers counted,
                      not copied): what a backend that sends items to other
                      processes copies per item
    item count n      len(), or read ahead up to READ_AHEAD items of a generator
    candidates        serial, and every installed backend whose class allows auto;
                      only the backends whose cluster is named (their class's
                      cluster_env is set, e.g. $RAY_ADDRESS) or already attached
                      in this process, when there are such
    prediction        serial: n * c; a backend: its overhead model (parmap._model)
                      + its start-up time unless it is already running, less what
                      staying serial on earlier calls of the function has already
                      cost: a loop of calls too short each to repay a pool's start-up
                      (a GA of many quick generations) starts it once staying serial
                      has cost as much as starting would (the ski-rental rule: never
                      more than twice the best choice made knowing the future)
    threads           a backend whose workers share the caller's GIL (its class's
                      shares_gil) runs in parallel only what releases the GIL: when
                      it would win were the work parallel, the next few items run
                      here, in turns serially and on two threads at once (results
                      kept): the threads' speed-up tells how much of the work is
                      parallel (Amdahl); kept per function.
                      Without a GIL (a free-threaded interpreter) the work is taken
                      as parallel, unmeasured
    choice            the smallest prediction; serial unless a backend is predicted
                      SERIAL_MARGIN (1.1x) faster: a model's error near the crossover
                      should cost little, not a needless parallel call
    feedback          the wall time of each call sent to a backend corrects that
                      backend's later predictions for the same function (learn());
                      a warm backend predicted close to serial is tried every
                      EXPLORE_EVERY-th call, so that a pessimistic model is corrected too

The models come from the per-machine calibration (``parmap._calibration``:
measured once, at the first ``auto`` call of a machine or by ``parmap bench
--calibrate``); each backend class's conservative constants stand in when it
cannot be had. ``parmap.explain(fn, items)`` shows a decision without running
the call; every decision is logged at DEBUG level on the ``parmap`` logger.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from parmap import _calibration, _registry
from parmap._batching import read_items
from parmap._calibration import Calibration, gil_enabled
from parmap._config import getenv
from parmap._costs import costs, on_forget
from parmap._serialization import pickled_size
from parmap.backends._base import default_workers

__all__ = ["Decision", "candidates", "commit", "decide", "learn", "plan", "stays_serial"]

log = logging.getLogger("parmap")

READ_AHEAD = 4096
PROBE_SECONDS = 2e-4
PROBE_ITEMS = 32
SERIAL_MARGIN = 1.1  # a backend must be predicted this much faster than serial
EXPLORE_EVERY = 8  # ... or, warm and predicted within EXPLORE_BAND of serial, be due a try
EXPLORE_BAND = 1.25
THREAD_PROBE_SECONDS = 1.5e-2  # of work per part of the scaling probe, at least ...
THREAD_PROBE_ITEMS = 16  # ... in at most this many items per part
PROBE_ROUNDS = 3  # at most, in one measurement: its median round counts
SCALING_PROBES = 3  # measurements of a function's scaling on threads: the median is kept


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
    missed: dict[str, float] = field(default_factory=dict, repr=False)  # see commit()
    item_bytes: float = 0.0  # the pickled size of an item (0: unknown)
    on_threads: str = ""  # how the function scales on the caller's threads, and why

    def __str__(self) -> str:
        n = f"{self.n_items + len(self.probe):,}" + ("" if self.n_exact else "+")
        size = f", {_fmt_bytes(self.item_bytes)} pickled" if self.item_bytes >= 1024 else ""
        lines = [
            f"parmap auto: {self.fn} over {n} items of ~{_fmt(self.per_item_cost)} each{size} "
            f"({self.cost_source}); predictions for the {self.n_items:,} left:",
            f"  calibration: {self.calibration.describe() if self.calibration else 'none'}",
        ]
        if self.on_threads:
            lines.append(f"  on the caller's threads: {self.on_threads}")
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


def _fmt_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def plan(
    fn_name: str,
    items: Iterator[Any],
    total: int | None,
    workers: int | None,
    probe: Callable[[int], list[Any]],
    options: frozenset[str] = frozenset(),
    *,
    stops: bool = False,
    probe_threads: Callable[[str, Sequence[Any], int, int], tuple[list[Any], float]] | None = None,
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
        options: backend options the call sets (e.g. ``address``): only backends
            that take them are candidates.
        stops: the call needs a backend that can stop a running item
            (``item_timeout=``): serial is out, and so are backends that cannot.
        probe_threads: runs the given items (the next ones; the index of the
            first given) in rounds, partly here, alone, and partly two batches at
            once on the named backend; returns their results and its speed-up over serial: how
            the function scales on that backend's threads, measured when it matters
            (see the module docstring).

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
    first = read_items(rest, 1, len(probed)) if n_rest else []
    rest = itertools.chain(first, rest)
    item_bytes = float(pickled_size(first[0])) if first else 0.0
    workers = workers or _default_workers()
    unsettled = _unsettled(fn_name)  # decided as if parallel on threads, to see if it matters
    decision = decide(fn_name, n_rest, exact, cost, source, workers, options, stops=stops,
                      optimistic=unsettled, item_bytes=item_bytes)  # fmt: skip
    if unsettled and _shares_gil(decision.chosen):
        size, rounds = _thread_probe_size(cost, n_rest)
        unmeasured = 1.0
        if probe_threads is not None and size:
            chunk = read_items(rest, size, len(probed))
            results, speedup = probe_threads(decision.chosen, chunk, len(probed), rounds)
            probed += results
            n_rest -= len(chunk)
            _record_speedup(fn_name, speedup)
        else:  # too few items to tell: as most Python code does, it holds the GIL
            unmeasured = 0.0
        decision = decide(fn_name, n_rest, exact, cost, source, workers, options,
                          stops=stops, unmeasured=unmeasured,
                          item_bytes=item_bytes)  # fmt: skip
    decision.probe = probed
    log.debug("%s", decision)
    return decision, rest, n_rest if exact else None


def _unsettled(fn_name: str) -> bool:
    """Whether how ``fn`` scales on threads is still to be measured (again): unknown, or
    measured fewer than SCALING_PROBES times (one measurement on a busy machine can be
    far off; the median of three is kept)."""
    if not gil_enabled():
        return False
    measured = len(_thread_probes.get(fn_name, ()))
    return fn_name not in _thread_speedups or 0 < measured < SCALING_PROBES


def _shares_gil(name: str) -> bool:
    return name != "serial" and _registry.backend_class(name).shares_gil


def _record_speedup(fn_name: str, speedup: float) -> None:
    """Keep a probe's measurement; the function's estimate is the median so far (of two:
    their mean)."""
    found = _bounded(_thread_probes).setdefault(fn_name, [])
    found.append(speedup)
    ordered = sorted(found)
    middle = len(ordered) // 2
    estimate = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    _bounded(_thread_speedups)[fn_name] = estimate


def _thread_probe_size(cost: float, n_rest: int) -> tuple[int, int]:
    """The scaling probe's items and rounds: each round a part alone and two at once, one
    more part alone at the end, parts of THREAD_PROBE_SECONDS of work (a thread's wake-up
    on a busy machine must not count), up to PROBE_ROUNDS rounds, never over half of
    what is left; (0, 0) when that is under 4 items (too few to tell: taken as holding
    the GIL). Nothing is lost: the results are the call's, and even work that holds
    the GIL runs on two threads about as fast as serially."""
    budget = n_rest // 2
    if budget < 4:
        return 0, 0
    per_part = min(THREAD_PROBE_ITEMS, max(1, math.ceil(THREAD_PROBE_SECONDS / max(cost, 1e-9))))
    rounds = max(1, min(PROBE_ROUNDS, (budget // per_part - 1) // 3))
    per_part = min(per_part, budget // (3 * rounds + 1))
    return per_part * (3 * rounds + 1), rounds


def _parallel_share(fn_name: str, unmeasured: float = 1.0) -> float:
    """:func:`parallel_fraction`'s share alone, for every call (no words made)."""
    speedup = _thread_speedups.get(fn_name)
    if speedup is None or not gil_enabled():
        return 1.0 if not gil_enabled() else unmeasured
    return min(1.0, max(0.0, 2.0 * (1.0 - 1.0 / speedup)))


def parallel_fraction(
    fn_name: str, unmeasured: float = 1.0, optimistic: bool = False
) -> tuple[float, str]:
    """The share of ``fn``'s work that runs in parallel on the caller's threads, and why.

    From the two-thread speed-up ``s`` that the probe measured, by Amdahl's law
    (``s = 1 / ((1 - f) + f / 2)``); 1 without a GIL; ``unmeasured`` before any
    measurement (1: the best case, to see whether threads could win at all; 0 when
    too few items are left to measure); 1 when ``optimistic`` (the best case, to see
    whether measuring again matters).
    """
    if not gil_enabled():
        return 1.0, "this interpreter has no GIL: threads run Python code in parallel"
    speedup = _thread_speedups.get(fn_name)
    if optimistic:
        return 1.0, "taken as parallel until measured"
    if speedup is None:
        if unmeasured:
            return unmeasured, "not measured yet (taken as parallel)"
        return 0.0, "not measured (too few items to tell): taken as holding the GIL"
    fraction = min(1.0, max(0.0, 2.0 * (1.0 - 1.0 / speedup)))
    if fraction >= 0.6:
        why = "it releases the GIL, so threads run it in parallel"
    elif fraction > 0.2:
        why = "it releases the GIL for part of its work"
    else:
        why = "it holds the GIL, so threads run it one at a time"
    times = len(_thread_probes.get(fn_name, ())) or 1
    measured = f" (median of {times} measurements)" if times > 1 else ""
    return fraction, f"{speedup:.2f}x the serial speed on 2 threads{measured}: {why}"


def stays_serial(fn_name: str, n_items: int | None, workers: int | None) -> bool:
    """True when ``fn``'s remembered cost makes serial beat every backend's lower bound:
    the fast path of ``auto``, decided without probing or predicting."""
    cost = costs.peek("name:" + fn_name)
    if cost is None or n_items is None:
        return False
    workers = workers or _default_workers()
    parallel = _parallel_share(fn_name)
    floor = _calibration.load(workers).floor(n_items, cost, workers, parallel)
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
    return default_workers()


def decide(
    fn_name: str,
    n_items: int,
    exact: bool,
    cost: float,
    source: str,
    workers: int,
    options: frozenset[str] = frozenset(),
    *,
    stops: bool = False,
    unmeasured: float = 1.0,
    optimistic: bool = False,
    item_bytes: float = 0.0,
) -> Decision:
    """Predict each candidate and choose (see the module docstring).

    ``item_bytes``: the pickled size of an item, copied per item by the backends
    that send items to other processes (0: unknown, or small enough to ignore).

    ``unmeasured``, ``optimistic``: the parallel share of the work on the caller's
    threads taken for a function not measured there (enough) yet (see
    :func:`parallel_fraction`).

    With ``stops`` (``item_timeout=``), serial is not a choice: the fastest
    backend that can stop a running item is.
    """
    serial_seconds = n_items * cost
    predictions = {"serial": serial_seconds}
    decision = Decision(fn_name, n_items, exact, cost, source, predictions, {}, "serial", None,
                        item_bytes=item_bytes)  # fmt: skip
    calibration = _calibration.load(workers)
    decision.calibration = calibration
    parallel = 1.0 if optimistic else _parallel_share(fn_name, unmeasured)
    floor = calibration.floor(n_items, cost, workers, parallel)
    if not stops and (n_items < 2 or serial_seconds * EXPLORE_BAND <= floor):
        return decision  # no backend can win: skip the candidates
    for name in candidates(options, stops=stops):
        model = _model(calibration, name, workers)
        if model is None:
            continue
        if not stops and model.fixed >= serial_seconds:
            continue  # cannot win even warm: skip the batch simulation
        cls = _registry.backend_class(name)
        predicted = model.predict(n_items, cost, item_bytes if cls.serializes else 0.0)
        if cls.shares_gil:
            fraction, decision.on_threads = parallel_fraction(fn_name, unmeasured, optimistic)
            # the work that does not run in parallel takes its serial time
            rounds = math.ceil(n_items / workers)
            predicted += model.work_factor * cost * (1.0 - fraction) * (n_items - rounds)
        warm = predicted * _corrections.get((fn_name, name), 1.0)
        startup = 0.0 if _running(name) else calibration.startup.get(name, 0.0)
        if startup and warm * SERIAL_MARGIN < serial_seconds:  # it would win, once started
            decision.missed[name] = serial_seconds - warm
            startup = max(0.0, startup - _missed.get((fn_name, name), 0.0))
        predictions[name] = warm + startup
        decision.startup[name] = startup
    best = min((n for n in predictions if n != "serial"), key=predictions.__getitem__, default="")
    if stops:
        if not best:
            raise ValueError(
                "item_timeout needs a backend that runs fn in worker processes, which it "
                "can stop; backend='auto' found none installed and calibrated"
            )
        decision.chosen = best
        return decision
    if not best:
        return decision
    clear_win = predictions[best] * SERIAL_MARGIN < serial_seconds  # models err: no close calls
    close = predictions[best] < serial_seconds * EXPLORE_BAND
    if clear_win or (close and _explore(fn_name, best, decision)):
        decision.chosen = best
    return decision


def commit(decision: Decision) -> None:
    """A call runs as decided: what staying serial costs it, against each backend that
    would win once started, counts towards that backend's start-up (see the module doc)."""
    if decision.chosen != "serial":
        return
    for name, seconds in decision.missed.items():
        key = (decision.fn, name)
        _bounded(_missed)[key] = _missed.get(key, 0.0) + seconds


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
_missed: dict[tuple[str, str], float] = {}  # (fn, backend) -> seconds serial cost beyond it
_thread_speedups: dict[str, float] = {}  # fn -> its speed-up on two of the caller's threads
_thread_probes: dict[str, list[float]] = {}  # fn -> each measurement of it so far
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
    for table in (_corrections, _explored, _missed):
        for key in [key for key in list(table) if key[0] == fn_name]:
            table.pop(key, None)
    _thread_speedups.pop(fn_name, None)
    _thread_probes.pop(fn_name, None)
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


def candidates(options: frozenset[str] = frozenset(), *, stops: bool = False) -> list[str]:
    """The backends ``auto`` may choose now: those whose cluster is named or attached
    (see :attr:`parmap.backends.Backend.cluster_env`) if any, else every one allowed;
    of those, the ones that take ``options`` (and with ``stops``, that can stop a
    running item)."""
    allowed = {
        name: cls
        for name, cls in _registry.installed_classes().items()
        if cls.auto and options <= set(cls.option_names) and (cls.stops_running or not stops)
    }
    clusters = [
        name
        for name, cls in allowed.items()
        if (cls.cluster_env and getenv(cls.cluster_env)) or cls.attached()
    ]
    return clusters or list(allowed)


def _model(calibration: Calibration, name: str, workers: int) -> Any:
    """``name``'s calibrated model; for an attached backend the calibration lacks (an MPI
    job's ranks exist only inside the job, never where the calibration ran), its class's."""
    model = calibration.model(name, workers)
    if model is None and _registry.backend_class(name).attached():
        model = _calibration.defaults(workers).model(name, workers)
    return model


def _running(name: str) -> bool:
    return _registry.running(name) or _registry.backend_class(name).attached()


on_forget(forget)
