"""The Dask backend's engine side: sessions, the embedded cluster, tasks.

One task's journey, on a cluster parmap connects to or a client it adopts::

    submit(prepared, items)   client.submit(run_batch_task, spec, items, pure=False, retries=0)
          │                   pure=False: identical batches still run (noisy fitness)
          ▼
    a worker thread           parmap._worker.run_batch -> Outcome bytes (fn's errors inside;
                              a share() value lost with every copy: SharedLost, retried)
          │
    the client's event loop   _fetch: gather the task's bytes
          ▼
    concurrent.futures.Future, which the core waits on

On the embedded cluster, batches skip the scheduler (``_dask_direct``).

A small function travels inside each batch (``CallSpec.inline``: cheaper than
a round trip); a large one is broadcast once per call and the tasks depend on
it (on the embedded cluster, it goes to each worker until the worker holds
it). ``parmap.share()`` values are broadcast to the workers once. On the
embedded cluster a dead worker fails its batches at once (parmap's
``retries=`` decides) and the error names its exit code. Stopping running work
(timeout, Ctrl-C) kills the embedded workers that run it, since a Python
thread cannot be interrupted, and their nannies start fresh ones. On a
cluster parmap only connected to, the scheduler's own settings hold, and
stopped batches are cancelled but a batch already running finishes on its
worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import os
import pickle
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import dask
import distributed
import distributed.security
from distributed.client import FutureCancelledError

from parmap._errors import BackendNotInstalledError, WorkerCrashedError, describe_exit
from parmap._serialization import loads
from parmap._worker import CallSpec, Outcome
from parmap.backends._base import Locator, default_workers
from parmap.backends._dask_direct import (
    DirectPool,
    SharedLost,
    WorkerLost,
    install_runner,
    note_lost,
    run_batch_task,
)
from parmap.backends._owned import make_owned_dir

__all__ = ["DaskEngine", "DaskLocator"]

log = logging.getLogger("parmap")

SHARED_FETCH_TIMEOUT = 60.0  # seconds a worker waits for a shared value from its peers
SHARED_LOST_CHECK = 0.5  # seconds between asking the scheduler whether anyone still holds it
KILL_TIMEOUT = 30.0  # seconds to wait for the scheduler to drop killed workers
EXIT_CODE_WAIT = 1.0  # seconds to wait for a nanny to report a dead worker's exit code
_START_TIMEOUT = 120.0  # seconds for the embedded cluster's workers to register
_REPLACEMENT_TIMEOUT = 30.0  # seconds for killed workers' replacements to register
_BROADCAST_TRIES = 4  # a broadcast that workers leaving or joining made fail is sent again

# The embedded cluster: nobody reads the profiler, which samples every worker every 10 ms.
_MESSAGE_LOG = 20
_EMBEDDED_CONFIG = {
    "distributed.worker.profile.enabled": False,
    # Each comm keeps its last messages for debugging, payloads under 1 MB included:
    # with the default 1,000 that is every batch's items, hundreds of MB on a long imap.
    "distributed.admin.low-level-log-length": _MESSAGE_LOG,
    # Background work that competes with the workers for the CPUs: the event-loop,
    # system and memory monitors look less often than 50, 2 and 10 times a second
    # in every process.
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    # A share() value is broadcast so that each worker holds a copy: the active memory
    # manager would drop all copies but one within 2 s, and a worker killed with that
    # one would take the value with it.
    "distributed.scheduler.active-memory-manager.start": False,
}
SCRATCH_PREFIX = "parmap-dask-"  # the embedded cluster's private local_directory (_owned)


@dataclass
class _Session:
    """A client that runs batches, and whether parmap started its cluster."""

    client: distributed.Client
    origin: str  # for messages and describe()
    threads: int  # batches it runs at once
    address: str | None = None  # the address parmap connected to
    cluster: distributed.LocalCluster | None = None  # set when parmap started it
    direct: DirectPool | None = None  # the embedded cluster's: batches skip the scheduler
    scratch: str | None = None  # the embedded cluster's local_directory, removed at close

    @property
    def alive(self) -> bool:
        return self.client.status in ("newly-created", "connecting", "running")


@dataclass
class _Prepared:
    """One call's spec: inside every task, or broadcast once (again if every copy died);
    pickled for the embedded workers (``light`` leaves out a large function's blobs)."""

    session: _Session
    spec: CallSpec
    scattered: distributed.Future | None = None
    full: bytes = b""
    light: bytes | None = None

    def argument(self) -> Any:
        if self.scattered is None:
            return self.spec
        if self.scattered.status != "finished":
            self.scattered = _scatter_spec(self.session.client, self.spec)
        return self.scattered


@dataclass
class _Published:
    """A ``share()`` value; the blob is kept to send it again to a new or restarted cluster."""

    name: str  # of the Dask dataset that names the value's current future
    blob: bytes
    future: distributed.Future  # holds the value on the cluster of future.client


class DaskLocator(Locator):
    """Finds a ``share()`` value by its dataset name (in the worker's memory, or a peer's)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def load(self) -> Any:
        """Fetch the value from a worker that holds it. If none does any more (every copy
        died with its worker), the batch ends as lost (``note_lost``): the caller sends
        the value again and retries it, as for a dead worker."""
        client = distributed.get_client()  # on a worker: its own client, made once
        deadline = time.monotonic() + SHARED_FETCH_TIMEOUT
        try:
            future = client.get_dataset(self.name)
            while True:
                try:
                    return loads(future.result(timeout=SHARED_LOST_CHECK))
                except TimeoutError:  # a large value on its way, or no copy left?
                    if not any(client.who_has(future).values()):
                        raise LookupError("no worker holds it any more") from None
                    if time.monotonic() > deadline:
                        raise
        except Exception as exc:
            note_lost(self.name)
            raise RuntimeError(
                f"the parmap.share() value {self.name} is not on this Dask cluster ({exc!r}); "
                "parmap sends it again and retries the batch"
            ) from exc


class DaskEngine:
    """The engine side of one DaskBackend: its sessions, and how batches reach them."""

    name = "dask"

    def __init__(self, workers: int | None, address: str | None) -> None:
        self.requested_workers = workers
        self.address = address
        self._lock = threading.RLock()
        self._session: _Session | None = None  # the one the last call used
        self._embedded: _Session | None = None  # ours to close: LocalCluster and client
        self._connected: _Session | None = None  # ours to close: a client to an address
        self._published: dict[str, _Published] = {}
        self._workers_killed = False  # then shared values may have lost every copy
        self._lost_copies = False  # a worker died, or a batch found a shared value lost

    def session(self) -> _Session:
        """The session of the last call if still alive, else the one a call would use now."""
        session = self._session
        return session if session is not None and session.alive else self._resolve()

    def threads(self) -> int:
        """How many batches the cluster runs at once."""
        return self.session().threads

    def prepare(self, spec: CallSpec) -> _Prepared:
        session = self._resolve()
        if session.cluster is None:  # a cluster we only use may have grown or shrunk
            session.threads = _threads(session.client)
        self._republish(session)
        prepared = _Prepared(session, spec)
        if session.direct is not None:
            prepared.full = pickle.dumps(spec, protocol=5)
            if not spec.inline:
                prepared.light = pickle.dumps(spec.light(), protocol=5)
        elif not spec.inline:
            prepared.scattered = _scatter_spec(session.client, spec)
        return prepared

    def submit(self, prepared: _Prepared, items: bytes) -> cf.Future[Any]:
        session = prepared.session
        if session.client.status != "running":  # lost its scheduler: a batch would wait
            raise WorkerCrashedError(  # for the client to reconnect (30 s), or forever
                f"lost the connection to {session.origin} (the Dask client is "
                f"{session.client.status}): the scheduler died or cannot be reached",
                retryable=False,
            )
        if self._lost_copies:  # a retried batch: its shared values reach every worker first
            self._lost_copies = False
            self._republish(session, every=True)
        if session.direct is not None:
            future = session.direct.send(prepared.spec, prepared.full, prepared.light, items)
        else:
            future = _submit_task(session.client, prepared.argument(), items)
        future._parmap_session = session  # type: ignore[attr-defined]
        return future

    def translate(self, exc: BaseException, future: cf.Future[Any] | None) -> BaseException:
        session: _Session | None = getattr(future, "_parmap_session", None)
        if isinstance(exc, (WorkerLost, distributed.KilledWorker, SharedLost)) and self._published:
            self._lost_copies = True  # the copies it held are gone: send them again
        if isinstance(exc, WorkerLost):
            return _worker_lost(exc.address, session)
        if isinstance(exc, SharedLost):
            return WorkerCrashedError(  # this batch's worker lives: not its own loss
                f"{exc}; the Dask workers holding every copy died (parmap sends the value again)",
                collateral=True,
            )
        if isinstance(exc, distributed.KilledWorker):
            tries = exc.allowed_failures + 1
            again = f"; the scheduler tried {tries} workers" if tries > 1 else ""
            return _worker_lost(exc.last_worker.address, session, again)
        if isinstance(exc, FutureCancelledError):
            return WorkerCrashedError(
                f"the Dask scheduler dropped a batch ({exc.reason}: {exc.msg or 'no details'}); "
                "a worker, or the data the batch needed, was lost or restarted"
            )
        if isinstance(exc, asyncio.CancelledError):
            return WorkerCrashedError("the Dask client was closed while a batch ran")
        if isinstance(exc, OSError):  # CommClosedError, refused or timed-out connections
            where = session.origin if session else "the Dask cluster"
            return WorkerCrashedError(f"lost the connection to {where}: {exc!r}")
        if isinstance(exc, ImportError) and "parmap" in str(exc):
            return BackendNotInstalledError(
                f"the Dask workers cannot import parmap ({exc}); install parmap-backends "
                "in the environment of every worker"
            )
        return exc

    def cancel(self, futures: Collection[cf.Future[Any]], *, stop_running: bool) -> None:
        session: _Session | None = next(
            (s for s in (getattr(f, "_parmap_session", None) for f in futures) if s), None
        )
        if session is None:
            return
        if session.direct is None:
            _cancel_tasks(futures, session.client)
            return
        busy = session.direct.cancel(futures, stop_running=stop_running)
        if busy:  # a running Python function cannot be interrupted: kill its worker
            self._kill(session, {str(address) for address in busy})

    def stop_worker(self, future: cf.Future[Any], outcome: Outcome) -> None:
        """Stop the worker that ran this batch (a thread there runs a timed-out item):
        on the embedded cluster, kill it (its nanny starts a fresh one); on a cluster
        parmap only connected to, ask its nanny to restart it."""
        session: _Session | None = getattr(future, "_parmap_session", None)
        if session is None:
            return
        job = getattr(future, "_parmap_job", None)
        if session.direct is not None and job is not None and job.worker is not None:
            self._kill(session, {str(job.worker)})
            return
        pids = session.client.run(os.getpid)  # address -> pid, for every worker
        stuck = [address for address, pid in pids.items() if pid == outcome.pid]
        if stuck:
            try:
                session.client.restart_workers(stuck, timeout=KILL_TIMEOUT)
            except Exception as exc:  # no nanny: nobody can restart it
                log.warning(
                    "parmap: could not restart Dask worker %s, which still runs an item "
                    "that timed out (%r); restart it by hand", stuck[0], exc,
                )  # fmt: skip

    def _kill(self, session: _Session, addresses: set[str]) -> None:
        """SIGKILL embedded workers; their nannies start fresh ones at other addresses."""
        assert session.direct is not None
        for address in addresses:
            session.direct.rest(address, float("inf"))
        _kill_workers(session, addresses)
        self._workers_killed = True  # the next call sends every shared value again,
        self._lost_copies = bool(self._published)  # and so does this call's next batch

    def publish(self, token: str, blob: bytes) -> Locator:
        with self._lock:
            client = self._resolve().client
            name = f"parmap-share-{token}"
            self._published[name] = _Published(name, blob, _broadcast(client, name, blob))
            return DaskLocator(name)

    def release(self, token: str) -> None:
        """Unpublish a shared value whose handle died; its copies leave the workers' memory.

        Called from any thread (a garbage collection): the work is done on the
        client's event loop.
        """
        with self._lock:
            entry = self._published.pop(f"parmap-share-{token}", None)
        if entry is None:
            return
        client = entry.future.client
        if client.status == "running" and client.loop is not None:
            client.loop.add_callback(_unpublish, client, entry)

    def _republish(self, session: _Session, *, every: bool = False) -> None:
        """Broadcast the shared values that are not on this call's cluster (any more).

        After workers were killed or died, the scheduler may have lost every copy of a
        value before our futures hear of it, so then every value is sent again (under
        a new key: the dataset's name is what workers look up), to every worker.
        """
        with self._lock:
            killed, self._workers_killed = self._workers_killed, False
            if killed and session.cluster is not None and self._published:
                # the nannies are starting workers in place of the killed ones: a
                # broadcast to a worker that is still joining fails in the scheduler
                _wait_for_replacements(session)
            for entry in list(self._published.values()):
                here = entry.future.client is session.client and entry.future.status == "finished"
                if every or killed or not here:
                    old = entry.future
                    entry.future = _broadcast(session.client, entry.name, entry.blob)
                    if old.client is session.client:
                        old.release()

    def describe(self) -> dict[str, Any]:
        session = self._session
        if session is None:
            return {"workers": self.requested_workers or "?", "started": False}
        scheduler = session.client.scheduler
        return {
            "workers": self.requested_workers or session.threads,
            "cluster": session.origin,
            "scheduler": scheduler.address if scheduler is not None else None,
            "batches": "tasks" if session.direct is None else "sent straight to the workers",
        }

    def shutdown(self) -> None:
        with self._lock:
            owned = [s for s in (self._connected, self._embedded) if s is not None]
            self._session = self._connected = self._embedded = None
            published, self._published = list(self._published.values()), {}
        for entry in published:  # a dataset outlives its client: unpublish it
            with contextlib.suppress(Exception):
                if entry.future.client.status == "running":
                    entry.future.client.unpublish_dataset(entry.name)
        for session in owned:
            _close(session)

    # -- choosing, connecting, starting ----------------------------------------------

    def _resolve(self) -> _Session:
        """The session for this call, in the order of the module docstring."""
        with self._lock:
            address = self.address
            default = None if address else _default_client()
            env = os.environ.get("DASK_SCHEDULER_ADDRESS", "").strip()
            if address:
                session = self._connect(address, f"the Dask scheduler at {address} (address=)")
            elif default is not None:
                session = self._adopt(default)
            elif env:
                origin = f"the Dask scheduler at {env} ($DASK_SCHEDULER_ADDRESS)"
                session = self._connect(env, origin)
            else:
                session = self._local()
            self._session = session
            return session

    def _adopt(self, client: distributed.Client) -> _Session:
        current = self._session
        if current is not None and current.client is client:
            return current
        if client.asynchronous:
            raise TypeError(
                "the default Dask client is asynchronous, but parmap blocks; create a "
                "synchronous distributed.Client, or pass address= to let parmap connect"
            )
        return _Session(client, "the default Dask client", _threads(client))

    def _connect(self, address: str, origin: str) -> _Session:
        current = self._connected  # one that lost its scheduler and reconnects is replaced
        running = current is not None and current.client.status == "running"
        if current is not None and running and current.address == address:
            return current
        if current is not None:
            self._connected = None
            _close(current)
        try:
            client = _quick(distributed.Client(address, set_as_default=False))
        except OSError as exc:
            raise ConnectionError(
                f"could not connect to {origin}: {exc}. Start one with `dask scheduler` and "
                "workers with `dask worker <address>`, or fix the address"
            ) from exc
        self._connected = _Session(client, origin, _threads(client), address=address)
        return self._connected

    def _local(self) -> _Session:
        current = self._embedded
        if current is not None and current.alive:
            _restore_nannies(current)
            return current
        if current is not None:
            self._embedded = None
            _close(current)
        workers = self.requested_workers or default_workers()
        started = time.perf_counter()
        scratch = make_owned_dir(None, SCRATCH_PREFIX)
        try:
            with dask.config.set({**_EMBEDDED_CONFIG, "temporary-directory": scratch}):
                cluster = _start_local_cluster(workers, scratch)
                client = distributed.Client(cluster, set_as_default=False, direct_to_workers=True)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        _quick(client)
        # Every worker registered before the first batch: each gets its share of the
        # batches, and a broadcast share() value reaches all of them.
        client.wait_for_workers(workers, timeout=_START_TIMEOUT)
        install_runner(client)
        seconds = time.perf_counter() - started
        log.debug("parmap: started a Dask LocalCluster of %d workers in %.2f s", workers, seconds)
        self._embedded = _Session(
            client, "an embedded Dask LocalCluster", workers, cluster=cluster,
            direct=DirectPool(client, cluster), scratch=scratch,
        )  # fmt: skip
        return self._embedded


def _quick(client: distributed.Client) -> distributed.Client:
    """Tune the stream of a client parmap owns to the scheduler.

    It sends every 1 ms, not every 10 ms: back-to-back calls otherwise wait for
    the interval, hard-coded in Client, before their first batch leaves (20 ->
    15 ms per small call here; dask/distributed#836 on round-trip latency). And
    it remembers its last 20 messages, not 1,000 with their payloads: on a long
    ``imap`` those were every batch's items (RSS +200 MB over 20 million items).
    Skipped if the private attributes change.
    """
    comm = getattr(client, "scheduler_comm", None)
    if comm is not None and isinstance(getattr(comm, "interval", None), float):
        comm.interval = 1e-3
    if comm is not None and isinstance(getattr(comm, "recent_message_log", None), deque):
        comm.recent_message_log = deque(comm.recent_message_log, maxlen=_MESSAGE_LOG)
    return client


def _start_local_cluster(workers: int, scratch: str) -> distributed.LocalCluster:
    """An embedded cluster on 127.0.0.1 that only this process can use.

    Loopback TCP does not tell who connects: any local user could connect a client
    and run code in the workers and in this process. So every connection is TLS,
    both ends proving that they hold a key made for this cluster alone (in memory,
    never written to disk). The workers keep their files in ``scratch``, a
    directory of ours (mode 0700), not in a shared ``dask-scratch-space``.
    """
    try:
        security = distributed.security.Security.temporary()
    except ImportError as exc:  # cryptography: part of the dask extra
        raise BackendNotInstalledError(
            f"the embedded Dask cluster needs the cryptography package ({exc}); install "
            "with: pip install 'parmap-backends[dask]'"
        ) from exc
    try:
        return _LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            protocol="tls://",
            security=security,
            local_directory=scratch,
            dashboard_address=None,
            # The scheduler serves HTTP even without a dashboard, by default on port
            # 8787: leave that port to the user's own clusters.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.CRITICAL,
            worker_class=_Nanny,
        )
    except Exception as exc:
        raise RuntimeError(
            f"could not start an embedded Dask LocalCluster: {exc!r}. If a script calls "
            'parmap when it is imported, move the call under `if __name__ == "__main__":` '
            "(Dask starts workers with 'spawn', which imports the main module again)"
        ) from exc


class _LocalCluster(distributed.LocalCluster):
    """A LocalCluster that keeps its nannies when their workers are killed.

    When the scheduler drops a worker, SpecCluster waits
    ``distributed.deploy.lost-worker-timeout`` (15 s) and then closes its nanny for good
    unless a worker of the same name is back by then. parmap kills workers to stop items
    that hang, sometimes the same nanny's twice within 15 s: the check can then find the
    second replacement still starting, and the cluster stays a worker short (seen in
    ``symbreg --faults``). Our nannies start their own replacements, so a removal leaves
    them be. This overrides a private method; if it changes, :func:`_restore_nannies`
    (at each call, and before waiting for replacements) still starts any nanny that went
    missing, through the public ``scale()``.
    """

    def _update_worker_status(self, op: str, msg: Any) -> None:
        if op == "remove" and _BASE_UPDATE is not None:
            _BASE_UPDATE(self, op, msg)  # the scheduler's view, without SpecCluster's reaping
            return
        super()._update_worker_status(op, msg)


_BASE_UPDATE = getattr(distributed.deploy.Cluster, "_update_worker_status", None)


class _ExitCodes:
    """Exit codes of the embedded clusters' dead workers, by worker address."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self._changed = threading.Condition()

    def record(self, address: str, exitcode: int) -> None:
        with self._changed:
            self._codes[address] = exitcode
            self._changed.notify_all()

    def forget(self, address: str) -> None:
        """A new worker listens at ``address``: an earlier one's code is not its own."""
        with self._changed:
            self._codes.pop(address, None)

    def wait_for(self, address: str, timeout: float) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: address in self._codes, timeout=timeout)
            return self._codes.get(address)


_exit_codes = _ExitCodes()


class _Nanny(distributed.Nanny):
    """A nanny that remembers how its worker process ended.

    distributed only logs the exit code (dask/distributed#5465 asks for a hook);
    overriding this private method degrades to "exit code unknown" if it changes.
    Ports are reused: a worker that starts at an address where another one died
    clears that one's code.
    """

    async def instantiate(self) -> Any:
        status = await super().instantiate()
        if self.worker_address:
            _exit_codes.forget(self.worker_address)
        return status

    async def _on_worker_exit(self, exitcode: int) -> Any:
        if self.worker_address:
            _exit_codes.record(self.worker_address, exitcode)
        return await super()._on_worker_exit(exitcode)


def _submit_task(client: distributed.Client, spec: Any, items: bytes) -> cf.Future[Any]:
    task = client.submit(run_batch_task, spec, items, pure=False, retries=0)
    future: cf.Future[Any] = cf.Future()
    loop = client.loop
    assert loop is not None, "a running Client has an event loop"
    loop.add_callback(_fetch, client, task, future)
    future._parmap_task = task  # type: ignore[attr-defined]
    return future


def _cancel_tasks(futures: Collection[cf.Future[Any]], client: distributed.Client) -> None:
    """Cancel the batches' tasks. One already running finishes on its worker: the cluster
    is not parmap's, so it does not kill workers."""
    tasks = [t for t in (getattr(f, "_parmap_task", None) for f in futures) if t is not None]
    for future in futures:
        future.cancel()
    if tasks:
        client.cancel(tasks, reason="parmap call ended")


async def _fetch(
    client: distributed.Client, task: distributed.Future, future: cf.Future[Any]
) -> None:
    """On the client's event loop: wait for one batch's task; pass its bytes to ``future``.

    Cancelling ``future`` does not interrupt this coroutine (that would leave
    distributed's gather with an exception nobody retrieves); ``cancel()``
    cancels the task, which ends the gather.
    """
    try:
        result = await client.gather(task, asynchronous=True)
    except BaseException as exc:  # asyncio.CancelledError too: the client is closing
        with contextlib.suppress(cf.InvalidStateError):  # cancelled meanwhile
            future.set_exception(exc)
    else:
        with contextlib.suppress(cf.InvalidStateError):
            future.set_result(result)


def _worker_lost(address: str, session: _Session | None, again: str = "") -> WorkerCrashedError:
    exitcode = None
    if session is not None and session.cluster is not None:
        exitcode = _exit_codes.wait_for(address, EXIT_CODE_WAIT)
        how = describe_exit(exitcode)
    else:
        how = "died (its log on that machine says why)"
    return WorkerCrashedError(f"a Dask worker process ({address}) {how}{again}", exitcode=exitcode)


def _restore_nannies(session: _Session) -> None:
    """Start again, through the public ``scale()``, any nanny the embedded cluster closed
    (see :class:`_LocalCluster`); its worker joins while the call runs."""
    cluster = session.cluster
    if cluster is not None and len(cluster.workers) < len(cluster.worker_spec):
        log.debug("parmap: starting Dask nannies again: %d of %d left",
                  len(cluster.workers), len(cluster.worker_spec))  # fmt: skip
        cluster.scale(len(cluster.worker_spec))


def _wait_for_replacements(session: _Session) -> None:
    """Wait until the killed workers' replacements joined, or go on with the workers there
    are (the call is better served by fewer workers than by none). A nanny the cluster
    closed meanwhile (see :class:`_LocalCluster`) is started again first."""
    _restore_nannies(session)
    try:
        session.client.wait_for_workers(session.threads, timeout=_REPLACEMENT_TIMEOUT)
    except (TimeoutError, asyncio.TimeoutError, distributed.TimeoutError) as exc:
        workers = len(session.client.scheduler_info().get("workers", {}))
        if workers == 0:
            raise
        log.warning("parmap: %s; going on with %d Dask workers", exc, workers)


def _kill_workers(session: _Session, addresses: set[str]) -> None:
    """SIGKILL embedded workers (their nannies start fresh ones).

    Returns once the scheduler has dropped them, so no later batch goes to a dying worker.
    """
    cluster = session.cluster
    assert cluster is not None and cluster.scheduler is not None
    log.debug("parmap: killing Dask workers %s to stop their running batches", addresses)
    for nanny in list(cluster.workers.values()):
        if getattr(nanny, "worker_address", None) in addresses and nanny.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(nanny.pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_TIMEOUT
    while addresses.intersection(cluster.scheduler.workers) and time.monotonic() < deadline:
        time.sleep(0.01)


def _scatter_spec(client: distributed.Client, spec: CallSpec) -> distributed.Future:
    """Send a large function to every worker (each runs batches; one death loses no copy)."""
    return client.scatter(spec, broadcast=True, hash=False)


def _broadcast(client: distributed.Client, name: str, blob: bytes) -> distributed.Future:
    """Send ``blob`` to every worker; publish it as dataset ``name`` for later workers.

    A worker that leaves or joins while the value is sent makes the scheduler fail
    the broadcast (seen: ``KeyError`` of the worker's address in ``update_data``,
    ``RuntimeError('ConnectionPool is closed')`` in ``replicate``): it is sent
    again, to the workers there are then, a few times before the error stands.
    """
    for attempt in range(_BROADCAST_TRIES):
        try:
            future = client.scatter(blob, broadcast=True, hash=False)
            break
        except (KeyError, RuntimeError, OSError):
            if attempt == _BROADCAST_TRIES - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    client.publish_dataset(future, name=name, override=True)
    return future


async def _unpublish(client: distributed.Client, entry: _Published) -> None:
    with contextlib.suppress(Exception):  # the cluster may be closing
        await client.unpublish_dataset(entry.name, asynchronous=True)
    entry.future.release()


def _default_client() -> distributed.Client | None:
    try:
        return distributed.default_client()
    except ValueError:
        return None


def _threads(client: distributed.Client) -> int:
    """Worker threads of the cluster (at least 1: an adaptive cluster may start empty)."""
    return max(1, sum(client.nthreads().values()))


def _close(session: _Session) -> None:
    try:
        session.client.close()
        if session.cluster is not None:
            session.cluster.close()
    except Exception:  # pragma: no cover - best effort at exit
        log.warning("parmap: error while closing %s", session.origin, exc_info=True)
    if session.scratch is not None:
        shutil.rmtree(session.scratch, ignore_errors=True)
