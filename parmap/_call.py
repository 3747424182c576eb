"""One call, from its arguments to its results: the route every map takes.

::

    Call.plan(fn, iterables, options)        parmap(), starmap(), imap(), scoop's map
      check fn and each option; resolve it: argument > config() > environment
      the backend: argument > config() > $PARMAP_BACKEND > default, and on a
        worker in place (parmap._config); auto is decided here, once
        (parmap._auto), timing the first items in this thread if the
        function's cost is not known yet: those results are kept
      serial, or auto's serial, with nothing to drive (no timeout, no progress
        bar): the items run here, in this thread, through the worker's own
        loop (parmap._worker.run_items), with the same errors
      otherwise: lease the backend, serialize fn once (a CallSpec the workers
        get), size the batches, and drive them (parmap._driver)
    call.results() -> list  /  call.stream() -> iterator
      either way, auto learns the call's time (parmap._auto.learn)

Before any of that, :func:`quick` answers the most common small call (a list,
no options, under serial or under auto for a function whose known cost keeps
it serial) without resolving every setting: at 10 items of 3 µs that
resolution was a third of the call.
"""

from __future__ import annotations

import itertools
import operator
import os
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field, replace
from typing import IO, Any

from parmap import _auto, _config, _registry, _worker
from parmap._batching import Batcher, read_items
from parmap._config import BackendChoice
from parmap._costs import cost_name, costs, qualname
from parmap._driver import Driver, RandomState
from parmap._errors import SerializationError
from parmap._failures import error_from, in_place, item_repr
from parmap._serialization import digest, dumps, dumps_function
from parmap._share import live_shares, publishing
from parmap._worker import CallSpec, Outcome, execute, run_items
from parmap.backends._base import Backend

__all__ = ["CALL_OPTIONS", "Call", "explain", "quick"]

# The options of parmap(), imap() and starmap(), besides fn and the iterables.
CALL_OPTIONS = (
    "backend", "workers", "chunksize", "ordered", "progress", "timeout", "retries",
    "initializer", "initargs", "address", "item_timeout", "return_exceptions",
)  # fmt: skip
_CONTEXT_SETTINGS = ("chunksize", "retries", "timeout", "progress")  # config() only
_ITEM_SETTINGS = ("item_timeout", "return_exceptions")  # config() or the environment
_BACKEND_OPTIONS = ("address", "start_method")  # go to backends that take them


# -- the quick answer ------------------------------------------------------------------


def quick(fn: Callable[..., Any], iterable: Iterable[Any], backend: Any) -> Any:
    """The results of a call that runs in place for want of any choice, else None.

    A list or tuple under ``backend="serial"``, or under ``"auto"`` with a function
    whose remembered cost keeps it serial, named by the argument or by
    ``$PARMAP_BACKEND``, outside any ``config()`` context (it may set a timeout or a
    progress bar) and with ``$PARMAP_WORKERS`` unset: what :meth:`Call.plan` would
    decide, without resolving every setting first.
    """
    if type(iterable) not in (list, tuple) or not callable(fn) or _config.current_options():
        return None
    if backend is None:
        if _worker.on_worker():
            return None
        backend = _config.getenv("PARMAP_BACKEND").strip()
    if _config.getenv("PARMAP_WORKERS") or _item_settings_in_environment():
        return None  # to be checked, and auto to count with
    items: Sequence[Any] = iterable  # type: ignore[assignment]
    if backend == "serial":
        return _in_place(fn, items, False)
    if backend != _registry.AUTO:
        return None
    name, n_items = cost_name(fn), len(items)
    verdict = (name, n_items)
    if _serial_verdicts.get(verdict) != costs.version:
        if not _auto.stays_serial(name, n_items, None):
            return None
        if len(_serial_verdicts) >= 1024:
            _serial_verdicts.clear()
        _serial_verdicts[verdict] = costs.version
    return _in_place(fn, items, False, name)


