"""What ``futures`` and ``shared`` run on: settings, the shipped task, the submit façade.

Every SCOOP call becomes a parmap call, so the core keeps all the policy
(backend choice, batching, serialization, error types, crashes, timeouts,
nested calls in place on a worker)::

    futures.map(fn, xs)            parmap.imap(MapTask(fn, constants), xs)   batched by the core
    futures.submit(fn, *a, **k)    Future ◄── a thread of Submitter runs
                                   parmap.parmap(CallTask(fn, constants), [(a, k)])
                                   (at once, in the caller's thread, on a worker
                                   or when the backend is serial: nothing to wait for)

A task carries the ``shared.setConst`` constants as ``parmap.share()`` handles:
each backend receives a constant once, and a worker installs the handles
before running ``fn`` so ``shared.getConst`` finds them there.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import contextvars
import functools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import parmap
from parmap import _registry
from parmap._driver import on_first_batch
from parmap._share import Shared
from parmap.backends import default_workers, on_worker

__all__ = [
    "CallTask",
    "Future",
    "MapTask",
    "Settings",
    "Submitter",
    "call_config",
    "configure",
    "constants",
    "define",
    "is_origin",
    "lookup",
    "receive",
    "settings",
    "size",
    "submitter",
    "worker_name",
]


@dataclass
class Settings:
    """What the launcher (or :func:`parmap.scoop.configure`) chose; None: parmap's default."""

    backend: str | None = None
    workers: int | None = None
    address: str | None = None
    main_module: str | None = None


settings = Settings()
log = logging.getLogger("parmap.scoop")


def configure(
    backend: str | None = None, workers: int | None = None, address: str | None = None
) -> None:
    """Set the backend, worker count and cluster address of later SCOOP calls.

    Args:
        backend: a parmap backend name; None: ``parmap.config()``, then
            ``$PARMAP_BACKEND``, then parmap's default.
        workers: the worker count (SCOOP's ``-n``); None: the backend's default.
        address: a Ray cluster or Dask scheduler address.

    Raises:
        UnknownBackendError: ``backend`` is not a parmap backend.
        ValueError: ``workers`` is not a positive integer.
    """
    if backend is not None:
        _registry.check_name(backend, source="argument")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    settings.backend, settings.workers, settings.address = backend, workers, address


@contextlib.contextmanager
def call_config() -> Iterator[None]:
    """Apply the settings as a ``parmap.config()`` block.

    A config block, not ``backend=`` arguments: the core then still runs a
    nested call in place when it happens on a worker.
    """
    chosen = {f.name: getattr(settings, f.name) for f in fields(settings)}
    chosen.pop("main_module")
    with parmap.config(**{k: v for k, v in chosen.items() if v is not None}):
        yield


def is_origin() -> bool:
    """True in the program's own process, False on a worker."""
    return not on_worker()


def worker_name() -> bytes:
    """This process's name in SCOOP's ``b"host:port"`` style (here ``host:pid``)."""
    return f"{socket.gethostname()}:{os.getpid()}".encode()


def size() -> int:
    """How many workers calls use (SCOOP's ``scoop.SIZE``).

    With no worker count given, the backend is started (a no-op call, through
    the core) to ask it: a Ray or Dask cluster has the workers it has.
    """
    if on_worker():
        return settings.workers or 1
    with call_config():
        choice = parmap.get_backend()
        if choice.name == "serial":
            return 1
        if choice.workers:
            return choice.workers
        live = [b for b in _registry.live_backends() if b.name == choice.name]
        if not live:
            parmap.parmap(int, [0])
            live = [b for b in _registry.live_backends() if b.name == choice.name]
    return live[0].workers if live else default_workers()


# -- shared constants ---------------------------------------------------------

_constants: dict[str, Shared[Any]] = {}
_constants_changed = threading.Condition()
_last_received: dict[str, Shared[Any]] | None = None


def constants() -> dict[str, Shared[Any]]:
    """A snapshot of the constants defined so far, to ship with a task."""
    with _constants_changed:
        return dict(_constants)


def receive(handles: dict[str, Shared[Any]]) -> None:
    """Make a task's constants known in this process (a worker receiving a task).

    Cheap per item: a worker keeps one unpickled task per call, so the same
    ``handles`` dict comes back for every item of the call.
    """
    global _last_received
    if handles is _last_received:
        return
    with _constants_changed:
        for name, handle in handles.items():
            known = _constants.get(name)
            if known is None or known._token != handle._token:
                _constants[name] = handle
        _constants_changed.notify_all()
    _last_received = handles


