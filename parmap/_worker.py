"""What runs on a worker: one batch of items through the user's function.

Every backend ends up calling :func:`run_batch` (workers in other processes,
bytes in and bytes out) or :func:`run_local` (serial and threads: live objects
in the caller's process). Both produce an :class:`Outcome`; the caller's side
turns an error record back into the user's exception (``parmap._failures``).

Per worker process, three small caches make repeated calls cheap:

- functions by content digest, so a DEAP run that maps the same evaluation
  every generation unpickles it once per worker, not once per batch;
- the digests of initializers that already ran here (``initializer=`` runs once
  per worker process);
- values of ``parmap.share()`` handles, loaded once per worker.

A cached function whose ``share()`` handles the caller has released is dropped
with their values: a handle of the default kind carries its value's bytes, and
sixteen cached generations of a DEAP run would hold sixteen values.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
import os
import signal
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from parmap._serialization import dumps, loads, loads_function

__all__ = [
    "INLINE_SPEC_BYTES",
    "CallSpec",
    "ErrorRecord",
    "ItemFailed",
    "Outcome",
    "drop_released",
    "holds",
    "on_worker",
    "prepare_pool_worker",
    "run_batch",
    "run_items",
    "run_local",
    "running_here",
]

INLINE_SPEC_BYTES = 64 * 1024  # a function this small rides along with every batch

_FUNCTION_CACHE_SIZE = 16
_functions: OrderedDict[str, Callable[..., Any]] = OrderedDict()
_shares_of: dict[str, frozenset[str]] = {}  # a cached function's share() tokens
_initialized: set[str] = set()
_init_lock = threading.RLock()  # reentrant: an initializer may call parmap itself
shared_values: dict[str, Any] = {}
in_worker = False  # True in a process that has run a batch for a remote caller
_caller_pid: int | None = None  # this process's pid once it made a parmap call of its own
_thread = threading.local()  # .running: this thread runs a batch of a caller in this process


def on_worker() -> bool:
    """Whether this code runs on a parmap worker: a process that ran a batch for a caller
    (a pool process, a Ray actor, a Dask worker) or a thread running a batch right now
    (the threads backend). A nested call made there runs in place."""
    return in_worker or getattr(_thread, "running", False)


def note_caller() -> None:
    """This process makes parmap calls of its own. A batch that runs here anyway (the
    caller's own executor runs tasks on threads of this process) marks only its thread
    as a worker, never the whole process: the caller's later calls must not run in place."""
    global _caller_pid
    _caller_pid = os.getpid()


@contextlib.contextmanager
def running_here() -> Iterator[None]:
    """Mark the current thread as a worker while it runs a batch in the caller's process."""
    previous = getattr(_thread, "running", False)
    _thread.running = True
    try:
        yield
    finally:
        _thread.running = previous


@dataclass(frozen=True)
class CallSpec:
    """What a worker needs to run batches of one call; serialized once per call.

    ``fn`` and ``initializer`` are either live objects (backends that do not
    serialize) or cloudpickle blobs (the others); ``*_token`` are content
    digests, so a worker that already holds a function need not receive it
    again (see :meth:`light` and :func:`holds`).
    """

    fn_token: str
    fn: Any
    star: bool
    init_token: str | None = None
    initializer: Any = None
    item_timeout: float | None = None  # seconds one item may run (see run_items)
    keep_going: bool = False  # an item's exception is its result (return_exceptions)
    # The caller's share() prefix and its live tokens (parmap._share.live_shares): a
    # worker drops the caller's cached values that are not among them. Empty: drop none.
    live_shares: tuple[str, ...] = ()

    @property
    def inline(self) -> bool:
        """Whether the blobs are small enough to ride along with every batch
        (copying a few KiB costs less than any round trip to fetch them)."""
        size = len(self.fn or b"") + len(self.initializer or b"")
        return size <= INLINE_SPEC_BYTES

    def light(self) -> CallSpec:
        """This spec without its blobs: for a worker that :func:`holds` them."""
        return dataclasses.replace(self, fn=None, initializer=None)


@dataclass
class ErrorRecord:
    """An exception raised on a worker, made safe to send back.

    ``stage`` is where it happened: ``"item"`` (fn raised), ``"timeout"`` (an
    item ran longer than ``item_timeout``), ``"init"`` (initializer raised),
    ``"load"`` (the function or items could not be unpickled on the worker) or
    ``"result"`` (a result could not be pickled). ``position`` is the index
    within the batch, when one item is to blame.
    """

    stage: str
    position: int | None
    exc: BaseException | None
    type_name: str
    message: str
    tb: str

    @classmethod
    def capture(cls, stage: str, position: int | None, exc: BaseException) -> ErrorRecord:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        return cls(stage, position, exc, name, str(exc), tb)


@dataclass
class ItemFailed:
    """In a batch's results, an item whose function raised (``return_exceptions``)."""

    record: ErrorRecord


@dataclass
class Outcome:
    """What a batch produced: its results, or the error that stopped it.

    Attributes:
        results: every item's result; with an ``error``, None, but for a
            ``"timeout"`` error: the results of the items before the one that ran
            too long (the ones after it did not run).
        seconds: how long the batch ran on the worker.
        pid: the worker process that ran it (0: the caller's).
        error: the record of the error that stopped the batch.
        stuck: a thread of the worker still runs an item that timed out: the
            worker must be stopped and replaced.
    """

    results: list[Any] | None
    seconds: float
    pid: int = 0
    error: ErrorRecord | None = None
    stuck: bool = False


def run_local(spec: CallSpec, items: Sequence[Any]) -> Outcome:
    """Run one batch on live objects in this process (``spec.fn`` is the function itself).

    The entry point of backends that do not serialize (serial, threads).
    """
    return execute(spec, spec.fn, items)


def execute(spec: CallSpec, fn: Callable[..., Any], items: Sequence[Any]) -> Outcome:
    """Run ``fn`` over ``items`` in this process, stopping at the first error."""
    started = time.perf_counter()
    if spec.init_token is not None and spec.init_token not in _initialized:
        with _init_lock:  # a Dask worker runs batches in as many threads as it has
            if spec.init_token not in _initialized:
                init_fn, init_args = spec.initializer
                try:
                    init_fn(*init_args)
                except BaseException as exc:
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    failed = ErrorRecord.capture("init", None, exc)
                    return Outcome(None, time.perf_counter() - started, error=failed)
                _initialized.add(spec.init_token)
    if spec.item_timeout is not None:
        results, record, stuck = run_watched(fn, items, spec.star, spec.keep_going,
                                             spec.item_timeout)  # fmt: skip
    else:
        (results, record), stuck = run_items(fn, items, spec.star, spec.keep_going), False
    done = results if record is None or record.stage == "timeout" else None
    return Outcome(done, time.perf_counter() - started, error=record, stuck=stuck)


def run_items(
    fn: Callable[..., Any], items: Sequence[Any], star: bool, keep_going: bool = False
) -> tuple[list[Any], ErrorRecord | None]:
    """``fn`` over ``items``: the results, and the record of the error that stopped them.

    With ``keep_going``, an item's ``Exception`` is kept as :class:`ItemFailed` in
    its place and the batch goes on; a ``BaseException`` (``KeyboardInterrupt``,
    ``SystemExit``) still stops it, as ``asyncio.gather(return_exceptions=True)``
    does.
    """
    results: list[Any] = []
    if keep_going:
        return results, _each(fn, items, star, True, results, None)
    try:  # list.extend keeps what was appended before an exception: len() is the position
        results.extend(itertools.starmap(fn, items) if star else map(fn, items))
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the caller re-raises
        return results, ErrorRecord.capture("item", len(results), exc)  # them; workers live on
    return results, None


class _Watch:
    """Where a watched batch is: the item running and when it started."""

    __slots__ = ("done", "index", "record", "started")

    def __init__(self) -> None:
        self.index = 0
        self.started = time.monotonic()
        self.record: ErrorRecord | None = None
        self.done = threading.Event()


def _each(
    fn: Callable[..., Any],
    items: Sequence[Any],
    star: bool,
    keep_going: bool,
    results: list[Any],
    watch: _Watch | None,
) -> ErrorRecord | None:
    """The item loop of :func:`run_items` and :func:`run_watched`, one item at a time."""
    for position, item in enumerate(items):
        if watch is not None:
            watch.index, watch.started = position, time.monotonic()
        try:
            results.append(fn(*item) if star else fn(item))
        except Exception as exc:
            if not keep_going:
                return ErrorRecord.capture("item", position, exc)
            results.append(ItemFailed(ErrorRecord.capture("item", position, exc)))
        except BaseException as exc:
            return ErrorRecord.capture("item", position, exc)
    return None


def run_watched(
    fn: Callable[..., Any], items: Sequence[Any], star: bool, keep_going: bool, limit: float
) -> tuple[list[Any], ErrorRecord | None, bool]:
    """:func:`run_items` with each item held to ``limit`` seconds of its own.

    The items run on a thread of their own while this one watches the clock::

        item thread                       this thread
        for each item: note (index, now)  every limit/10 s (at most 50 ms):
          run it                            the item running for longer than limit?
        done                                  return the results before it, a
                                              "timeout" record at its index, stuck

    A Python thread cannot be stopped: the one left running the item makes the
    worker ``stuck`` (the caller stops and replaces it), and the items after the
    one that timed out did not run (the caller runs them elsewhere). The cost
    per item is two attribute writes and a clock read; per batch, one thread.

    Returns:
        ``(results, record, stuck)``.
    """
    results: list[Any] = []
    watch = _Watch()

    def work() -> None:
        try:
            watch.record = _each(fn, items, star, keep_going, results, watch)
        finally:
            watch.done.set()

    # The items see this thread's context variables (an engine's, e.g. Dask's worker).
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(work,), name="parmap-item", daemon=True).start()
    poll = min(0.05, limit / 10)
    while not watch.done.wait(poll):
        index, started = watch.index, watch.started
        if time.monotonic() - started > limit:
            message = f"ran longer than item_timeout={limit:g}s"
            record = ErrorRecord("timeout", index, None, "parmap.ItemTimeoutError", message, "")
            return results[:index], record, True
    return results, watch.record, False