def _item_settings_in_environment() -> bool:
    return any(_config.getenv(_config.ENV_VARS[key]) for key in _ITEM_SETTINGS)


# (cost name, items) -> costs.version when auto found serial unbeatable for them: the
# answer holds until the next cost update, at most 8 in-place calls away (CostMemory.sample)
_serial_verdicts: dict[tuple[str, int], int] = {}


def _in_place(
    fn: Callable[..., Any],
    items: Sequence[Any],
    star: bool,
    name: str | None = None,
    start: int = 0,
    spec: CallSpec | None = None,
) -> list[Any]:
    """Run items here, in this thread, through the worker's own loop: same errors.

    ``spec``: the call's local spec when it has an initializer (run once, here) or
    keeps going past an item's exception (``return_exceptions``).
    """
    started = time.perf_counter()
    if spec is None:
        results, record = run_items(fn, items, star)
        outcome = None if record is None else Outcome(None, 0.0, error=record)
    else:
        outcome = execute(spec, fn, items)
        results = outcome.results or []
        outcome = outcome if outcome.error is not None else None
    if outcome is not None:
        raise error_from(outcome, start, items, "serial", False, qualname(fn))
    if items:
        seconds = time.perf_counter() - started
        costs.sample("name:" + (name or cost_name(fn)), len(items), seconds)
    if spec is not None and spec.keep_going:
        where = f"serial worker pid {os.getpid()}"
        in_place(results, start, items, where, False, qualname(fn))
    return results


