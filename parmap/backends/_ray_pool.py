"""The Ray backend's engine side: the runtime, the actors, one call's batches.

One call::

    prepare(spec)   pickle the call's spec once. A small function (CallSpec.inline)
                    rides along with each batch: copying a few KiB costs less than
                    any object-store round trip, and workers unpickle it once (by
                    digest). A large one, or shared values, go to the object store
                    once (ray.put, cached across calls); see _ray_worker
    submit(batch)   the shared dispatcher (_dispatch) sends it to the actor with
                    the fewest batches, each holding at most two (the running one
                    and the next)
    wait            short cf.wait slices: a Ctrl-C is seen at once, and the
                    embedded instance's own processes are looked at (a raylet that
                    died fails the batches instead of leaving them to wait forever)
    cancel          drop queued batches; with stop_running, kill the actors running
                    the others (a running call cannot be interrupted) and wait until
                    they are gone, so no stopped batch starts another item

A batch queued on an actor behind a running one cannot be taken back (Ray
ends a cancelled actor call only once the running one ends), so a straggler
delays at most one more batch; the batching policy's rounds of equal batches
keep that small. Measured on 180 items of 2 ms, the two workers idled 29 ms in
all per call, against 42 ms with one batch per worker.

The actors reserve no Ray resources (``num_cpus=0``), so they never block the
caller's own Ray work; there is one per CPU of each node, placed on that node.
Ray's own retries are off (``max_restarts=0``, ``max_task_retries=0``): the
core's ``retries=`` decides. A dead worker, node or object becomes
:class:`parmap.WorkerCrashedError`; Ray does not report a worker's exit code
or signal, so the message names the usual causes instead.

A process has one Ray runtime: every RayBackend instance (one per set of
options) shares it, and the embedded instance stops when the last of them
shuts down.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import pickle
import queue
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import ray
import ray.exceptions as rex
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from parmap._errors import WorkerCrashedError
from parmap._worker import CallSpec
from parmap.backends import _ray_local, _ray_reaper
from parmap.backends._base import Locator, default_workers
from parmap.backends._dispatch import Dispatcher, Job
from parmap.backends._ray_worker import RayLocator, Worker, collected_refs, runtimes_started

__all__ = ["RayPool"]

log = logging.getLogger("parmap")

_WAIT_SLICE = 0.25  # seconds: the longest a Ctrl-C can go unnoticed
_HEALTH_EVERY = 1.0  # seconds between looks at the embedded instance's processes
_VITAL = ("raylet", "gcs_server")  # the embedded instance's processes a call needs
_KILL_WAIT = 10.0  # seconds to wait for killed actors to be gone
_BUNDLE_CACHE_SIZE = 8
_NODES_REFRESH = 10.0  # seconds between looks at a cluster's nodes
_CRASHES = (
    rex.WorkerCrashedError,
    rex.RayActorError,  # ActorDiedError, ActorUnavailableError
    rex.ActorUnschedulableError,  # the node picked for a replacement worker is gone
    rex.NodeDiedError,
    rex.LocalRayletDiedError,
    rex.OutOfMemoryError,
    rex.ObjectLostError,  # OwnerDiedError, ObjectReconstructionFailedError, ...
    rex.RaySystemError,
)


class RuntimeLost(ConnectionError):
    """The embedded Ray instance's own processes died (raylet, GCS)."""


