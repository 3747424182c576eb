"""Sending batches to named workers: each holds the batch it runs and the next one.

For backends whose engine lets the caller choose the worker of each batch
(Ray actors, the embedded Dask cluster's workers), with no queue of its own
that idle workers pull from. The core's driver keeps a window of batches in
flight; this class places them::

    submit(payload)     queue the batch; the worker with the most room takes it
                        (room: depth x its threads - the batches it holds)
    (a batch ends)      finished(job, ...): its worker takes the next queued batch;
                        a worker that was not ready sends it back, first in line
    (end of a call)     nothing queued and a worker idle while another holds a
                        batch waiting behind its running one: ask for that one
                        back (drop()), so the idle worker runs it
    cancel(futures)     drop queued batches, tell workers to drop the waiting
                        ones; with stop_running, return the workers running the
                        others, for the backend to stop

Why two batches per worker: a worker that gets its next batch only once its
last one has ended idles for a round trip (callback, dispatch, send) between
batches; with the next one already waiting on the worker it does not. The
price is at the end of a call, where a batch waits behind a slow one: the
take-back above pays it back where the engine can drop a waiting batch, and
the batching policy's rounds of equal batches keep it small elsewhere.

The engine's side is three methods: :meth:`capacity` (the live workers and
their threads), :meth:`start` (send one batch without blocking, and call
:meth:`finished` when it ends, from any thread) and, if the engine can,
:meth:`drop` (tell a worker to drop batches that wait there).
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import contextlib
import threading
import time
from collections import deque
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from parmap._errors import WorkerCrashedError

__all__ = ["Dispatcher", "Job"]

DEPTH = 2  # batches one worker thread holds: the running one and the next


@dataclass(eq=False)
class Job:
    """One batch on its way to a worker.

    Attributes:
        future: what the core waits on.
        payload: what the backend sends (opaque to the dispatcher).
        worker: the worker it was sent to, or None while queued.
        handle: the engine's own handle for the sent batch (e.g. the actor it went to).
        tries: workers that could not take it yet (see ``finished(..., retry=...)``).
    """

    future: cf.Future[Any]
    payload: Any
    worker: Hashable | None = None
    handle: Any = None
    tries: int = 0
    started: bool = False  # its future is running (a re-queued job keeps it so)
    dropped: bool = False  # cancelled: never send it (again)
    taking: bool = False  # asked back from its worker for an idle one


class Dispatcher(abc.ABC):
    """Places batches on named workers, ``depth`` per worker thread (see the module doc).

    Thread-safe: ``submit`` and ``cancel`` run in the caller's thread,
    ``finished`` in whichever thread the engine reports on. ``start`` and
    ``drop`` are called with the dispatcher's lock held and must not block.
    """

    depth = DEPTH

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._queue: deque[Job] = deque()
        self._sent: dict[Hashable, list[Job]] = {}  # worker -> its batches, running ones first
        self._resting: dict[Hashable, float] = {}  # worker -> when to send it work again

    # -- the engine's side -----------------------------------------------------------

    @abc.abstractmethod
    def capacity(self) -> Mapping[Hashable, int]:
        """The live workers and how many batches each runs at once (its threads).

        May start workers. An exception fails the queued batches with it.
        """

    @abc.abstractmethod
    def start(self, worker: Hashable, job: Job) -> None:
        """Send ``job`` to ``worker`` without blocking; when it ends, call :meth:`finished`."""

    def drop(self, worker: Hashable, jobs: list[Job]) -> None:  # noqa: B027 - optional
        """Tell ``worker`` to drop these batches if they have not started (optional).

        A dropped batch must still end with ``finished(job, retry=0)`` (then it
        is sent again, unless cancelled) or with its result if it had started.
        Engines that cannot take back a batch leave this as is: the batch runs
        and, if cancelled, its result is dropped.
        """

    def worker_lost(self, worker: Hashable, job: Job) -> None:
        """A batch failed because its worker died: by default, send that worker nothing
        more, and forget the workers that left the engine."""
        self._resting[worker] = float("inf")
        with contextlib.suppress(Exception):
            alive = self._threads()
            for gone in [w for w in self._resting if w not in alive and not self._sent.get(w)]:
                self._resting.pop(gone, None)
                self._sent.pop(gone, None)

    def no_worker(self) -> None:  # noqa: B027 - optional
        """Batches wait and no worker has room or is alive: look again later (optional)."""

    # -- the backend's side ----------------------------------------------------------

    def submit(self, payload: Any) -> cf.Future[Any]:
        """Queue one batch; return the future its result will be set on."""
        job = Job(cf.Future(), payload)
        job.future._parmap_job = job  # type: ignore[attr-defined]
        with self.lock:
            self._queue.append(job)
            self.dispatch()
        return job.future

    def finished(
        self,
        job: Job,
        result: Any = None,
        error: BaseException | None = None,
        *,
        lost: bool = False,
        retry: float | None = None,
    ) -> None:
        """Record that ``job`` ended on its worker (any thread).

        Args:
            job: the batch.
            result: what its future gets.
            error: what its future raises instead.
            lost: the worker died with it (see :meth:`worker_lost`).
            retry: the worker did not run it (not ready, or it was taken back):
                queue it again, first in line, and send that worker nothing for
                this many seconds.
        """
        worker = job.worker
        with self.lock:
            held = self._sent.get(worker, [])
            if job in held:
                held.remove(job)
                if retry is not None:
                    self._again(job, worker, retry)
                    return
                if lost and worker is not None:
                    self.worker_lost(worker, job)
                self.dispatch()
                if worker is not None:
                    self._take_back_for(worker)
            elif retry is not None:  # failed or forgotten already (fail_all, clear): the
                return  # news comes too late to place anything; only the future may hear
        with contextlib.suppress(cf.InvalidStateError):  # cancelled meanwhile
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)

    def cancel(
        self, futures: Collection[cf.Future[Any]], *, stop_running: bool
    ) -> dict[Hashable, list[Job]]:
        """Drop queued batches and ask workers to drop waiting ones.

        Returns:
            With ``stop_running``, the workers running one of these batches, and
            those batches: the backend stops them (e.g. kills the process, then
            :meth:`rest` the worker for good if it will not come back).
        """
        running: dict[Hashable, list[Job]] = {}
        waiting: dict[Hashable, list[Job]] = {}
        with self.lock:
            try:
                threads = self._threads()
            except Exception:  # the engine is gone: count one running batch per worker
                threads = {}
            for future in futures:
                job: Job | None = getattr(future, "_parmap_job", None)
                future.cancel()
                if job is None:
                    continue
                job.dropped = True
                if job.worker is None:
                    continue
                held = self._sent.get(job.worker, [])
                is_running = job in held[: threads.get(job.worker, 1)]
                kind = running if stop_running and is_running else waiting
                kind.setdefault(job.worker, []).append(job)
            self._queue = deque(job for job in self._queue if not job.dropped)
            for worker, jobs in waiting.items():
                self.drop(worker, jobs)
        return running

    def fail_queued(self, error: BaseException) -> None:
        """Fail every queued batch with ``error`` (the engine is gone)."""
        with self.lock:
            queued, self._queue = self._queue, deque()
        for job in queued:
            if not job.dropped and (job.started or job.future.set_running_or_notify_cancel()):
                with contextlib.suppress(cf.InvalidStateError):
                    job.future.set_exception(error)

    def fail_all(self, error: BaseException) -> None:
        """Fail every batch, queued or sent, with ``error`` (the engine died under them)."""
        with self.lock:
            jobs = [*self._queue, *(job for held in self._sent.values() for job in held)]
            self._queue.clear()
            self._sent.clear()
        for job in jobs:
            if not job.dropped and (job.started or job.future.set_running_or_notify_cancel()):
                with contextlib.suppress(cf.InvalidStateError):
                    job.future.set_exception(error)

    def held(self, worker: Hashable) -> list[Job]:
        """The batches sent to ``worker`` and not ended, running ones first."""
        with self.lock:
            return list(self._sent.get(worker, ()))

    def rest(self, worker: Hashable, seconds: float) -> None:
        """Send ``worker`` nothing for ``seconds`` (``inf``: until :meth:`forget`)."""
        with self.lock:
            self._resting[worker] = time.monotonic() + seconds

    def forget(self, worker: Hashable) -> None:
        """Drop what is kept about a worker that left."""
        with self.lock:
            self._resting.pop(worker, None)
            if not self._sent.get(worker):
                self._sent.pop(worker, None)

    def clear(self) -> None:
        """Forget every worker, cancel the queue and fail the batches sent (the engine
        restarted or stopped: their news, if any comes, is too late to place anything)."""
        with self.lock:
            for job in self._queue:
                job.future.cancel()
            sent = [job for held in self._sent.values() for job in held]
            self._queue.clear()
            self._sent.clear()
            self._resting.clear()
        lost = WorkerCrashedError("the engine running the batch was stopped or restarted")
        for job in sent:
            with contextlib.suppress(cf.InvalidStateError):
                job.future.set_exception(lost)

    def busy(self) -> bool:
        """Whether any batch is queued or on a worker."""
        with self.lock:
            return bool(self._queue) or any(self._sent.values())

    # -- placing ---------------------------------------------------------------------

    def dispatch(self) -> None:
        """Send queued batches to workers with room (with the lock held); never raises."""
        if not self._queue:
            return
        try:
            threads = self._threads()
        except Exception as exc:  # the engine is gone: no queued batch can run
            self.fail_queued(exc)
            return
        now = time.monotonic()
        room = {
            worker: count * self.depth - len(self._sent.get(worker, ()))
            for worker, count in threads.items()
            if self._resting.get(worker, 0.0) <= now
        }
        while self._queue:
            worker = max(room, key=room.__getitem__, default=None)
            if worker is None or room[worker] <= 0:
                if not room:
                    self.no_worker()
                return
            job = self._queue.popleft()
            if job.dropped or not (job.started or job.future.set_running_or_notify_cancel()):
                continue
            job.started, job.worker, job.taking = True, worker, False
            room[worker] -= 1
            self._sent.setdefault(worker, []).append(job)
            try:
                self.start(worker, job)
            except Exception as exc:
                self._sent[worker].remove(job)
                job.future.set_exception(exc)

    def _threads(self) -> Mapping[Hashable, int]:
        return self.capacity()

    def _again(self, job: Job, worker: Hashable | None, seconds: float) -> None:
        """Queue a batch again, first in line (with the lock held)."""
        if worker is not None and seconds > 0:
            self._resting[worker] = time.monotonic() + seconds
        job.tries += 1
        job.worker, job.taking = None, False
        if not job.dropped:
            self._queue.appendleft(job)
        self.dispatch()

    def _take_back_for(self, idle: Hashable) -> None:
        """At the end of a call, when ``idle`` ran out of work while another worker
        holds a batch waiting behind its running one, ask for that batch back (with
        the lock held). If it has not started, it comes back (``retry``) and goes to
        the idle worker; if it has, nothing changes."""
        if self._queue or self._sent.get(idle) or self._resting.get(idle, 0.0) > time.monotonic():
            return
        try:
            threads = self._threads()
        except Exception:  # the engine is gone: nothing to take back
            return
        if idle not in threads:
            return
        for worker, jobs in self._sent.items():
            waiting = [job for job in jobs[threads.get(worker, 1) :] if not job.dropped]
            if waiting and not any(job.taking for job in waiting):
                waiting[-1].taking = True
                self.drop(worker, [waiting[-1]])
                return