def _thread_probe(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    star: bool,
    start: int,
    spec: CallSpec | None,
    backend: Backend,
    rounds: int,
) -> tuple[list[Any], float]:
    """How ``fn`` scales on ``backend``'s workers, threads of this process: ``items`` (at
    least 4) cut in equal parts that run in turns, one part alone here (timed: the
    serial reference), then two parts at once as two batches on the backend, for
    ``rounds`` rounds, then one part alone. Each round's speed-up is against the
    faster of the serial parts around it (other load on the machine then errs towards
    not using threads); the median round's, at most 2, is returned with the results,
    in order. The batches run on the backend the call is about to use, so its threads
    build their ``per_worker`` objects once, for this call and the next.

    Raises:
        Exception: what ``fn`` raised on the first failing item, as in place.
    """
    n_parts = 3 * max(1, min(rounds, (len(items) - 1) // 3)) + 1
    cuts = [len(items) * k // n_parts for k in range(n_parts + 1)]
    parts = [items[a:b] for a, b in itertools.pairwise(cuts)]
    spec = spec or CallSpec("local", fn, star)
    prepared = backend.prepare(spec)
    backend.submit(prepared, []).result()  # its threads started: not part of the timing
    outcomes: list[Outcome | None] = [None] * n_parts

    def timed(*group: int) -> float:
        """Run one part here, or several at once as batches on the backend; the seconds."""
        began = time.perf_counter()
        if len(group) == 1:
            outcomes[group[0]] = execute(spec, fn, parts[group[0]])
        else:
            futures = [backend.submit(prepared, parts[part]) for part in group]
            for part, future in zip(group, futures, strict=True):
                outcomes[part] = future.result()
        return time.perf_counter() - began

    serial = [timed(0) / max(1, len(parts[0]))]
    speedups = []
    for first in range(1, n_parts - 1, 3):
        threaded = timed(first, first + 1)
        serial.append(timed(first + 2) / max(1, len(parts[first + 2])))
        done = len(parts[first]) + len(parts[first + 1])
        speedups.append(min(serial[-2:]) * done / max(threaded, 1e-9))
    results: list[Any] = []
    for part, outcome in enumerate(outcomes):
        assert outcome is not None
        if outcome.error is not None:
            raise error_from(outcome, start + cuts[part], parts[part], "serial", False,
                             qualname(fn))  # fmt: skip
        results += outcome.results or []
    return results, min(2.0, sorted(speedups)[len(speedups) // 2])


# -- the settings of one call ----------------------------------------------------------


@dataclass
class Settings:
    """One call's options, each resolved from its argument, ``config()`` or the environment."""

    choice: BackendChoice
    chunksize: int | None = None
    ordered: bool = True
    progress: bool = False
    timeout: float | None = None
    retries: int = 0
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    item_timeout: float | None = None
    return_exceptions: bool = False
    backend_options: dict[str, Any] = field(default_factory=dict)
    explicit: frozenset[str] = frozenset()  # backend options given as arguments

    @classmethod
    def resolve(cls, fn: Any, options: dict[str, Any]) -> Settings:
        """Check the options and resolve each one.

        Raises:
            TypeError, ValueError: a bad function or option, saying what is expected.
            UnknownBackendError: an unknown backend name.
        """
        if not callable(fn):
            raise TypeError(f"parmap's first argument must be callable, got {item_repr(fn)}")
        choice = _config.get_backend(options.get("backend"), options.get("workers"))
        if not _worker.on_worker():
            _worker.note_caller()
        elif choice.source != "argument":
            # A nested call on a worker runs in place: no pool inside a pool, no deadlock.
            choice = BackendChoice("serial", "nested", None)
        context = _config.current_options()
        get = options.get
        settings = cls(choice, ordered=bool(get("ordered", True)))
        for key in _CONTEXT_SETTINGS:
            value = get(key)
            setattr(settings, key, value if value is not None else context.get(key))
        settings.retries = settings.retries or 0
        settings.progress = bool(settings.progress)
        settings.initializer, settings.initargs = get("initializer"), tuple(get("initargs", ()))
        settings.item_timeout = _config.resolve("item_timeout", get("item_timeout"))[0]
        settings.return_exceptions = bool(
            _config.resolve("return_exceptions", get("return_exceptions"))[0]
        )
        for key in _BACKEND_OPTIONS:
            value = _config.resolve(key, get(key))[0]
            if value is not None:
                settings.backend_options[key] = value
        settings.explicit = frozenset(k for k in _BACKEND_OPTIONS if get(k) is not None)
        settings.check()
        return settings

    def check(self) -> None:
        _positive("workers", self.choice.workers)
        _positive("chunksize", self.chunksize)
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, got {self.retries!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if self.initializer is not None and not callable(self.initializer):
            raise TypeError(f"initializer must be callable, got {item_repr(self.initializer)}")
        limit = self.item_timeout
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                                  or not limit > 0):  # fmt: skip
            raise ValueError(f"item_timeout must be a positive number of seconds, got {limit!r}")
        if limit is not None and self.choice.name != _registry.AUTO:
            cls = _registry.backend_class(self.choice.name, source=self.choice.source)
            if not cls.stops_running:
                why = (
                    "it runs fn on this process's own threads, and a running thread cannot "
                    "be stopped" if not cls.serializes else "it cannot stop a worker that "
                    "runs an item, nor replace it"
                )  # fmt: skip
                raise ValueError(
                    f"item_timeout={limit:g} cannot be enforced on the {cls.name!r} backend: "
                    f"{why}. Use a backend that runs fn in worker processes it can stop (loky, "
                    "multiprocessing, ...), or backend='auto', which then chooses one"
                )

    @property
    def drives(self) -> bool:
        """Whether a serial call needs the driver: a timeout or a progress bar."""
        return bool(self.timeout) or self.progress

    @property
    def local(self) -> bool:
        """Whether a call run in place needs a spec (an initializer, or keep going)."""
        return self.initializer is not None or self.return_exceptions

    def options_for(self, cls: type[Backend]) -> dict[str, Any]:
        """What this call passes to backend ``cls``: workers, and the options it takes
        (one given as an argument that it does not take raises, from its __init__)."""
        taken = {k: v for k, v in self.backend_options.items()
                 if k in cls.option_names or k in self.explicit}  # fmt: skip
        return {"workers": self.choice.workers, **taken}


def _positive(name: str, value: Any) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return value


# -- the call ---------------------------------------------------------------------------


@dataclass
class Call:
    """One planned call: its items, where they run, and what ``auto`` decided.

    Built by :meth:`plan`; read once, by :meth:`results` or :meth:`stream`.
    """

    fn: Callable[..., Any]
    items: Iterator[Any]
    settings: Settings
    star: bool
    total: int | None
    sequence: Sequence[Any] | None = None  # the input itself, when it is one list or tuple
    probed: list[Any] = field(default_factory=list)  # results auto computed here
    decision: _auto.Decision | None = None
    started: float = field(default_factory=time.monotonic)
    decided: float | None = None  # when auto had decided: its prediction is for what follows

    @classmethod
    def plan(
        cls,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        options: dict[str, Any],
        *,
        star: bool = False,
    ) -> Call:
        """Check the arguments, choose where the call runs (deciding ``auto``).

        Raises:
            TypeError, ValueError: bad arguments (see :class:`Settings`).
            Exception: with ``auto``, whatever ``fn`` raised on the items it was timed on.
        """
        settings = Settings.resolve(fn, options)
        items, total = _zip(iterables), _total(iterables)
        one = iterables[0] if len(iterables) == 1 else None
        sequence = one if type(one) in (list, tuple) else None
        call = cls(fn, items, settings, star or len(iterables) > 1, total, sequence)  # type: ignore[arg-type]
        if settings.choice.name == _registry.AUTO:
            call._decide()
        return call

    @property
    def backend_name(self) -> str:
        return self.settings.choice.name

    def _decide(self) -> None:
        """``auto``: serial, or the backend predicted fastest (decided once, here)."""
        name, settings = cost_name(self.fn), self.settings
        guarded = settings.item_timeout is not None  # serial cannot stop an item
        if (
            not settings.drives
            and not guarded
            and _auto.stays_serial(name, self.total, settings.choice.workers)
        ):
            self.settings = replace(settings, choice=replace(settings.choice, name="serial"))
            return
        spec = self._local_spec()
        decision, self.items, self.total = _auto.plan(
            name, self.items, self.total, settings.choice.workers, self._probe(spec),
            settings.explicit, stops=guarded, probe_threads=self._probe_threads(spec),
        )  # fmt: skip
        _auto.commit(decision)
        self.decision, self.sequence = decision, None
        self.decided = time.monotonic()  # the probes' items are not in the prediction
        self.settings = replace(settings, choice=replace(settings.choice, name=decision.chosen))

    def _probe(self, spec: CallSpec | None) -> Callable[[int], list[Any]]:
        """Run ``fn`` here on the next ``k`` items; their results are the call's first."""

        def probe(k: int) -> list[Any]:
            chunk = read_items(self.items, k, len(self.probed))
            results = _in_place(self.fn, chunk, self.star, None, len(self.probed), spec)
            self.probed.extend(results)
            return results

        return probe

    def _probe_threads(
        self, spec: CallSpec | None
    ) -> Callable[[str, Sequence[Any], int, int], tuple[list[Any], float]]:
        """Measure how ``fn`` scales on the threads of backend ``name`` on the given items
        (the call's next: their results are kept; see :func:`_thread_probe`); return the
        results and the speed-up."""

        def probe(
            name: str, chunk: Sequence[Any], start: int, rounds: int
        ) -> tuple[list[Any], float]:
            cls = _registry.backend_class(name)
            with _registry.lease(name, self.settings.options_for(cls)) as backend:
                results, speedup = _thread_probe(self.fn, chunk, self.star, start, spec,
                                                 backend, rounds)  # fmt: skip
            self.probed.extend(results)
            return results, speedup

        return probe

    def _local_spec(self) -> CallSpec | None:
        """The spec that runs the initializer here (once per initializer and arguments),
        or keeps going past an item's exception; None when neither is needed."""
        if not self.settings.local:
            return None
        return _local(self.fn, self.star, self.settings)

    # -- reading the results ------------------------------------------------------------

    def results(self) -> list[Any]:
        """Run the call; return every result as a list."""
        if self._in_place():
            return self._run_in_place()
        results: list[Any] = []
        for batch in self._batches():  # extend by batches: no per-item generator step
            results.extend(batch)
        return results

    def stream(self) -> Iterator[Any]:
        """Run the call as results are read; closing the iterator cancels the rest.

        Always through the driver, serial included: a stream reads its input a
        batch at a time (an endless generator runs in bounded memory)."""
        batches = self._batches()
        next(batches)  # the set-up, now
        return _flatten(batches)

    def _in_place(self) -> bool:
        return self.backend_name == "serial" and not self.settings.drives

    def _run_in_place(self) -> list[Any]:
        start = len(self.probed)
        items = self.sequence if self.sequence is not None and not start else None
        if items is None:
            items = read_items(self.items, sys.maxsize, start)
        results = _in_place(self.fn, items, self.star, None, start, self._local_spec())
        if not start:
            return results
        self.probed.extend(results)
        return self.probed

    def _batches(self) -> Generator[list[Any], None, None]:
        """Lease the backend, ship the function, drive the batches; auto learns the time.

        A primed generator: its first ``next()`` does the set-up and yields nothing
        (an empty list), so that ``imap()`` raises errors about its arguments (an
        unpicklable function) when it is called, not when it is first read.
        """
        settings, probed = self.settings, self.probed
        cls = _registry.backend_class(settings.choice.name, source=settings.choice.source)
        keep = RandomState() if cls.serializes else None
        with _registry.lease(
            settings.choice.name, settings.options_for(cls), source=settings.choice.source
        ) as backend:
            driver = self._driver(backend, keep)
            consumer = 0.0
            try:
                yield []
                if probed:
                    if driver.bar is not None:
                        driver.bar.update(len(probed))
                    yield probed
                    if keep is not None:
                        keep.take()
                for batch in driver.batches():
                    paused = time.monotonic()
                    yield batch
                    consumer += time.monotonic() - paused
            finally:
                if driver.bar is not None:
                    driver.bar.close()
        self._learn(consumer)

    def _driver(self, backend: Backend, keep: RandomState | None) -> Driver:
        settings = self.settings
        spec, keys = _spec(backend, self.fn, self.star, settings)
        prepared = backend.prepare(spec)  # may connect: batch_overhead is known after it
        batcher = Batcher(backend.workers, backend.batch_overhead, self.total, keys,
                          settings.chunksize)  # fmt: skip
        total = None if self.total is None else self.total + len(self.probed)
        bar = _progress_bar(backend.name, total) if settings.progress else None
        driver = Driver(backend, prepared, self.items, batcher, qualname(self.fn),
                        start=len(self.probed), ordered=settings.ordered, progress=bar,
                        timeout=settings.timeout, retries=settings.retries,
                        started=self.started, random_state=keep,
                        return_exceptions=settings.return_exceptions,
                        item_timeout=settings.item_timeout)  # fmt: skip
        driver.done_items = len(self.probed)
        return driver

    def _learn(self, consumer: float) -> None:
        """Let auto learn from the call's time; an ``imap`` whose reader held it up for
        more than a tenth of it teaches nothing (the workers went on meanwhile)."""
        if self.decision is None:
            return
        elapsed = time.monotonic() - (self.decided or self.started)
        if consumer <= 0.1 * elapsed:
            _auto.learn(self.decision, elapsed - consumer)


def _flatten(batches: Generator[list[Any], None, None]) -> Iterator[Any]:
    try:
        for batch in batches:
            yield from batch
    finally:  # closing the stream closes the call: cancels what has not started
        batches.close()


def _zip(iterables: tuple[Iterable[Any], ...]) -> Iterator[Any]:
    if not iterables:
        raise TypeError("parmap() needs at least one iterable, like map()")
    if len(iterables) == 1:
        return iter(iterables[0])
    return zip(*iterables, strict=False)


def _total(iterables: tuple[Iterable[Any], ...]) -> int | None:
    if len(iterables) == 1 and type(iterables[0]) in (list, tuple, range):
        return len(iterables[0])  # type: ignore[arg-type]
    if iterables and all(isinstance(it, Sized) for it in iterables):
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    hints = [operator.length_hint(it, -1) for it in iterables]
    return min(hints) if hints and min(hints) > 0 else None


# -- the call's spec: what every worker receives ----------------------------------------


def _spec(
    backend: Backend, fn: Callable[..., Any], star: bool, settings: Settings
) -> tuple[CallSpec, tuple[str | None, ...]]:
    """Serialize the function (and initializer) once for the whole call; return the
    spec and the function's cost-memory keys."""
    init = settings.initializer
    name_key = "name:" + cost_name(fn)
    if not backend.serializes:
        return _local(fn, star, settings), (None, name_key)
    with publishing(backend):
        fn_blob = _dumps_or_raise(fn, "function", dumps_function)
        init_blob = None
        if init is not None:
            init_blob = _dumps_or_raise((init, settings.initargs), "initializer", dumps_function)
    token = digest(fn_blob)
    spec = CallSpec(token, fn_blob, star, digest(init_blob) if init_blob else None, init_blob,
                    settings.item_timeout, settings.return_exceptions,
                    live_shares=live_shares())  # fmt: skip
    return spec, (token, name_key)


def _local(fn: Callable[..., Any], star: bool, settings: Settings) -> CallSpec:
    """The spec of a call that runs here, on live objects: an initializer is known by
    its identity and arguments (it is never pickled), and runs once per process."""
    init, limit, keep_going = (
        settings.initializer,
        settings.item_timeout,
        settings.return_exceptions,
    )
    if init is None:
        return CallSpec("local", fn, star, None, None, limit, keep_going)
    token = f"local:{id(init)}:{digest(_dumps_or_raise(settings.initargs, 'initargs'))}"
    _local_initializers[token] = init  # keeps the id from being reused
    return CallSpec("local", fn, star, token, (init, settings.initargs), limit, keep_going)


_local_initializers: dict[str, Any] = {}


def _dumps_or_raise(obj: Any, what: str, dump: Callable[[Any], bytes] = dumps) -> bytes:
    try:
        return dump(obj)
    except Exception as exc:
        raise SerializationError(
            f"the {what} {item_repr(obj)} could not be pickled to send it to the workers "
            f"(nothing was started): {exc}. Make it picklable, or create the unpicklable "
            "object on the worker (inside the function, or in initializer=)"
        ) from exc


def _progress_bar(backend: str, total: int | None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="item", desc=f"parmap[{backend}]")


# -- explain -----------------------------------------------------------------------------


def explain(
    fn: Callable[..., Any],
    *iterables: Iterable[Any],
    workers: int | None = None,
    file: IO[str] | None = None,
) -> _auto.Decision:
    """Tell what ``backend="auto"`` would choose for this call, without running it.

    The per-item cost is remembered from earlier calls of ``fn`` or, failing
    that, timed on its first item(s) here (``fn`` is called on them).

    Args:
        fn: the function.
        *iterables: the items, as for :func:`parmap.parmap`.
        workers: the worker count to predict for (default: all usable CPUs).
        file: also print the decision there (e.g. ``sys.stdout``).

    Returns:
        The :class:`~parmap._auto.Decision`; ``print()`` it for the table of
        predictions (its ``repr`` in an interactive session shows the same).
    """
    call = Call(fn, _zip(iterables), Settings.resolve(fn, {"workers": workers}),
                len(iterables) > 1, _total(iterables))  # fmt: skip
    decision, _, _ = _auto.plan(cost_name(fn), call.items, call.total, workers, call._probe(None),
                                probe_threads=call._probe_threads(None))  # fmt: skip
    if file is not None:
        print(decision, file=file)
    return decision