def define(values: dict[str, Any]) -> None:
    """``shared.setConst``: define constants once, in the program."""
    if not is_origin():
        raise RuntimeError(
            f"shared.setConst({', '.join(values)}) was called on a worker; with parmap, "
            "constants travel from the main program to the workers with each call. "
            "Call setConst in the main program before submitting the work that reads them"
        )
    with _constants_changed:
        for key in values:
            if key in _constants:
                raise TypeError(f"This constant already exists: {key}.")
        for key, value in values.items():
            _constants[key] = Shared(value)
        _constants_changed.notify_all()


def lookup(name: str, timeout: float) -> Any:
    """``shared.getConst``: the value, waiting up to ``timeout`` in the program only."""
    deadline = time.monotonic() + (timeout if timeout and timeout > 0 else 0.0)
    with _constants_changed:
        while name not in _constants:
            left = deadline - time.monotonic()
            if not is_origin() or left <= 0:
                return None
            _constants_changed.wait(None if math.isinf(left) else left)
        handle = _constants[name]
    return handle.value


# -- tasks: what travels to the workers -----------------------------------------


class _Task:
    """The user's function plus the constants it may read, named like the function."""

    def __init__(self, fn: Callable[..., Any], handles: dict[str, Shared[Any]]) -> None:
        if not callable(fn):
            raise TypeError(f"SCOOP futures need a callable, got {fn!r}")
        self.fn = fn
        self.constants = handles
        # parmap's error notes and cost memory name a call by these.
        self.__module__ = getattr(fn, "__module__", None) or type(fn).__module__
        self.__qualname__ = getattr(fn, "__qualname__", None) or type(fn).__qualname__


class MapTask(_Task):
    """``fn(*args, **kwargs)`` for one item of ``futures.map``: the same ``kwargs`` for each.

    The map runs with ``return_exceptions``, so that, as in SCOOP, where each item
    is a future of its own, the results before a failed item are still yielded
    and its exception is raised when the iteration reaches it. A result that
    *is* an exception object travels wrapped (:class:`Returned`), so it is not
    mistaken for a failure.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        handles: dict[str, Shared[Any]],
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(fn, handles)
        self.kwargs = kwargs or {}

    def __call__(self, *args: Any) -> Any:
        if self.constants:
            receive(self.constants)
        result = self.fn(*args, **self.kwargs)
        return Returned(result) if isinstance(result, BaseException) else result


@dataclass
class Returned:
    """An exception object that ``fn`` returned (not raised), on its way to the caller."""

    value: BaseException


class CallTask(_Task):
    """``fn(*args, **kwargs)`` for one ``futures.submit``; the item is ``(args, kwargs)``."""

    def __call__(self, call: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
        if self.constants:
            receive(self.constants)
        args, kwargs = call
        return self.fn(*args, **kwargs)


# -- submit: one parmap call per future ----------------------------------------


class Future(cf.Future[Any]):
    """A SCOOP future: a ``concurrent.futures.Future`` (``result``, ``exception``,
    ``done``, ``cancel``, ``cancelled``, ``running``, ``add_done_callback``).

    As in SCOOP, done callbacks have all run by the time anyone else sees the
    future done (``result``, ``wait``, ``as_completed``), so a program that
    collects results in callbacks finds them all after ``wait``. (In
    ``concurrent.futures`` they run after the waiters are released.)
    """

    def __init__(self) -> None:
        super().__init__()
        self._finishing: int | None = None  # the thread running the callbacks
        self._outcome: tuple[Any, BaseException | None] = (None, None)

    def add_done_callback(
        self,
        fn: Callable[[cf.Future[Any]], object],
        inCallbackType: Any = None,  # SCOOP's argument names
        inCallbackGroup: Any = None,
    ) -> None:
        """Call ``fn(future)`` when the future is done (at once if it is).

        Args:
            fn: the callback; its exceptions are logged and ignored.
            inCallbackType: accepted for SCOOP compatibility; ignored.
            inCallbackGroup: accepted for SCOOP compatibility; ignored.
        """
        if self._in_callback():  # added by a callback: the future is done for it
            self._call(fn)
            return
        super().add_done_callback(fn)

    def finish(self, result: Any, exc: BaseException | None) -> None:
        """Run the callbacks, then make the outcome visible to every thread."""
        with self._condition:
            self._finishing, self._outcome = threading.get_ident(), (result, exc)
        while True:
            with self._condition:  # cf.Future's own list, which set_result() would run
                callbacks: list[Callable[[Future], object]] = self._done_callbacks
                self._done_callbacks: list[Callable[[Future], object]] = []
            if not callbacks:
                break
            for callback in callbacks:
                self._call(callback)
        self._finishing = None
        if exc is None:
            self.set_result(result)
        else:
            self.set_exception(exc)

    def _call(self, callback: Callable[[Future], object]) -> None:
        try:
            callback(self)
        except Exception:  # as concurrent.futures does (SCOOP ignores them silently)
            log.exception("parmap.scoop: exception calling callback for %r", self)

    def _in_callback(self) -> bool:
        return self._finishing == threading.get_ident()

    def result(self, timeout: float | None = None) -> Any:
        if self._in_callback():
            if self._outcome[1] is not None:
                raise self._outcome[1]
            return self._outcome[0]
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._in_callback():
            return self._outcome[1]
        return super().exception(timeout)

    def done(self) -> bool:
        return self._in_callback() or super().done()

    def running(self) -> bool:
        return not self._in_callback() and super().running()


def _call_one(task: CallTask, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    with call_config():
        return parmap.parmap(task, [(args, kwargs)], chunksize=1)[0]


def _run(future: Future, job: Callable[[], Any], sent: Callable[[], None] = lambda: None) -> None:
    """Run ``job`` for ``future``; ``sent()`` once it has ended, before the callbacks run
    (a callback may submit again, and wait for it)."""
    if not future.set_running_or_notify_cancel():  # cancelled: its waiters are told
        return
    try:
        outcome: tuple[Any, BaseException | None] = (job(), None)
    except BaseException as exc:  # the future carries it, like concurrent.futures does
        outcome = (None, exc)
    sent()
    future.finish(*outcome)


class _Turns:
    """Hands submitted calls to the backend in the order they were submitted.

    Each call waits on its own thread; without turns, whichever thread is
    scheduled first would reach the workers first. SCOOP runs submitted work
    first come, first served, and programs see it (callbacks fire in that order
    when the work takes as long), so a call waits until the one before it has
    its batch on the backend (or has ended).
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._issued = 0
        self._serving = 0  # the ticket whose call goes next
        self._ended: set[int] = set()  # tickets done out of turn (none, unless interrupted)

    def take(self) -> int:
        with self._changed:
            self._issued += 1
            return self._issued - 1

    def wait(self, ticket: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._serving >= ticket)

    def done(self, ticket: int) -> None:
        """The call of ``ticket`` has its batch out or has ended (a second time: nothing)."""
        with self._changed:
            if ticket < self._serving:
                return
            self._ended.add(ticket)
            while self._serving in self._ended:
                self._ended.discard(self._serving)
                self._serving += 1
            self._changed.notify_all()


