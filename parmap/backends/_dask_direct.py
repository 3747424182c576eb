"""The embedded Dask cluster's fast path: batches go straight to a worker.

A task on the embedded cluster costs the caller's process 7-10 ms of CPU per
round trip on this 2-core machine: the client and the scheduler both live
there, and a task takes five messages through them (update-graph,
compute-task, task-finished, key-in-memory, then the gather from the
worker). A DEAP generation pays that at its start and end while its workers
idle. parmap owns the embedded cluster, so it sends each batch as one
request to a worker instead, the way Dask's actors are called::

    caller                                       worker process
    ──────                                       ──────────────
    DirectPool.submit(spec, items): queue it;
      the worker with the most room takes it,
      up to 2 batches per thread
    _run, on the client's event loop:
      request "parmap_run" ──────────────────►   _Runner.run (its event loop)
                                                   worker.executor (its task threads):
                                                   run_batch(spec, items) -> Outcome bytes
      reply {"status": "OK", ...} ◄───────────
    the batch's future gets the bytes; the
    worker takes the next queued batch

One request is one round trip (about 1.3 ms here, against 7-9 ms for a task),
and with the next batch already waiting on the worker the threads rarely
idle between batches. At the end of a call, a worker that ran out of work
asks for a batch still waiting behind another worker's running one
(``_take_back_for``), as workers pulling from one queue would have taken it.

What the scheduler still does: it knows the workers (the pool reads its
worker list, in-process), ships ``parmap.share()`` values (datasets) and sees
a dead worker; the nannies restart workers and report exit codes. Clusters
parmap only connects to keep using tasks: the scheduler there must see the
work, or adaptive scaling and other clients would not.

A large function (over 64 KiB) is sent to a worker until it answers one
batch; later batches leave it out, and a worker whose cache let go of it asks
for it again ("need-spec"). A worker that dies fails the batches it held (the
caller names its exit code). A batch that a worker could not take (not
reachable yet, or without the handler for a moment after it started) is
queued again, first in line, and does not count as a failure. Stopping work
drops queued batches, cancels the ones waiting on a worker, and with
``stop_running`` kills the workers running the others.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import contextvars
import itertools
import pickle
import signal
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import distributed
import distributed.worker
from distributed.core import send_recv
from distributed.protocol import to_serialize

from parmap import _worker
from parmap._errors import WorkerCrashedError
from parmap._worker import CallSpec, run_batch

__all__ = ["DirectPool", "WorkerLost", "install_runner"]

_DEPTH = 2  # batches sent to one worker thread at once: the running one and the next
_RETRY_DELAY = 0.05  # seconds before a worker that was not ready is tried again
_NO_WORKER_TIMEOUT = 60.0  # seconds queued batches wait for any worker to (re)start
_CONNECT_TIMEOUT = 2.0  # seconds: a worker on this machine answers in milliseconds
_MAX_NOT_READY = 200  # tries (about 10 s) before a batch no worker would take fails
_INLINE_BYTES = 64 * 1024  # smaller payloads ride in the message itself (0.3 ms less per batch)

# -- on the worker ---------------------------------------------------------------------

_waiting: dict[str, cf.Future[bytes]] = {}  # batch id -> its run in the worker's executor


class _Runner(distributed.WorkerPlugin):
    """Installed on every worker of the embedded cluster (restarted ones too).

    It answers the ``parmap_run`` and ``parmap_cancel`` requests, and makes the
    worker ignore Ctrl-C: the caller handles it and stops the workers itself.
    """

    name = "parmap-runner"

    def setup(self, worker: distributed.Worker) -> None:
        self.worker = worker
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        worker.handlers["parmap_run"] = self.run
        worker.handlers["parmap_cancel"] = self.cancel

    async def run(self, head: bytes, items: bytes, batch: str) -> dict[str, Any]:
        """Run one batch on the worker's task threads; its Outcome bytes go back."""
        spec: CallSpec = pickle.loads(head)
        if not _worker.holds(spec):
            return {"status": "need-spec"}
        context = contextvars.copy_context()
        context.run(_bind_worker, self.worker)  # get_worker()/get_client() in the function
        future = self.worker.executor.submit(context.run, run_batch, spec, items)
        _waiting[batch] = future
        try:
            outcome = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancelled():  # parmap_cancel came first
                return {"status": "cancelled"}
            raise
        finally:
            _waiting.pop(batch, None)
        return {"status": "OK", "result": _payload(outcome)}

    def cancel(self, batches: list[str]) -> None:
        """Drop batches that wait for a thread (a running one cannot be stopped)."""
        for batch in batches:
            future = _waiting.get(batch)
            if future is not None:
                future.cancel()


def _payload(blob: bytes) -> Any:
    """Bytes as a message carries them: inline when small, as their own frames when large."""
    return blob if len(blob) <= _INLINE_BYTES else to_serialize(blob)