def run_batch(spec: CallSpec, items_blob: bytes) -> bytes:
    """Run one batch in a worker process: the entry point of every serializing backend.

    Args:
        spec: the call's spec, its function as a blob (or left out, see :func:`holds`).
        items_blob: the batch's items, pickled by the caller.

    Returns:
        The pickled :class:`Outcome`: the results, or the record of the error that
        stopped the batch (the user's exception, an initializer's, or a failure to
        unpickle the function or items or to pickle a result). Never raises but
        for ``KeyboardInterrupt``.
    """
    global in_worker
    if os.getpid() != _caller_pid:
        in_worker = True
    elif not getattr(_thread, "running", False):  # a caller's own executor runs it
        with running_here():
            return run_batch(spec, items_blob)
    if spec.live_shares:
        drop_released(spec.live_shares)
    try:
        if spec.init_token is not None and spec.init_token not in _initialized:
            spec = _with_initializer(spec)
        fn = _function(spec)
        items = loads(items_blob)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        outcome = Outcome(None, 0.0, error=ErrorRecord.capture("load", None, exc))
    else:
        outcome = execute(spec, fn, items)
    outcome.pid = os.getpid()
    return _dump(outcome)


def drop_released(live: tuple[str, ...]) -> None:
    """Forget the cached ``share()`` values of a caller that are not in its live list.

    Args:
        live: the caller's token prefix, then the tokens of its live handles.
    """
    owner, keep = live[0], frozenset(live[1:])
    for token in list(shared_values):  # list(): one step, other batch threads may add
        if token.startswith(owner) and token not in keep:
            shared_values.pop(token, None)
    for fn_token, tokens in list(_shares_of.items()):
        if any(t.startswith(owner) and t not in keep for t in tokens):
            _functions.pop(fn_token, None)
            _shares_of.pop(fn_token, None)


