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
    DirectPool.send(spec, items): the shared
      dispatcher (_dispatch) queues it; the
      worker with the most room takes it,
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
takes back a batch still waiting behind another worker's running one (the
dispatcher asks for it with ``parmap_cancel``), as workers pulling from one
queue would have taken it.

What the scheduler still does: it knows the workers (the pool reads its
worker list, in-process), ships ``parmap.share()`` values (datasets) and sees
a dead worker; the nannies restart workers and report exit codes. Clusters
parmap only connects to keep using tasks: the scheduler there must see the
work, or adaptive scaling and other clients would not.

A large function (not ``CallSpec.inline``) is sent to a worker until it answers one
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
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import distributed
import distributed.worker
from distributed.core import send_recv
from distributed.protocol import to_serialize

from parmap import _worker
from parmap._errors import WorkerCrashedError
from parmap._worker import CallSpec, run_batch
from parmap.backends._dispatch import Dispatcher, Job

__all__ = [
    "DirectPool",
    "SharedLost",
    "WorkerLost",
    "install_runner",
    "note_lost",
    "run_batch_task",
    "run_watching",
]

_RETRY_DELAY = 0.05  # seconds before a worker that was not ready is tried again
_NO_WORKER_TIMEOUT = 60.0  # seconds queued batches wait for any worker to (re)start
_CONNECT_TIMEOUT = 2.0  # seconds: a worker on this machine answers in milliseconds
_MAX_NOT_READY = 200  # tries (about 10 s) before a batch no worker would take fails
_INLINE_BYTES = 64 * 1024  # smaller payloads ride in the message itself (0.3 ms less per batch)

# -- on the worker ---------------------------------------------------------------------

_waiting: dict[str, cf.Future[bytes]] = {}  # batch id -> its run in the worker's executor
# The share() values the running batch found lost. A context variable, not a thread's:
# with item_timeout= the items run on a thread of their own, which copies the context.
_lost: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "parmap_dask_lost", default=None
)


class SharedLost(Exception):
    """A batch needed a ``parmap.share()`` value that no worker of the cluster holds any
    more (every copy died with its worker): the caller sends it again and retries the
    batch, as for a lost worker."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"parmap.share() value(s) lost with the workers that held them: {names}")
        self.names = names


def note_lost(name: str) -> None:
    """Called by a shared value's loader that found the value lost (on a worker)."""
    lost = _lost.get()
    if lost is not None:
        lost.append(name)


def run_watching(spec: CallSpec, items: bytes) -> tuple[bytes, list[str]]:
    """``run_batch``, and the shared values it found lost (then its outcome is moot)."""
    lost: list[str] = []
    token = _lost.set(lost)
    try:
        return run_batch(spec, items), lost
    finally:
        _lost.reset(token)


def run_batch_task(spec: CallSpec, items: bytes) -> bytes:
    """A batch as a Dask task: ``run_batch``, raising :class:`SharedLost` if a shared
    value was lost (the caller retries it like a batch of a dead worker)."""
    blob, lost = run_watching(spec, items)
    if lost:
        raise SharedLost(lost)
    return blob


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
        future = self.worker.executor.submit(context.run, run_watching, spec, items)
        _waiting[batch] = future
        try:
            outcome, lost = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancelled():  # parmap_cancel came first
                return {"status": "cancelled"}
            raise
        finally:
            _waiting.pop(batch, None)
        if lost:
            return {"status": "lost-share", "names": lost}
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
    """The worker holding a batch died or dropped the connection (see ``DaskEngine.translate``)."""

    def __init__(self, address: str, cause: BaseException) -> None:
        super().__init__(f"lost the Dask worker {address}: {cause!r}")
        self.address = address


class _NotReady(Exception):
    """The worker could not take the batch yet; another will, a moment later."""


class _Taken(Exception):
    """The batch was taken back before it started, for a worker that ran out of work."""


@dataclass(frozen=True)
class _Batch:
    """What one batch's request carries."""

    full: bytes  # the pickled spec, blobs included
    light: bytes | None  # without its blobs, for workers that hold them (large specs only)
    token: str
    items: bytes
    batch: str  # its id on the worker (for parmap_cancel)