def _bind_worker(worker: distributed.Worker) -> None:
    # What distributed does for its own tasks (a private name: skipped if it changes).
    cvar = getattr(distributed.worker, "_worker_cvar", None)
    if isinstance(cvar, contextvars.ContextVar):
        cvar.set(worker)


def install_runner(client: distributed.Client) -> None:
    """Install the request handlers on every worker, present and future."""
    client.register_plugin(_Runner())


# -- in the caller -----------------------------------------------------------------------


class WorkerLost(ConnectionError):
    """The worker holding a batch died or dropped the connection (see ``DaskBackend.translate``)."""

    def __init__(self, address: str, cause: BaseException) -> None:
        super().__init__(f"lost the Dask worker {address}: {cause!r}")
        self.address = address


class _NotReady(Exception):
    """The worker could not take the batch yet; another will, a moment later."""


class _Taken(Exception):
    """The batch was taken back before it started, for a worker that ran out of work."""


@dataclass(eq=False)
class _Job:
    future: cf.Future[Any]
    full: bytes  # the pickled spec, blobs included
    light: bytes | None  # without its blobs, for workers that hold them (large specs only)
    token: str
    items: bytes
    batch: str
    address: str | None = None  # the worker it was sent to
    started: bool = False  # its future is running (a retried job keeps it so)
    dropped: bool = False  # cancelled: never send it (again)
    not_ready: int = 0  # workers that could not take it yet
    taking: bool = False  # asked back from its worker for an idle one