def note_share(token: str) -> None:
    """A ``share()`` handle was unpickled here (called by the handle)."""
    found = getattr(_thread, "shares", None)
    if found is not None:
        found.add(token)


def holds(spec: CallSpec) -> bool:
    """Whether this process can run ``spec`` without the blobs it may leave out: the
    function is cached here and the initializer (if any) has run here."""
    if spec.fn is None and spec.fn_token not in _functions:
        return False
    return (
        spec.init_token is None or spec.initializer is not None or spec.init_token in _initialized
    )


def _with_initializer(spec: CallSpec) -> CallSpec:
    initializer = loads_function(spec.initializer)
    return CallSpec(spec.fn_token, spec.fn, spec.star, spec.init_token, initializer)


def _function(spec: CallSpec) -> Callable[..., Any]:
    fn = _functions.get(spec.fn_token)
    if fn is None:
        shares: set[str] = set()
        _thread.shares = shares
        try:
            fn = loads_function(spec.fn)
        finally:
            _thread.shares = None
        _functions[spec.fn_token] = fn
        if shares:
            _shares_of[spec.fn_token] = frozenset(shares)
        if len(_functions) > _FUNCTION_CACHE_SIZE:
            evicted, _ = _functions.popitem(last=False)
            _shares_of.pop(evicted, None)
    else:
        _functions.move_to_end(spec.fn_token)
    return fn


def _dump(outcome: Outcome) -> bytes:
    try:
        return dumps(outcome)
    except Exception as exc:
        return dumps(_unpicklable(outcome, exc))


def _unpicklable(outcome: Outcome, exc: Exception) -> Outcome:
    """Replace what would not pickle by error records that will (their text stays)."""
    note = f"\n(the exception could not be pickled to send it back: {exc!r})"
    if outcome.error is not None and outcome.error.exc is not None:
        outcome.error.exc = None  # the user's exception itself won't pickle
        outcome.error.tb += note
    for position, result in enumerate(outcome.results or ()):
        try:
            dumps(result)
        except Exception as bad:
            if isinstance(result, ItemFailed):  # an item's exception, kept as its result
                result.record.exc = None
                result.record.tb += note
                continue
            record = ErrorRecord.capture("result", position, bad)
            record.exc = None
            return Outcome(None, outcome.seconds, outcome.pid, record, outcome.stuck)
    try:
        dumps(outcome)
    except Exception as still:
        record = ErrorRecord.capture("result", None, still)
        record.exc = None
        return Outcome(None, outcome.seconds, outcome.pid, record, outcome.stuck)
    return outcome


def prepare_pool_worker(parent_pid: int) -> None:
    """Initializer of pooled worker processes (multiprocessing, loky).

    The caller handles Ctrl-C and stops the workers itself, so workers ignore
    SIGINT; and a worker whose caller died (even by SIGKILL, which runs no
    cleanup) exits within a second instead of lingering as an orphan.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    # The caller may be our parent (fork, spawn, loky) or our grandparent (the
    # forkserver's children), so watch its pid rather than our own ppid.
    while True:
        time.sleep(0.5)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # pid reused by another user's process: ours is gone
            os._exit(1)
