"""``parmap()``, ``imap()`` and ``starmap()``: one call, any backend.

One item's journey::

    parmap(fn, items)
      │ resolve the backend (argument > config() > $PARMAP_BACKEND > default)
      │ serialize fn once (cloudpickle; share() handles publish their value)
      ▼
    _Call.batches()  ── the loop below, the only scheduler in parmap ──┐
      │ read the next batch from the input (size from _batching.Batcher) │
      │ backend.submit(spec, batch)  while the window has room            │
      │ backend.wait(in_flight)      until one batch is done              │
      │ worker: _worker.run_batch -> Outcome (results, timing, or error)  │
      │ learn the per-item cost, retry a crashed batch, or raise          │
      │ yield results in input order (or as completed)  ◄─────────────────┘
      ▼
    list / iterator of results

On any exit from the loop (error, timeout, Ctrl-C, an abandoned ``imap``) the
batches still in flight are cancelled; on timeout and Ctrl-C running work is
stopped too.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import logging
import operator
import os
import reprlib
import sys
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from functools import partial
from types import BuiltinFunctionType, FunctionType
from typing import Any

from parmap import _auto, _config, _registry, _worker
from parmap._batching import Batcher, costs, read_items
from parmap._errors import (
    RemoteTraceback,
    SerializationError,
    TimeoutError,
    WorkerCrashedError,
    WorkerInitializationError,
    add_note,
)
from parmap._serialization import digest, dumps, dumps_function, loads
from parmap._share import publishing
from parmap._worker import CallSpec, ErrorRecord, Outcome, run_items
from parmap.backends._base import Backend
from parmap.backends._serial import SerialBackend

__all__ = ["imap", "parmap", "starmap"]

log = logging.getLogger("parmap")
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6


def parmap(
    fn: Callable[..., Any],
    *iterables: Iterable[Any],
    backend: str | None = None,
    workers: int | None = None,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: bool | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    address: str | None = None,
) -> list[Any]:
    """Apply ``fn`` to every item in parallel and return the results as a list.

    Called like the built-in ``map``: with several iterables, ``fn`` gets one
    argument from each and the shortest iterable ends the call. So
    ``toolbox.register("map", parmap.parmap)`` works in DEAP as is.

    Args:
        fn: the function; lambdas, closures and decorated functions work.
        *iterables: one or more iterables (generators included).
        backend: ``"serial"``, ``"multiprocessing"``, ``"loky"``, ``"ray"``,
            ``"dask"`` or a registered name; default from ``parmap.config()``,
            then ``$PARMAP_BACKEND``, then ray if installed, else loky.
        workers: parallel workers (default: all CPUs, or the cluster's).
        chunksize: items per task; ``None`` sizes batches automatically.
        ordered: results in input order (True) or in completion order.
        progress: show a tqdm progress bar.
        timeout: seconds for the whole call; then running work is stopped.
        retries: times a batch lost to a crashed worker is retried (default 0).
        initializer: called once in each worker process before its first item.
        initargs: arguments for ``initializer``.
        address: a Ray cluster or Dask scheduler address (ray and dask only).

    Returns:
        The list of ``fn``'s results.

    Raises:
        Exception: whatever ``fn`` raised, with its own type, the worker's
            traceback as ``__cause__`` and a note naming the item.
        UnknownBackendError: the backend name is not known (a ``ValueError``).
        BackendNotInstalledError: the backend's package is missing.
        SerializationError: ``fn``, an item or a result cannot be pickled.
        WorkerCrashedError: a worker process died.
        WorkerInitializationError: ``initializer`` raised.
        TimeoutError: ``timeout`` passed (a builtin ``TimeoutError`` too).
    """
    if (
        len(iterables) == 1
        and workers is None
        and chunksize is None
        and progress is None
        and timeout is None
        and retries is None
        and initializer is None
        and address is None
    ):  # the common small call: maybe nothing to decide
        results = _at_once(fn, iterables[0], backend)
        if results is not None:
            return results
    options = locals()
    items, star, total = _zip(iterables), len(iterables) > 1, _total(iterables)
    return _run(fn, items, options, star=star, total=total, sequence=_sequence(iterables))


def _at_once(fn: Callable[..., Any], iterable: Iterable[Any], backend: str | None) -> Any:
    """The results of a call that runs in place for want of any choice, else None.

    A list or tuple under ``backend="serial"``, or under ``"auto"`` with a function
    whose remembered cost keeps it serial, named by the argument or by
    ``$PARMAP_BACKEND``, outside any ``config()`` context (it may set a timeout or a
    progress bar): what :func:`_run` would do in place, without resolving every
    setting first. At 10 items of 3 µs that resolution was a third of the call
    (bench_auto's grid).
    """
    if type(iterable) not in (list, tuple) or not callable(fn) or _config.current_options():
        return None
    if backend is None:
        if _worker.in_worker:
            return None
        backend = _config.getenv("PARMAP_BACKEND").strip()
    if _config.getenv("PARMAP_WORKERS"):  # to be checked, and auto to count with
        return None
    if backend == "serial":
        return _in_place(fn, iterable, False, [])  # type: ignore[arg-type]
    if backend != _registry.AUTO:
        return None
    name, n_items = _cost_name(fn), len(iterable)  # type: ignore[arg-type]
    verdict = (name, n_items)
    if _serial_verdicts.get(verdict) != costs.version:
        if not _auto.stays_serial(name, n_items, None):
            return None
        if len(_serial_verdicts) >= 1024:
            _serial_verdicts.clear()
        _serial_verdicts[verdict] = costs.version
    return _in_place(fn, iterable, False, [], name)  # type: ignore[arg-type]


# (cost name, items) -> costs.version when auto found serial unbeatable for them: the
# answer holds until the next cost update, at most 8 in-place calls away (CostMemory.sample)
_serial_verdicts: dict[tuple[str, int], int] = {}


def _sequence(iterables: tuple[Iterable[Any], ...]) -> list[Any] | tuple[Any, ...] | None:
    """The input itself when it is one list or tuple: a serial call need not copy it."""
    if len(iterables) == 1 and type(iterables[0]) in (list, tuple):
        return iterables[0]  # type: ignore[return-value]
    return None


def imap(
    fn: Callable[..., Any],
    *iterables: Iterable[Any],
    backend: str | None = None,
    workers: int | None = None,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: bool | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    address: str | None = None,
) -> Iterator[Any]:
    """Like :func:`parmap`, but return an iterator that streams the results.

    Only a bounded number of items is read ahead and in flight, so an endless
    generator runs in bounded memory. Closing the iterator (or leaving a
    ``for`` loop over it) cancels the work not yet started.

    Args:
        fn: see :func:`parmap`.
        *iterables: see :func:`parmap`.
        backend: see :func:`parmap`.
        workers: see :func:`parmap`.
        chunksize: see :func:`parmap`.
        ordered: see :func:`parmap`.
        progress: see :func:`parmap`.
        timeout: see :func:`parmap`.
        retries: see :func:`parmap`.
        initializer: see :func:`parmap`.
        initargs: see :func:`parmap`.
        address: see :func:`parmap`.

    Returns:
        An iterator over ``fn``'s results.

    Raises:
        Exception: as :func:`parmap`; errors about the arguments are raised
            by this call, errors of the work while iterating.
    """
    call = _Call.create(
        fn, _zip(iterables), locals(), star=len(iterables) > 1, total=_total(iterables)
    )
    return _stream(call)


def starmap(fn: Callable[..., Any], iterable: Iterable[Iterable[Any]], **options: Any) -> list[Any]:
    """Like :func:`parmap`, with each item unpacked as ``fn(*item)``.

    Args:
        fn: the function.
        iterable: an iterable of argument tuples.
        **options: the keyword arguments of :func:`parmap`.

    Returns:
        The list of results.

    Raises:
        Exception: as :func:`parmap`.
    """
    unknown = set(options) - _CALL_OPTIONS
    if unknown:
        raise TypeError(f"starmap() got unexpected keyword argument(s) {sorted(unknown)}")
    return _run(fn, iter(iterable), options, star=True, total=_total((iterable,)))


_CALL_OPTIONS = frozenset(
    {"backend", "workers", "chunksize", "ordered", "progress", "timeout", "retries",
     "initializer", "initargs", "address"}
)  # fmt: skip


def _run(
    fn: Callable[..., Any],
    items: Iterator[Any],
    args: dict[str, Any],
    *,
    star: bool,
    total: int | None,
    sequence: list[Any] | tuple[Any, ...] | None = None,
) -> list[Any]:
    """Run a whole call and return its results as a list.

    ``sequence``: the input list or tuple, when ``items`` iterates over one.
    """
    choice = _choose(fn, args)
    probed: list[Any] = []
    decision = None
    if choice.name == _registry.AUTO:
        name = _cost_name(fn)
        if _fits_in_place(args) and _auto.stays_serial(name, total, choice.workers):
            return _in_place(fn, sequence or items, star, probed, name)
        decision, items, total, probed = _plan_auto(fn, items, args, star, total, choice)
        choice = dataclasses.replace(choice, name=decision.chosen)
    if choice.name == "serial" and _fits_in_place(args):
        return _in_place(fn, items if probed else sequence or items, star, probed)
    started = time.perf_counter()
    call = _Call.create(fn, items, args, star=star, total=total, choice=choice, probed=probed)
    results = _collect_all(call)
    if decision is not None:
        _auto.learn(decision, time.perf_counter() - started)
    return results


def _choose(fn: Callable[..., Any], args: dict[str, Any]) -> _config.BackendChoice:
    if not callable(fn):
        raise TypeError(f"parmap's first argument must be callable, got {_repr.repr(fn)}")
    choice = _config.get_backend(args.get("backend"), args.get("workers"))
    if _worker.in_worker and choice.source != "argument":
        # A nested call on a worker runs in place: no pool inside a pool, no deadlock.
        choice = _config.BackendChoice("serial", "nested", None)
    context = _config.current_options()
    if context:  # these settings have no environment variable: resolve them once, here
        for key in _CONTEXT_SETTINGS:
            if args.get(key) is None and context.get(key) is not None:
                args[key] = context[key]
    _positive("workers", choice.workers)
    _positive("chunksize", args.get("chunksize"))
    retries = args.get("retries")
    if retries is not None and (not isinstance(retries, int) or retries < 0):
        raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
    timeout = args.get("timeout")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return choice


_CONTEXT_SETTINGS = ("chunksize", "retries", "timeout", "progress")


def _fits_in_place(args: dict[str, Any]) -> bool:
    """Whether a serial call can skip the driver: no initializer, timeout or progress bar.

    (``args`` as resolved by :func:`_choose`.)
    """
    return args.get("initializer") is None and not args.get("timeout") and not args.get("progress")


def _in_place(
    fn: Callable[..., Any],
    items: Iterator[Any] | list[Any] | tuple[Any, ...],
    star: bool,
    probed: list[Any],
    cost_name: str | None = None,
) -> list[Any]:
    """Run a serial call here, without the driver: there is nothing to schedule.

    The same worker code runs the items and the same errors come out; only the
    fixed cost per call goes. ``probed`` holds the results ``auto`` already
    computed for the first items.
    """
    start = len(probed)
    chunk = items if isinstance(items, (list, tuple)) else read_items(items, sys.maxsize, start)
    started = time.perf_counter()
    results, record = run_items(fn, chunk, star)
    seconds = time.perf_counter() - started
    if record is not None:
        outcome = Outcome(None, seconds, error=record)
        raise _error_from(outcome, _Batch(0, start, chunk, None), SerialBackend, _qualname(fn))
    if chunk:
        costs.sample("name:" + (cost_name or _cost_name(fn)), len(chunk), seconds)
    if not probed:
        return results
    probed.extend(results)
    return probed


def _plan_auto(
    fn: Callable[..., Any],
    items: Iterator[Any],
    args: dict[str, Any],
    star: bool,
    total: int | None,
    choice: _config.BackendChoice,
) -> tuple[_auto.Decision, Iterator[Any], int | None, list[Any]]:
    """Let ``auto`` decide; return the decision, the rest of the input and its count, and
    the results computed while probing."""
    probed: list[Any] = []
    probe = _probe_runner(fn, items, args, star, probed)
    decision, items, total = _auto.plan(_cost_name(fn), items, total, choice.workers, probe)
    return decision, items, total, probed


def _probe_runner(
    fn: Callable[..., Any], items: Iterator[Any], args: dict[str, Any], star: bool, out: list[Any]
) -> Callable[[int], list[Any]]:
    """For ``backend="auto"``: run ``fn`` serially on the next ``k`` items, appending to ``out``."""
    serial = {**args, "backend": "serial", "progress": False}

    def probe(k: int) -> list[Any]:
        call = _Call.create(fn, itertools.islice(items, k), serial, star=star, total=None)
        call.start = len(out)
        results = _collect_all(call)
        out.extend(results)
        return results

    return probe


def _collect_all(call: _Call) -> list[Any]:
    results: list[Any] = []
    for batch in call.batches():  # extend by batches: no per-item generator step
        results.extend(batch)
    return results


def _stream(call: _Call) -> Iterator[Any]:
    batches = call.batches()
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


@dataclass
class _Batch:
    seq: int
    start: int
    items: Sequence[Any]
    payload: Any
    attempts: int = 0

    def span(self) -> str:
        end = self.start + len(self.items) - 1
        return str(self.start) if end == self.start else f"{self.start}-{end}"


@dataclass
class _Call:
    """One parmap call: its backend, its serialized function and its settings."""

    backend: Backend
    spec: Any
    items: Iterator[Any]
    batcher: Batcher
    ordered: bool
    progress: bool
    timeout: float | None
    retries: int
    fn_name: str
    started: float = field(default_factory=time.monotonic)
    done_items: int = 0
    probed: list[Any] = field(default_factory=list)  # results auto computed in the caller
    start: int = 0  # the index of this call's first item (auto's probes come first)

    @classmethod
    def create(
        cls,
        fn: Callable[..., Any],
        items: Iterator[Any],
        args: dict[str, Any],
        *,
        star: bool,
        total: int | None,
        choice: _config.BackendChoice | None = None,
        probed: list[Any] | None = None,
    ) -> _Call:
        """Check the arguments, pick the backend and serialize the function.

        ``probed``: results ``auto`` already computed for the first items.
        """
        get = partial(_setting, args)
        choice = choice or _choose(fn, args)
        workers = choice.workers
        probed = probed if probed is not None else []
        if choice.name == _registry.AUTO:
            decision, items, total, probed = _plan_auto(fn, items, args, star, total, choice)
            choice = dataclasses.replace(choice, name=decision.chosen)
        chunksize, retries, timeout = get("chunksize"), get("retries") or 0, get("timeout")
        options = {"workers": workers, "address": get("address")}
        options["start_method"] = get("start_method") if choice.name == "multiprocessing" else None
        backend = _registry.acquire(choice.name, options, source=choice.source)
        spec, keys = _spec(backend, fn, star, args.get("initializer"), args.get("initargs", ()))
        batcher = Batcher(backend.workers, backend.batch_overhead, total, keys, chunksize)
        log.debug("parmap: %s, %d workers, %s items", choice, backend.workers, total)
        return cls(
            backend=backend,
            spec=backend.prepare(spec),
            items=items,
            batcher=batcher,
            ordered=bool(args.get("ordered", True)),
            progress=bool(get("progress")),
            timeout=timeout,
            retries=retries,
            fn_name=_qualname(fn),
            probed=probed,
        )

    def batches(self) -> Generator[list[Any], None, None]:
        """Drive the call; yield the results batch by batch. See the module docstring."""
        in_flight: dict[cf.Future[Any], _Batch] = {}
        bar = _progress_bar(self) if self.progress else None
        stop_running = True
        try:
            if self.probed:
                self.done_items = len(self.probed)
                if bar is not None:
                    bar.update(len(self.probed))
                yield self.probed
            yield from self._drive(in_flight, bar)
            stop_running = False
        except GeneratorExit:  # the caller abandoned imap(): cancel what has not started
            stop_running = False
            raise
        except Exception as exc:  # fn's error: running batches are bounded, let them end
            stop_running = isinstance(exc, (TimeoutError, WorkerCrashedError))
            raise
        finally:  # KeyboardInterrupt and other BaseExceptions stop running work
            if in_flight:
                self.backend.cancel(list(in_flight), stop_running=stop_running)
            if bar is not None:
                bar.close()

    def _drive(self, in_flight: dict[cf.Future[Any], _Batch], bar: Any) -> Iterator[list[Any]]:
        ready: dict[int, list[Any]] = {}
        next_seq = seq = 0
        next_index = self.start + len(self.probed)
        exhausted = False
        while True:
            while not exhausted and self._room(in_flight, ready):
                size = self.batcher.next_size()
                chunk = self._read(size, next_index)
                exhausted = len(chunk) < size
                if chunk:
                    batch = _Batch(seq, next_index, chunk, self._payload(chunk, next_index))
                    self._submit(batch, in_flight)
                    self.batcher.took(len(chunk))
                    seq, next_index = seq + 1, next_index + len(chunk)
            if not in_flight:
                return
            done = self.backend.wait(list(in_flight), self._remaining())
            if not done:
                self._time_out()
            for future in sorted(done, key=lambda f: in_flight[f].seq):
                batch = in_flight.pop(future)
                results = self._collect(future, batch, in_flight)
                if results is None:  # resubmitted after a crash
                    continue
                self.done_items += len(results)
                if bar is not None:
                    bar.update(len(results))
                if self.ordered:
                    ready[batch.seq] = results
                else:
                    yield results
            while next_seq in ready:
                yield ready.pop(next_seq)
                next_seq += 1
            if self._remaining() == 0.0:
                self._time_out()

    def _room(self, in_flight: dict[Any, _Batch], ready: dict[int, Any]) -> bool:
        workers = self.backend.workers
        window = workers if self.batcher.probing else 2 * workers
        return len(in_flight) < window and len(in_flight) + len(ready) < 8 * workers

    def _read(self, size: int, start: int) -> list[Any]:
        return read_items(self.items, size, start)

    def _payload(self, chunk: list[Any], start: int) -> Any:
        if not self.backend.serializes:
            return chunk
        try:
            return dumps(chunk)
        except Exception as exc:
            position = _first_unpicklable(chunk)
            what = "an item"
            if position >= 0:
                what = f"item {start + position} ({_repr.repr(chunk[position])})"
            raise SerializationError(
                f"{what} could not be pickled to send it to a {self.backend.name} worker: {exc}"
            ) from exc

    def _submit(self, batch: _Batch, in_flight: dict[cf.Future[Any], _Batch]) -> None:
        try:
            future = self.backend.submit(self.spec, batch.payload)
        except Exception as exc:
            error = self.backend.translate(exc, None)
            if error is exc:
                raise
            raise error from exc
        in_flight[future] = batch

    def _collect(
        self, future: cf.Future[Any], batch: _Batch, in_flight: dict[cf.Future[Any], _Batch]
    ) -> list[Any] | None:
        try:
            raw = future.result()
        except BaseException as exc:
            error = self.backend.translate(exc, future)
            if isinstance(error, WorkerCrashedError):
                if batch.attempts < self.retries:
                    batch.attempts += 1
                    log.warning("parmap: %s; retrying items %s", error, batch.span())
                    self._submit(batch, in_flight)
                    return None
                raise self._crashed(error, batch, in_flight) from exc
            if error is exc:
                raise
            raise error from exc
        outcome: Outcome = loads(raw) if isinstance(raw, bytes) else raw
        if outcome.error is not None:
            raise self._failure(outcome, batch)
        self.batcher.observe(len(batch.items), outcome.seconds)
        return outcome.results

    def _crashed(
        self, error: WorkerCrashedError, batch: _Batch, in_flight: dict[Any, _Batch]
    ) -> WorkerCrashedError:
        lost = [batch, *in_flight.values()]
        spans = ", ".join(b.span() for b in sorted(lost, key=lambda b: b.start))
        hint = "" if self.retries else "; pass retries=N to retry lost batches"
        message = f"{error} while running {self.fn_name}; items in flight: {spans}{hint}"
        indices = [i for b in lost for i in range(b.start, b.start + len(b.items))]
        return WorkerCrashedError(message, exitcode=error.exitcode, items=sorted(indices))

    def _failure(self, outcome: Outcome, batch: _Batch) -> BaseException:
        return _error_from(outcome, batch, self.backend, self.fn_name)

    def _remaining(self) -> float | None:
        if self.timeout is None:
            return None
        return max(0.0, self.timeout - (time.monotonic() - self.started))

    def _time_out(self) -> None:
        total = "?" if self.batcher.total is None else self.batcher.total
        raise TimeoutError(
            f"parmap call of {self.fn_name} exceeded timeout={self.timeout}s on the "
            f"{self.backend.name} backend ({self.done_items} of {total} items done); "
            "its running work was stopped"
        )


def _error_from(
    outcome: Outcome, batch: _Batch, backend: type[Backend] | Backend, fn_name: str
) -> BaseException:
    """The exception to raise for a batch that stopped on an error record."""
    record = outcome.error
    assert record is not None
    where = f"{backend.name} worker pid {outcome.pid or os.getpid()}"  # 0: run in this process
    if record.position is not None:
        shown = _repr.repr(batch.items[record.position])
        item = f"item {batch.start + record.position}: {shown}"
    else:
        item = f"items {batch.span()}"
    if record.stage == "item":
        exc = record.exc if record.exc is not None else _rebuild(record)
        if backend.serializes:
            exc.__cause__ = RemoteTraceback(record.tb)
        add_note(exc, f"parmap: raised by {fn_name} on {item} ({where})")
        return exc
    cause = record.exc if record.exc is not None and not backend.serializes else None
    if record.stage == "init":
        error: BaseException = WorkerInitializationError(
            f"initializer raised {record.type_name}: {record.message} ({where}); "
            "no item ran. Fix the initializer; it runs once in each worker process"
        )
    elif record.stage == "result":
        error = SerializationError(
            f"the result of {fn_name} on {item} could not be pickled to send it "
            f"back from the {where}: {record.type_name}: {record.message}"
        )
    else:
        error = SerializationError(
            f"the {where} could not unpickle the function or {item}: "
            f"{record.type_name}: {record.message}. {_LOAD_HINT}"
        )
    error.__cause__ = cause or RemoteTraceback(record.tb)
    return error


_LOAD_HINT = (
    "Workers must be able to import the modules your function and items come from "
    "(install them there, or ship one by value with cloudpickle.register_pickle_by_value(module)); "
    "classes made at run time can be made on each worker with initializer="
)


def _setting(args: dict[str, Any], key: str) -> Any:
    return _config.resolve(key, args.get(key))[0]


def _positive(name: str, value: Any) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return value


def _spec(
    backend: Backend,
    fn: Callable[..., Any],
    star: bool,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
) -> tuple[CallSpec, tuple[str | None, ...]]:
    """Serialize the function (and initializer) once for the whole call."""
    if initializer is not None and not callable(initializer):
        raise TypeError(f"initializer must be callable, got {_repr.repr(initializer)}")
    init = (initializer, tuple(initargs)) if initializer is not None else None
    name_key = "name:" + _cost_name(fn)
    if not backend.serializes:
        return CallSpec("local", fn, star, _local_token(init), init), (None, name_key)
    with publishing(backend):
        fn_blob = _dumps_or_raise(fn, "function", dumps_function)
        init_blob = _dumps_or_raise(init, "initializer", dumps_function) if init else None
    token = digest(fn_blob)
    spec = CallSpec(token, fn_blob, star, digest(init_blob) if init_blob else None, init_blob)
    return spec, (token, name_key)


_local_initializers: dict[str, Any] = {}


def _local_token(init: tuple[Callable[..., Any], tuple[Any, ...]] | None) -> str | None:
    """Identify an in-process initializer by identity and arguments (it is never pickled)."""
    if init is None:
        return None
    token = f"local:{id(init[0])}:{digest(_dumps_or_raise(init[1], 'initargs'))}"
    _local_initializers[token] = init[0]  # keeps the id from being reused
    return token


def _dumps_or_raise(obj: Any, what: str, dump: Callable[[Any], bytes] = dumps) -> bytes:
    try:
        return dump(obj)
    except Exception as exc:
        raise SerializationError(
            f"the {what} {_repr.repr(obj)} could not be pickled to send it to the workers "
            f"(nothing was started): {exc}. Make it picklable, or create the unpicklable "
            "object on the worker (inside the function, or in initializer=)"
        ) from exc


def _first_unpicklable(chunk: list[Any]) -> int:
    for position, item in enumerate(chunk):
        try:
            dumps(item)
        except Exception:
            return position
    return -1


def _cost_name(fn: Any) -> str:
    """What the cost memory knows ``fn`` by, cheap enough for every call: its name.

    A callable object's identity is added: two instances of one class (say, one
    fitness per problem size) may cost very differently. What was learned about
    an object is forgotten when it dies, since a later object may get its id.
    """
    if type(fn) is FunctionType:
        return _qualname(fn)
    known = _live_objects.get(id(fn))  # a callable object seen before (and alive: same id)
    if known is not None:
        return known
    base = fn
    while isinstance(base, partial):
        base = base.func
    base = getattr(base, "__func__", base)
    if isinstance(base, (FunctionType, BuiltinFunctionType, type)):
        return _qualname(base)
    key = id(base)
    name = _live_objects.get(key)
    if name is None:
        name = f"{_qualname(base)}@{key:x}"
        try:
            weakref.finalize(base, _forget, key, name).atexit = False
        except TypeError:  # no weak references to it: its id may name a later object too
            return name
        _live_objects[key] = name
    return name


_live_objects: dict[int, str] = {}  # id -> cost name of the callable objects seen alive


def _forget(key: int, name: str) -> None:
    """A callable object died: drop what was learned about it (see :func:`_cost_name`)."""
    _live_objects.pop(key, None)
    costs.forget("name:" + name)
    _auto.forget(name)


def _qualname(fn: Any) -> str:
    if type(fn) is FunctionType:  # the usual case, without getattr's caught AttributeError
        return f"{fn.__module__ or 'builtins'}.{fn.__qualname__}"
    while isinstance(fn, partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


def _rebuild(record: ErrorRecord) -> BaseException:
    """Re-create an exception that could not be pickled, keeping its type if possible."""
    module, _, name = record.type_name.rpartition(".")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
        return cls(record.message)
    except Exception:
        return RuntimeError(f"{record.type_name}: {record.message}")


def _progress_bar(call: _Call) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=call.batcher.total, unit="item", desc=f"parmap[{call.backend.name}]")