class _Runtime:
    """The process's one Ray runtime, as parmap's pools share it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.owned = False  # parmap started it (the embedded instance)
        self.where: str | None = None
        self.address: str | None = None
        self.reaper: subprocess.Popen[bytes] | None = None
        self.processes: set[_ray_reaper.Process] = set()  # the embedded instance's own
        self.vital: set[_ray_reaper.Process] = set()  # those it cannot work without
        self.users: set[RayPool] = set()
        self.broken = False

    def connect(self, pool: RayPool, address: str | None, cpus: int) -> str:
        """Attach ``pool`` to the runtime: the caller's, a cluster's or a new embedded one."""
        with self.lock:
            if self.where is not None and (self.broken or not ray.is_initialized()):
                self._stop()
            if self.where is None:
                self._start(address, cpus)
            elif address and address != self.address and not self.owned:
                raise ValueError(
                    f"this process is connected to Ray at {self.where}; a process can use one "
                    f"Ray cluster at a time, so address={address!r} cannot be used too"
                )
            self.users.add(pool)
            assert self.where is not None
            return self.where

    def _start(self, address: str | None, cpus: int) -> None:
        runtimes_started[0] += 1  # the ObjectRefs of shared values made before are void
        if ray.is_initialized():
            self.where = "the running Ray runtime (ray.init() by the caller)"
        elif address:
            with _ray_local.no_sigint_for_children():
                ray.init(address=address, logging_level=logging.ERROR)
            self.where, self.address = f"the Ray cluster at {address}", address
        else:
            self.reaper, self.processes = _ray_local.start(cpus)
            # The raylet and the GCS: without them no task runs. Ray's helpers (the
            # dashboard, the autoscaler's monitor, the log monitor) may end on their own.
            self.vital = {p for p in self.processes if _ray_reaper.name(p) in _VITAL}
            self.owned, self.where = True, "an embedded local Ray instance"
        self.broken = False

    def leave(self, pool: RayPool) -> None:
        """``pool`` shut down; the embedded instance stops with its last user."""
        with self.lock:
            self.users.discard(pool)
            if not self.users:
                self._stop()

    def _stop(self) -> None:
        owned = self.owned
        self.where = self.address = None
        self.owned = False
        if owned and ray.is_initialized():
            if self.broken:
                _ray_reaper.kill(_ray_reaper.family(self.processes))  # shutdown would wait
            with contextlib.suppress(Exception):
                ray.shutdown()
        _ray_local.stop_reaper(self.reaper)
        self.reaper, self.processes, self.vital = None, set(), set()

    def check(self) -> None:
        """Raise :class:`RuntimeLost` if the embedded instance's own processes died."""
        if self.owned and self.vital and not all(map(_ray_reaper.alive, self.vital)):
            if not self.broken:
                runtimes_started[0] += 1  # its shared values' ObjectRefs are void
            self.broken = True
            raise RuntimeLost(
                "the embedded Ray instance's own processes (raylet, GCS) died; "
                "the next call starts a fresh one"
            )


_runtime = _Runtime()


@dataclass(frozen=True)
class _Prepared:
    """What every batch of one call carries besides its items (see _ray_worker)."""

    head: bytes
    holder: list[Any] | None


@dataclass(eq=False)
class _Slot:
    """One worker of the pool: the node it runs on and its actor."""

    node: str
    actor: Any = None
    dead: bool = False


class _ToActors(Dispatcher):
    """The shared dispatcher, over this pool's actors (one batch running on each)."""

    def __init__(self, pool: RayPool) -> None:
        super().__init__()
        self.pool = pool

    def capacity(self) -> Mapping[Hashable, int]:
        # Never make actors on a runtime that is gone: Ray would start a default
        # instance of its own from this thread (its auto-init), and the next call's
        # ray.init would find it.
        with _runtime.lock:
            if self.pool.where is None or _runtime.broken or not ray.is_initialized():
                raise RuntimeLost("the Ray runtime this pool used is gone; the next call "
                                  "starts a fresh one")  # fmt: skip
            return dict.fromkeys(self.pool.slots(), 1)

    def start(self, worker: Hashable, job: Job) -> None:
        slot: _Slot = worker  # type: ignore[assignment]
        head, holder, items = job.payload
        done = slot.actor.run.remote(head, holder, items).future()
        job.handle = (slot.actor, done)
        # Ray runs this callback on its own thread, which must never block: it only
        # passes the news on to the pool's thread.
        done.add_done_callback(lambda done: self.pool.ended.put((job, done)))

    def worker_lost(self, worker: Hashable, job: Job) -> None:
        slot: _Slot = worker  # type: ignore[assignment]
        if job.handle is not None and slot.actor is job.handle[0]:
            slot.dead = True  # replaced at the next dispatch (on its node, if alive)