class DirectPool:
    """Batches sent to the workers of an embedded ``LocalCluster`` (see the module doc)."""

    def __init__(self, client: distributed.Client, cluster: distributed.LocalCluster) -> None:
        self._client = client
        self._cluster = cluster
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._sent: dict[str, list[_Job]] = {}  # worker -> its batches, running ones first
        self._holds: dict[str, set[str]] = {}  # worker -> tokens of large specs it holds
        self._resting: dict[str, float] = {}  # worker -> when to try it again (dead: never)
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:12]
        self._starved_since: float | None = None  # batches queued and no worker alive
        self._recheck = False

    def submit(
        self, spec: CallSpec, full: bytes, light: bytes | None, items: bytes
    ) -> cf.Future[Any]:
        job = _Job(
            cf.Future(), full, light, spec.fn_token, items, f"{self._prefix}-{next(self._ids)}"
        )
        job.future._parmap_job = job  # type: ignore[attr-defined]
        with self._lock:
            self._queue.append(job)
            self._dispatch()
        return job.future

    def cancel(self, futures: list[cf.Future[Any]], *, stop_running: bool) -> set[str]:
        """Drop or cancel these batches; return the workers to kill (running ones, if asked)."""
        kill: set[str] = set()
        tell: dict[str, list[str]] = {}
        with self._lock:
            threads = self._threads()
            for future in futures:
                job: _Job | None = getattr(future, "_parmap_job", None)
                future.cancel()
                if job is None:
                    continue
                job.dropped = True
                if job.address is None:
                    continue
                running = self._sent.get(job.address, [])[: threads.get(job.address, 1)]
                if stop_running and job in running:
                    kill.add(job.address)
                else:
                    tell.setdefault(job.address, []).append(job.batch)
            self._queue = deque(job for job in self._queue if not job.dropped)
            for address in kill:
                self._resting[address] = float("inf")
        for address, batches in tell.items():
            self._loop().add_callback(self._tell_cancel, address, batches)
        return kill

    # -- sending ------------------------------------------------------------------------

    def _loop(self) -> Any:
        loop = self._client.loop
        assert loop is not None, "a running Client has an event loop"
        return loop

    def _threads(self) -> dict[str, int]:
        """The cluster's running workers and their threads, read from the scheduler."""
        scheduler = self._cluster.scheduler
        if scheduler is None:
            return {}
        workers = dict.copy(scheduler.workers)  # one step under the GIL: the loop mutates it
        return {a: ws.nthreads for a, ws in workers.items() if ws.status.name == "running"}

    def _dispatch(self) -> None:
        """Send queued batches to workers with room (with the lock held); never blocks."""
        if self._client.status not in ("running", "connecting"):
            self._fail_queued(WorkerCrashedError("the Dask client was closed while a batch waited"))
            return
        now = time.monotonic()
        room = {
            address: threads * _DEPTH - len(self._sent.get(address, ()))
            for address, threads in self._threads().items()
            if self._resting.get(address, 0.0) <= now
        }
        while self._queue:
            if not room:
                self._starving(now)
                return
            self._starved_since = None
            address = max(room, key=room.__getitem__)
            if room[address] <= 0:
                return
            job = self._queue.popleft()
            if job.dropped or not (job.started or job.future.set_running_or_notify_cancel()):
                continue
            job.started, job.address = True, address
            room[address] -= 1
            self._sent.setdefault(address, []).append(job)
            self._loop().add_callback(self._run, job)

    def _starving(self, now: float) -> None:
        """No worker can take a batch now: look again shortly; give up after a minute."""
        if self._starved_since is None:
            self._starved_since = now
        if now - self._starved_since > _NO_WORKER_TIMEOUT:
            seconds = f"{_NO_WORKER_TIMEOUT:.0f} s"
            error = f"no worker of the embedded Dask cluster was alive for {seconds}"
            self._fail_queued(WorkerCrashedError(error))
        elif not self._recheck:
            self._recheck = True
            self._loop().call_later(_RETRY_DELAY, self._redispatch)

    def _redispatch(self) -> None:
        with self._lock:
            self._recheck = False
            self._dispatch()

    def _fail_queued(self, error: BaseException) -> None:
        queued, self._queue = self._queue, deque()
        for job in queued:
            if not job.dropped and (job.started or job.future.set_running_or_notify_cancel()):
                job.future.set_exception(error)

    async def _run(self, job: _Job) -> None:
        """On the client's event loop: one batch's request, then its worker takes the next."""
        address = job.address
        assert address is not None
        result: Any = None
        error: BaseException | None = None
        try:
            result = await self._request(address, job)
        except _Taken:
            self._again(job, address, rest=False)
            return
        except _NotReady as why:
            job.not_ready += 1
            if job.not_ready < _MAX_NOT_READY:
                self._again(job, address)
                return
            error = WorkerCrashedError(
                f"no worker of the embedded Dask cluster took a batch: {why}"
            )
        except OSError as exc:  # CommClosedError: the worker died or dropped us
            error = WorkerLost(address, exc)
        except BaseException as exc:  # parmap's code failed on the worker, or the loop closes
            error = exc
        with self._lock:
            self._sent[address].remove(job)
            if isinstance(error, WorkerLost):
                self._forget_gone()
                self._resting[address] = float("inf")
            self._dispatch()
            self._take_back_for(address)
        with contextlib.suppress(cf.InvalidStateError):  # cancelled meanwhile
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)

    def _again(self, job: _Job, address: str, *, rest: bool = True) -> None:
        """Queue a batch again, first in line; rest the worker that could not take it."""
        with self._lock:
            self._sent[address].remove(job)
            if rest:
                self._resting[address] = time.monotonic() + _RETRY_DELAY
            job.taking = False
            if not job.dropped:
                self._queue.appendleft(job)
            self._dispatch()

    def _take_back_for(self, idle: str) -> None:
        """At the end of a call, when ``idle`` ran out of work while another worker
        still holds a batch behind its running one: ask for that batch back (with
        the lock held). If it has not started, it comes back as ``_Taken`` and goes
        to the idle worker; if it has, nothing changes. One worker finishing its
        last batch long before the other is what a push of two batches per worker
        costs at the end; a pool whose workers pull from one queue does not pay it.
        """
        if self._queue or self._sent.get(idle):
            return
        threads = self._threads()
        if idle not in threads:
            return
        for address, jobs in self._sent.items():
            waiting = [job for job in jobs[threads.get(address, 1) :] if not job.dropped]
            if waiting and not any(job.taking for job in waiting):
                waiting[-1].taking = True
                self._loop().add_callback(self._tell_cancel, address, [waiting[-1].batch])
                return

    def _forget_gone(self) -> None:
        """Drop what is kept about workers that left the cluster (with the lock held)."""
        alive = self._threads()
        for address in [a for a in self._resting if a not in alive and not self._sent.get(a)]:
            self._resting.pop(address, None)
            self._holds.pop(address, None)
            self._sent.pop(address, None)

    async def _request(self, address: str, job: _Job) -> Any:
        holds = self._holds.setdefault(address, set())
        light = job.light is not None and job.token in holds
        reply = await self._send(address, "parmap_run", head=job.light if light else job.full,
                                 items=_payload(job.items), batch=job.batch)  # fmt: skip
        if isinstance(reply, dict) and reply.get("status") == "need-spec":  # its cache let go
            reply = await self._send(address, "parmap_run", head=job.full,
                                     items=_payload(job.items), batch=job.batch)  # fmt: skip
        if not isinstance(reply, dict) or reply.get("status") not in ("OK", "cancelled"):
            raise _NotReady(reply)  # None: the worker has no handler yet (just restarted)
        if reply["status"] == "cancelled" and not job.dropped:
            raise _Taken
        if job.light is not None:
            holds.add(job.token)
        return reply.get("result")

    async def _send(self, address: str, op: str, **message: Any) -> Any:
        pool = self._client.rpc
        try:
            comm = await pool.connect(address, timeout=_CONNECT_TIMEOUT)
        except OSError as exc:  # gone before it was told anything: try another
            raise _NotReady(exc) from exc
        try:
            return await send_recv(comm=comm, op=op, **message)
        finally:
            pool.reuse(address, comm)

    async def _tell_cancel(self, address: str, batches: list[str]) -> None:
        with contextlib.suppress(Exception):  # a dead worker runs nothing
            await self._send(address, "parmap_cancel", batches=batches, reply=False)
