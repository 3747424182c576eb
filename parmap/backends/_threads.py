"""The threads backend: a pool of threads in the caller's process, on live objects.

Nothing is pickled: a batch is the list of items and the function itself, run
by :func:`parmap.backends.run_local` on one of the pool's threads. That pays
for functions that release the GIL (hashlib, zlib, numpy on large arrays, I/O,
a simulator behind ``subprocess``) and, on a free-threaded interpreter, for
pure Python too. Under a GIL, pure-Python work runs one thread at a time:
``backend="auto"`` measures which kind a function is before it chooses this
backend (the class fact :attr:`ThreadsBackend.shares_gil`).

::

    caller's thread                      pool thread (daemon, one of `workers`)
    ───────────────                      ──────────────────────────────────────
    submit(spec, items) ─► queue ──────► run_local(spec, items), marked as a
                                           worker (parmap.backends.on_worker()),
                                           checking the batch's stop flag
                                           before each item
    cancel(stop_running)   sets the flag: the item a thread is on finishes
                           (a thread cannot be killed), no further one starts

A nested ``parmap`` call made by ``fn`` on a pool thread runs in place, even
with ``backend="threads"`` given: its batches would otherwise wait for this
pool's threads, all busy with the outer call's items.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from types import MappingProxyType
from typing import Any, cast

from parmap._errors import WorkerCrashedError
from parmap._local import bind_thread, release_thread
from parmap._worker import CallSpec, Outcome, run_local, running_here
from parmap.backends._base import Backend

__all__ = ["StopFlag", "ThreadPool", "ThreadsBackend", "on_pool_thread", "run_here"]

log = logging.getLogger("parmap")

THREADS_CANNOT_STOP = "running Python threads cannot be stopped"
_here = threading.local()  # .batches: how many it runs now; .bound: has its per_worker table


class StopFlag:
    """Set when a batch must not start another item (timeout, Ctrl-C, an error)."""

    __slots__ = ("set",)

    def __init__(self) -> None:
        self.set = False


def on_pool_thread() -> bool:
    """Whether this thread runs a batch for a caller in this process right now."""
    return bool(getattr(_here, "batches", 0))


def run_here(spec: CallSpec, items: Sequence[Any], stop: StopFlag | None = None) -> Outcome:
    """Run one batch on this thread, as a worker: what a thread of a pool executes.

    ``on_worker()`` is true on this thread while it runs, so a nested call made
    by ``fn`` runs in place; with ``stop``, no item starts once the flag is set.

    Raises:
        concurrent.futures.CancelledError: the batch was stopped part-way.
    """
    _bind_worker_state()  # a pool thread of ours did at its start; an executor's, here
    _here.batches = getattr(_here, "batches", 0) + 1
    try:
        with running_here():
            # run_local only iterates over the items: a generator that stops is fine
            outcome = run_local(spec, items if stop is None else cast(Any, _until(stop, items)))
    finally:
        _here.batches -= 1
    done = outcome.results
    if stop is not None and stop.set and done is not None and len(done) < len(items):
        raise cf.CancelledError("the batch was stopped before its last item")
    return outcome


def _until(stop: StopFlag, items: Sequence[Any]) -> Iterator[Any]:
    for item in items:
        if stop.set:
            return
        yield item


def done_here(spec: CallSpec, items: Sequence[Any]) -> cf.Future[Any]:
    """A batch run now, on this thread: a nested call on a pool thread (see the module doc)."""
    future: cf.Future[Any] = cf.Future()
    future.set_result(run_here(spec, items))
    return future


def _bind_worker_state() -> None:
    """Give this thread a ``parmap.per_worker`` table of its own, once: on this backend a
    worker is a thread, and the objects built per worker are rarely thread-safe."""
    if not getattr(_here, "bound", False):
        bind_thread()
        _here.bound = True


class ThreadPool:
    """``workers`` daemon threads taking ``(future, fn, args)`` from one queue.

    Not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined when
    the interpreter exits, so a program stopped by Ctrl-C would wait there for
    the items its threads were on. These are daemon threads, and a pool whose
    work was stopped is left to finish its items by itself (:meth:`retire`).
    """

    _ids = itertools.count(1)

    def __init__(self, workers: int) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.pid = os.getpid()  # a forked child inherits the object, not the threads
        pool = next(self._ids)
        self.threads = [
            threading.Thread(target=self._work, name=f"parmap-pool{pool}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        self._queue.put((future, fn, args))
        return future

    def _work(self) -> None:
        _bind_worker_state()
        try:
            self._loop()
        finally:
            release_thread()

    def _loop(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
            del task, future, fn, args  # hold nothing of a finished batch while idle

    def retire(self) -> None:
        """Let each thread end once it is done with what it holds; do not wait."""
        for _ in self.threads:
            self._queue.put(None)

    def drop_queued(self) -> None:
        """Cancel the batches no thread has taken yet."""
        while True:
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                return
            if task is not None:
                task[0].cancel()

    def join(self) -> None:
        """Wait for the threads to end (after :meth:`retire`)."""
        for thread in self.threads:
            thread.join()


class ThreadsBackend(Backend):
    """Batches on a pool of threads of the caller's process (started on first use)."""

    name = "threads"
    serializes = False
    shares_gil = True
    stops_running = False  # a running item finishes: a thread cannot be killed
    batch_overhead: float = 5e-5
    startup_seconds = 1e-3
    # Measured warm on 2 cores (fixed: submit and wake a thread; per_batch: a round trip
    # through the queue), rounded up. work_factor is for work that runs in parallel
    # here: auto measures per function how much of it does (see parmap._auto).
    default_model = MappingProxyType(
        {"fixed": 1.5e-4, "per_item": 1e-7, "per_batch": 5e-5, "work_factor": 1.05}
    )

    def __init__(self, workers: int | None = None, **options: Any) -> None:
        super().__init__(workers, **options)
        self._pool: ThreadPool | None = None
        self._lock = threading.Lock()

    def _running_pool(self) -> ThreadPool:
        with self._lock:
            if self._pool is None or self._pool.pid != os.getpid():
                self._pool = ThreadPool(self.workers)
            return self._pool

    def submit(self, prepared: CallSpec, items: Sequence[Any]) -> cf.Future[Any]:
        if on_pool_thread():  # a nested call: this pool's threads may all be waiting on it
            return done_here(prepared, items)
        stop = StopFlag()
        future = self._running_pool().submit(run_here, prepared, items, stop)
        future._parmap_stop = stop  # type: ignore[attr-defined]
        return future

    def cancel(self, futures: Collection[cf.Future[Any]], *, stop_running: bool) -> None:
        running = stop_batches(futures)
        if running and stop_running:
            with self._lock:  # the next call gets fresh threads; these end after their item
                pool, self._pool = self._pool, None
            if pool is not None:
                pool.retire()
            notice_running(running, f"the {self.name} backend")

    def translate(self, exc: BaseException, future: cf.Future[Any] | None) -> BaseException:
        if isinstance(exc, cf.CancelledError):  # only parmap.shutdown() cancels a batch read
            return WorkerCrashedError(f"the {self.name} backend was shut down during the call")
        return exc

    def describe(self) -> dict[str, Any]:
        return {"workers": self.workers, "started": self._pool is not None}

    def shutdown(self) -> None:
        """Stop the threads: batches not started are cancelled, running ones finish."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and pool.pid == os.getpid():
            pool.drop_queued()
            pool.retire()
            pool.join()


def stop_batches(futures: Collection[cf.Future[Any]]) -> int:
    """Cancel the batches not started; stop the running ones after their current item.

    Returns:
        How many were running.
    """
    running = 0
    for future in futures:
        if future.cancel() or future.done():
            continue
        stop = getattr(future, "_parmap_stop", None)
        if stop is not None:
            stop.set = True
        running += 1
    return running


def notice_running(running: int, where: str, what: str = "") -> None:
    """Say that stopped work goes on in the background (a timeout, Ctrl-C)."""
    what = what or (
        f"finish the item each is on ({THREADS_CANNOT_STOP}), and no further item starts"
    )
    log.warning("parmap: stopped waiting; %d batch(es) running on %s %s", running, where, what)