class RayPool:
    """The engine side of one RayBackend: its actors and their dispatcher."""

    def __init__(self, workers: int | None, address: str | None) -> None:
        self.requested = workers
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.lock = threading.RLock()
        self.where: str | None = None
        self.nodes: dict[str, int] = {}  # alive node id -> CPUs
        self.nodes_seen = 0.0
        self._slots: list[_Slot] = []
        self.dispatcher = _ToActors(self)
        self.ended: queue.SimpleQueue[tuple[Job, cf.Future[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._bundles: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()
        self._shared: dict[str, Any] = {}  # token -> ObjectRef of a published value
        self._checked = 0.0

    # -- connecting ------------------------------------------------------------------

    @property
    def workers(self) -> int:
        if not self.requested:
            self.connect()
        return self.requested or max(1, sum(self.nodes.values()))

    def connect(self) -> None:
        """Attach to the runtime (starting it if need be); follow a restarted one."""
        if self.where is not None and ray.is_initialized() and not _runtime.broken:
            return
        with self.lock:
            if self.where is not None and ray.is_initialized() and not _runtime.broken:
                return
            self._forget_runtime()
            self.where = _runtime.connect(self, self.address, self.requested or default_workers())
            self.nodes, self.nodes_seen = _alive_nodes(), time.monotonic()
            log.debug("parmap: ray backend on %s, CPUs per node %s", self.where, self.nodes)

    def _forget_runtime(self) -> None:
        """Drop what belonged to a previous Ray runtime (the caller may have restarted it)."""
        self._bundles.clear()
        self._shared.clear()
        self.dispatcher.clear()
        self._slots = []

    def _refresh_nodes(self) -> None:
        """Follow a cluster that gained or lost nodes (between calls, at most every 10 s)."""
        if _runtime.owned or time.monotonic() - self.nodes_seen < _NODES_REFRESH:
            return
        with self.dispatcher.lock:
            self.nodes_seen = time.monotonic()
            nodes = _alive_nodes()
            if nodes != self.nodes and not self.dispatcher.busy():
                self.nodes = nodes
                self._retire(self._slots)
                self._slots = []

    def slots(self) -> list[_Slot]:
        """The workers: started on first use; a dead one is replaced (on its node if alive).
        Called by the dispatcher, with its lock held."""
        size = self.requested or max(1, sum(self.nodes.values()))
        if len(self._slots) != size:
            self._retire(self._slots)
            self._slots = [_Slot(node) for node in _placement(self.nodes, size)]
        for slot in self._slots:
            if slot.actor is None or slot.dead:
                if slot.dead:
                    self._retire([slot])
                    alive = _alive_nodes()
                    slot.node = slot.node if slot.node in alive else next(iter(alive))
                strategy = NodeAffinitySchedulingStrategy(slot.node, soft=False)
                slot.actor = Worker.options(scheduling_strategy=strategy).remote()  # type: ignore[attr-defined]
                slot.dead = False
        return self._slots

    def _retire(self, slots: list[_Slot]) -> None:
        for slot in slots:
            if slot.actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(slot.actor)
                slot.actor = None

    # -- one call ---------------------------------------------------------------------

    def prepare(self, spec: CallSpec) -> _Prepared:
        self.connect()
        self._refresh_nodes()
        blobs = (spec.fn, spec.initializer or b"")
        # the shared values pickled into this spec (a failed earlier call may have left others)
        refs = {t: r for t, r in collected_refs() if any(t.encode() in b for b in blobs)}
        collected_refs().clear()
        if spec.inline and not refs:
            return _Prepared(pickle.dumps((spec, ()), protocol=5), None)
        light = spec if spec.inline else spec.light()
        head = pickle.dumps((light, tuple(sorted(refs))), protocol=5)
        return _Prepared(head, self._bundle(spec, refs))

    def _bundle(self, spec: CallSpec, refs: dict[str, Any]) -> list[Any]:
        """``[ray.put((spec, refs))]``, put once per distinct spec and shares (LRU)."""
        key = (spec.fn_token, spec.init_token, tuple(sorted(refs)))
        with self.lock:
            holder = self._bundles.get(key)
            if holder is None:
                holder = self._bundles[key] = [ray.put((spec, refs))]
                if len(self._bundles) > _BUNDLE_CACHE_SIZE:
                    self._bundles.popitem(last=False)
            else:
                with contextlib.suppress(KeyError):  # released meanwhile (release takes no lock)
                    self._bundles.move_to_end(key)
            return holder

    def submit(self, prepared: _Prepared, items: bytes) -> cf.Future[Any]:
        if self._thread is None:
            with self.lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._report_ended, name="parmap-ray-dispatch", daemon=True
                    )
                    self._thread.start()
        return self.dispatcher.submit((prepared.head, prepared.holder, items))

    def _report_ended(self) -> None:
        """The pool's thread: tell the dispatcher of each batch that ended on Ray's side."""
        while (ended := self.ended.get()) is not None:
            job, done = ended
            try:
                exc = done.exception()
            except BaseException as error:  # cancelled inside Ray: still an outcome
                exc = error
            if exc is None:
                self.dispatcher.finished(job, done.result())
            else:
                self.dispatcher.finished(job, error=exc, lost=isinstance(exc, _CRASHES))

    def wait(self, futures: Collection[cf.Future[Any]], timeout: float | None) -> set[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _WAIT_SLICE if deadline is None else deadline - time.monotonic()
            done, _ = cf.wait(
                futures, timeout=max(0.0, min(left, _WAIT_SLICE)), return_when=cf.FIRST_COMPLETED
            )
            if done or (deadline is not None and time.monotonic() >= deadline):
                return done
            self._check_runtime()

    def _check_runtime(self) -> None:
        """Fail every batch if the embedded instance died under them (every second)."""
        now = time.monotonic()
        if now - self._checked < _HEALTH_EVERY:
            return
        self._checked = now
        try:
            _runtime.check()
        except RuntimeLost as lost:
            self.dispatcher.fail_all(lost)

    def translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, rex.RayTaskError):  # the user's errors come back as records; this
            cause = exc.cause  # is an error of Ray or of parmap's own code on the worker
            if not isinstance(cause, BaseException):
                return exc
            if not isinstance(cause, _CRASHES):
                return cause
            exc = cause
        if isinstance(exc, RuntimeLost):  # the next call starts afresh; this one cannot
            return WorkerCrashedError(str(exc), retryable=False)
        if isinstance(exc, _CRASHES):
            return WorkerCrashedError(_crash_message(exc))
        return exc

    def cancel(self, futures: Collection[cf.Future[Any]], *, stop_running: bool) -> None:
        running = self.dispatcher.cancel(futures, stop_running=stop_running)
        if running:  # a running actor call cannot be interrupted: kill the actor
            self._kill(list(running))  # type: ignore[arg-type]

    def stop_worker(self, future: cf.Future[Any]) -> None:
        """Kill the actor that ran this batch (a thread there runs a timed-out item)."""
        job: Job | None = getattr(future, "_parmap_job", None)
        if job is not None and job.worker is not None:
            self._kill([job.worker])  # type: ignore[list-item]

    def _kill(self, slots: list[_Slot]) -> None:
        """Kill these slots' actors (replaced at the next dispatch) and wait until they are
        gone: ray.kill returns at once, and an actor not yet dead would start the batch it
        holds next."""
        doomed = []
        with self.dispatcher.lock:
            for slot in slots:
                doomed += [job.handle[1] for job in self.dispatcher.held(slot) if job.handle]
                self._retire([slot])
                slot.dead = True
        cf.wait(doomed, timeout=_KILL_WAIT)

    def publish(self, token: str, blob: bytes) -> Locator:
        self.connect()
        ref = self._shared[token] = ray.put(blob)
        return RayLocator(token, ref)

    def release(self, token: str) -> None:
        """Drop the caller's references to a shared value (its handle was collected): the
        ObjectRef and the cached bundles holding it. Ray frees the object once no batch
        holds it either (any thread; never blocks)."""
        self._shared.pop(token, None)
        for key in [k for k in list(self._bundles) if token in k[2]]:
            self._bundles.pop(key, None)

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"ray": ray.__version__, "connected": self.where}
        if self.where is not None and ray.is_initialized():
            facts["workers"] = self.workers
            facts["nodes"] = len(_alive_nodes())
        return facts

    def shutdown(self) -> None:
        with self.dispatcher.lock:
            # The runtime may live on (the caller's own, or another pool's: one per set of
            # options): this pool's actors end here. A broken one is killed whole instead.
            if ray.is_initialized() and not _runtime.broken:
                self._retire(self._slots)
            self._forget_runtime()
            thread, self._thread = self._thread, None
            was_connected, self.where = self.where is not None, None
        if thread is not None:
            self.ended.put(None)
            thread.join(timeout=10)
        if was_connected:
            _runtime.leave(self)


def _alive_nodes() -> dict[str, int]:
    """Alive nodes with CPUs, and how many, the head node first."""
    nodes = {}
    for node in sorted(ray.nodes(), key=lambda n: "node:__internal_head__" not in n["Resources"]):
        cpus = int(node["Resources"].get("CPU", 0)) if node.get("Alive") else 0
        if cpus:
            nodes[node["NodeID"]] = cpus
    return nodes or {ray.get_runtime_context().get_node_id(): 1}


def _placement(nodes: dict[str, int], workers: int) -> list[str]:
    """A node for each of ``workers`` workers: one per CPU, the nodes taking turns."""
    seats = [node for turn in range(max(nodes.values())) for node, cpus in nodes.items()
             if turn < cpus]  # fmt: skip
    return [seats[i % len(seats)] for i in range(workers)]


def _crash_message(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    said = f" (Ray: {type(exc).__name__}: {lines[0] if lines else ''})"
    if isinstance(exc, rex.OutOfMemoryError):
        return (
            "a ray worker was killed by Ray's memory monitor: the node ran low on memory"
            f"{said}. Use fewer workers= or less memory per item"
        )
    if isinstance(exc, (rex.NodeDiedError, rex.LocalRayletDiedError, rex.ActorUnschedulableError)):
        return f"the Ray node running a batch died{said}. Check the cluster's health"
    if isinstance(exc, rex.ObjectLostError):
        return f"data of a batch was lost with the Ray node or process that held it{said}"
    return (
        f"a ray worker process died{said}; Ray reports no exit code or signal. Usual causes: "
        "os._exit() in the function, a crash in a C extension (segmentation fault), or the "
        "kernel's OOM killer when memory runs out (see Ray's python-core-worker-*.log)"
    )