def _in_turn(turns: _Turns, ticket: int, future: Future, job: Callable[[], Any]) -> None:
    sent = functools.partial(turns.done, ticket)  # once the batch is out, or the call ended
    try:
        turns.wait(ticket)
        token = on_first_batch.set(sent)
        try:
            _run(future, job, sent)
        finally:
            on_first_batch.reset(token)
    finally:
        sent()  # whatever happened, the next call's turn comes


class Submitter:
    """Runs submitted calls, each as a one-item parmap call on a thread.

    The threads only wait: the work runs on the backend's workers. At most
    ``max(4, 2 * size())`` calls are in flight; the rest queue here, where
    ``cancel()`` can still remove them. Calls reach the backend in the order
    they were submitted.
    """

    def __init__(self) -> None:
        self._pool: cf.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._turns = _Turns()

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future:
        """Start ``fn(*args, **kwargs)``; return its future."""
        task = CallTask(fn, constants())
        future = Future()
        job = functools.partial(_call_one, task, args, kwargs)
        if self._inline():
            contextvars.copy_context().run(_run, future, job)
            return future
        with self._lock:  # tickets are taken in the order jobs enter the pool's queue
            pool = self._threads()
            ticket = self._turns.take()
            run = functools.partial(_in_turn, self._turns, ticket, future, job)
            try:
                pool.submit(contextvars.copy_context().run, run)
            except BaseException:  # at interpreter exit: the ticket must not block the next
                self._turns.done(ticket)
                raise
        return future

    def _inline(self) -> bool:
        if on_worker():
            return True
        with call_config():
            return parmap.get_backend().name == "serial"

    def _threads(self) -> cf.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(
                max(4, 2 * size()), thread_name_prefix="parmap-scoop"
            )
        return self._pool

    def shutdown(self, wait: bool) -> None:
        """Stop accepting work here; with ``wait``, return once submitted calls are done."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)


submitter = Submitter()