class DirectPool(Dispatcher):
    """Batches sent to the workers of an embedded ``LocalCluster`` (see the module doc),
    placed by the shared per-worker dispatcher."""

    def __init__(self, client: distributed.Client, cluster: distributed.LocalCluster) -> None:
        super().__init__()
        self._client = client
        self._cluster = cluster
        self._holds: dict[str, set[str]] = {}  # worker -> tokens of large specs it holds
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:12]
        self._starved_since: float | None = None  # batches queued and no worker alive
        self._recheck = False

    def send(
        self, spec: CallSpec, full: bytes, light: bytes | None, items: bytes
    ) -> cf.Future[Any]:
        """Queue one batch for the workers."""
        batch = f"{self._prefix}-{next(self._ids)}"
        return self.submit(_Batch(full, light, spec.fn_token, items, batch))

    # -- the dispatcher's engine side ---------------------------------------------------

    def capacity(self) -> Mapping[Hashable, int]:
        """The cluster's running workers and their threads, read from the scheduler."""
        if self._client.status not in ("running", "connecting"):
            raise WorkerCrashedError("the Dask client was closed while a batch waited")
        scheduler = self._cluster.scheduler
        if scheduler is None:
            return {}
        workers = dict.copy(scheduler.workers)  # one step under the GIL: the loop mutates it
        threads = {a: ws.nthreads for a, ws in workers.items() if ws.status.name == "running"}
        if threads:
            self._starved_since = None
        return threads

    def start(self, worker: Hashable, job: Job) -> None:
        self._loop().add_callback(self._run, str(worker), job)

    def drop(self, worker: Hashable, jobs: list[Job]) -> None:
        batches = [job.payload.batch for job in jobs]
        self._loop().add_callback(self._tell_cancel, str(worker), batches)

    def worker_lost(self, worker: Hashable, job: Job) -> None:
        super().worker_lost(worker, job)
        self._holds.pop(str(worker), None)  # a restarted worker has a fresh cache

    def no_worker(self) -> None:
        """No worker can take a batch now: look again shortly; give up after a minute."""
        now = time.monotonic()
        if self._starved_since is None:
            self._starved_since = now
        if now - self._starved_since > _NO_WORKER_TIMEOUT:
            seconds = f"{_NO_WORKER_TIMEOUT:.0f} s"
            error = f"no worker of the embedded Dask cluster was alive for {seconds}"
            self.fail_queued(WorkerCrashedError(error))
        elif not self._recheck:
            self._recheck = True
            self._loop().call_later(_RETRY_DELAY, self._redispatch)

    def _redispatch(self) -> None:
        with self.lock:
            self._recheck = False
            self.dispatch()

    def _loop(self) -> Any:
        loop = self._client.loop
        assert loop is not None, "a running Client has an event loop"
        return loop

    # -- one batch, on the client's event loop ---------------------------------------------

    async def _run(self, address: str, job: Job) -> None:
        """One batch's request; its end goes to the dispatcher."""
        try:
            result = await self._request(address, job)
        except _Taken:
            self.finished(job, retry=0.0)
        except _NotReady as why:
            if job.tries + 1 < _MAX_NOT_READY:
                self.finished(job, retry=_RETRY_DELAY)
                return
            error = f"no worker of the embedded Dask cluster took a batch: {why}"
            self.finished(job, error=WorkerCrashedError(error))
        except OSError as exc:  # CommClosedError: the worker died or dropped us
            self.finished(job, error=WorkerLost(address, exc), lost=True)
        except SharedLost as exc:  # the worker lives; a value it needed is gone
            self.finished(job, error=exc)
        except BaseException as exc:  # parmap's code failed on the worker, or the loop closes
            self.finished(job, error=exc)
        else:
            self.finished(job, result)

    async def _request(self, address: str, job: Job) -> Any:
        batch: _Batch = job.payload
        holds = self._holds.setdefault(address, set())
        light = batch.light is not None and batch.token in holds
        reply = await self._send(address, "parmap_run", head=batch.light if light else batch.full,
                                 items=_payload(batch.items), batch=batch.batch)  # fmt: skip
        if isinstance(reply, dict) and reply.get("status") == "need-spec":  # its cache let go
            reply = await self._send(address, "parmap_run", head=batch.full,
                                     items=_payload(batch.items), batch=batch.batch)  # fmt: skip
        if isinstance(reply, dict) and reply.get("status") == "lost-share":
            raise SharedLost(reply["names"])
        if not isinstance(reply, dict) or reply.get("status") not in ("OK", "cancelled"):
            raise _NotReady(reply)  # None: the worker has no handler yet (just restarted)
        if reply["status"] == "cancelled" and not job.dropped:
            raise _Taken
        if batch.light is not None:
            holds.add(batch.token)
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
