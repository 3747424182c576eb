"""The Ray backend: a pool of persistent Ray actors, on one machine or a cluster.

Connecting, on the first call::

    ray.is_initialized()          the caller's own runtime: used as is, never shut down
    address= or $RAY_ADDRESS      ray.init(address=...): an existing cluster
    otherwise                     an embedded local instance (see _ray_local): quiet,
                                  loopback-only, num_cpus = workers, reused by later
                                  calls and stopped by parmap.shutdown()

One call::

    prepare(spec)   pickle the call's spec once. A small function (< 64 KiB) rides
                    along with each batch: copying a few KiB costs less than any
                    object-store round trip, and workers unpickle it once (by
                    digest). A large one, or shared values, go to the object
                    store once (ray.put, cached across calls); see _ray_worker
    submit(batch)   queue it; the worker with the fewest batches  ┐ each worker holds
                    takes it, if it holds fewer than two          │ the batch it runs
    (a batch ends)  its worker takes the next queued batch        ┘ and the next one
    wait            short cf.wait slices, so a Ctrl-C is seen at once
    cancel          drop queued batches; with stop_running, kill the actors running
                    the others (a running call cannot be interrupted); the pool
                    replaces them

Why actors rather than one Ray task per batch: a task first leases a worker
from the raylet, an actor call goes straight to its process. On this 2-core
machine a call of 300 cheap items took 1.8-4.5 ms on actors against 4.5-7 ms
on tasks, side by side (benchmarks/bench_ray.py measures the actors).

Why two batches per worker: a worker that gets its next batch only once the
last one has ended idles for a round trip (driver callback, submit, actor)
between batches, about 3.5 ms here while both cores are busy; with the next
batch already queued on the actor, 1.5 ms. The price: a batch queued behind a
slow one waits for it (Ray cannot take back an actor call that waits: a
cancelled one only ends when the running one does), so a straggler delays at
most one more batch. The batching policy keeps that small: its rounds give
every worker one batch of the same size, halving round after round. Measured
on 180 items of 2 ms, the two workers idled 29 ms in all per call, against
42 ms with one batch per worker.

The actors reserve no Ray resources (``num_cpus=0``), so they never block the
caller's own Ray work; there is one per CPU of each node, placed on that node.

Ray's own retries are off (``max_restarts=0``, ``max_task_retries=0``): the
core's ``retries=`` decides. A dead worker, node or object becomes
:class:`parmap.WorkerCrashedError`; Ray does not report a worker's exit code
or signal, so the message names the usual causes instead.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import pickle
import queue
import random
import subprocess
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.exceptions as rex
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from parmap._errors import WorkerCrashedError
from parmap._worker import CallSpec
from parmap.backends import _ray_local
from parmap.backends._base import Backend, Locator, default_workers
from parmap.backends._ray_worker import RayLocator, Worker, collected_refs

__all__ = ["RayBackend"]

log = logging.getLogger("parmap")

_DEPTH = 2  # batches bound to one worker at once: the running one and the next
_WAIT_SLICE = 0.25  # seconds: the longest a Ctrl-C can go unnoticed
_INLINE_LIMIT = 64 * 1024  # a function this small rides along with each batch
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


@dataclass(frozen=True)
class _Prepared:
    """What every batch of one call carries besides its items (see _ray_worker)."""

    head: bytes
    holder: list[Any] | None


@dataclass(eq=False)
class _Slot:
    """One worker of the pool: where it runs, its actor, the batches it holds."""

    node: str
    actor: Any = None
    jobs: list[_Job] = field(default_factory=list)  # running first, then queued on the actor
    dead: bool = False


@dataclass(eq=False)
class _Job:
    """One submitted batch: the future the core waits on, and what to send."""

    future: cf.Future[Any]
    head: bytes
    holder: list[Any] | None
    items: bytes
    slot: _Slot | None = None
    actor: Any = None


class RayBackend(Backend):
    """Runs batches on a pool of persistent Ray actors, one per CPU (see the module doc)."""

    name = "ray"
    batch_overhead: float = 1.5e-3  # measured: ~0.75 ms of wall time per batch, 2 workers

    def __init__(self, workers: int | None = None, **options: Any) -> None:
        super().__init__(workers, **options)
        self._lock = threading.RLock()
        self._owns_ray = False
        self._reaper: subprocess.Popen[bytes] | None = None
        self._connected_to: str | None = None
        self._nodes: dict[str, int] = {}  # alive node id -> CPUs
        self._nodes_seen = 0.0
        self._slots: list[_Slot] = []
        self._queue: deque[_Job] = deque()
        self._ended: queue.SimpleQueue[tuple[_Job, cf.Future[Any]] | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        self._bundles: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()

    @classmethod
    def option_names(cls) -> Collection[str]:
        return ("address",)

    @property
    def workers(self) -> int:
        if not self.requested_workers:
            self._connect()
        return self._size()

    def _size(self) -> int:
        return self.requested_workers or max(1, sum(self._nodes.values()))

    # -- connecting ------------------------------------------------------------------

    def _connect(self) -> None:
        """Attach to a running Ray, connect to a cluster or start a local instance."""
        if self._connected_to is not None and ray.is_initialized():
            return
        with self._lock, _keeping_random_state():
            if self._connected_to is not None and ray.is_initialized():
                return
            self._forget_runtime()
            address = self.options.get("address") or os.environ.get("RAY_ADDRESS") or None
            if ray.is_initialized():
                where = "the running Ray runtime (ray.init() by the caller)"
            elif address:
                with _ray_local.no_sigint_for_children():
                    ray.init(address=address, logging_level=logging.ERROR)
                where = f"the Ray cluster at {address}"
            else:
                _ray_local.stop_reaper(self._reaper)
                self._reaper = _ray_local.start(self.requested_workers or default_workers())
                self._owns_ray = True
                where = "an embedded local Ray instance"
            self._nodes, self._nodes_seen = _alive_nodes(), time.monotonic()
            self._connected_to = where
            log.debug("parmap: ray backend on %s, CPUs per node %s", where, self._nodes)

    def _forget_runtime(self) -> None:
        """Drop what belonged to a previous Ray runtime (the caller may have restarted it)."""
        self._bundles.clear()
        self._slots = []
        for job in self._queue:
            job.future.cancel()
        self._queue.clear()

    def _refresh_nodes(self) -> None:
        """Follow a cluster that gained or lost nodes (between calls, at most every 10 s)."""
        if self._owns_ray or time.monotonic() - self._nodes_seen < _NODES_REFRESH:
            return
        with self._lock:
            self._nodes_seen = time.monotonic()
            nodes = _alive_nodes()
            if nodes != self._nodes and not any(slot.jobs for slot in self._slots):
                self._nodes = nodes
                self._retire(self._slots)
                self._slots = []

    # -- one call ---------------------------------------------------------------------

    def prepare(self, spec: CallSpec) -> _Prepared:
        self._connect()
        self._refresh_nodes()
        blobs = (spec.fn, spec.initializer or b"")
        # the shared values pickled into this spec (a failed earlier call may have left others)
        refs = {t: r for t, r in collected_refs() if any(t.encode() in b for b in blobs)}
        collected_refs().clear()
        shares = tuple(sorted(refs))
        small = len(spec.fn) + len(spec.initializer or b"") <= _INLINE_LIMIT
        if small and not shares:
            return _Prepared(pickle.dumps((spec, ()), protocol=5), None)
        light = spec if small else CallSpec(spec.fn_token, None, spec.star, spec.init_token, None)
        return _Prepared(pickle.dumps((light, shares), protocol=5), self._bundle(spec, refs))

    def _bundle(self, spec: CallSpec, refs: dict[str, Any]) -> list[Any]:
        """``[ray.put((spec, refs))]``, put once per distinct spec and shares (LRU)."""
        key = (spec.fn_token, spec.init_token, tuple(sorted(refs)))
        with self._lock:
            holder = self._bundles.get(key)
            if holder is None:
                holder = self._bundles[key] = [ray.put((spec, refs))]
                if len(self._bundles) > _BUNDLE_CACHE_SIZE:
                    self._bundles.popitem(last=False)
            else:
                self._bundles.move_to_end(key)
            return holder

    def submit(self, prepared: _Prepared, items: bytes) -> cf.Future[Any]:
        job = _Job(cf.Future(), prepared.head, prepared.holder, items)
        job.future._parmap_job = job  # type: ignore[attr-defined]
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch_ended, name="parmap-ray-dispatch", daemon=True
                )
                self._dispatcher.start()
            self._queue.append(job)
            self._dispatch()
        return job.future

    def _dispatch(self) -> None:
        """Hand queued batches to idle workers (with the lock held); never raises.

        If no worker can be had (Ray or the cluster is gone), the queued
        batches fail with the reason instead of waiting forever.
        """
        while self._queue:
            try:
                slot = min(self._pool(), key=lambda slot: len(slot.jobs))
            except Exception as exc:
                failed = self._queue.popleft()
                if failed.future.set_running_or_notify_cancel():
                    failed.future.set_exception(exc)
                continue
            if len(slot.jobs) >= _DEPTH:
                return
            job = self._queue.popleft()
            if job.future.set_running_or_notify_cancel():
                self._start(slot, job)

    def _start(self, slot: _Slot, job: _Job) -> None:
        slot.jobs.append(job)
        job.slot, job.actor = slot, slot.actor
        try:
            done = slot.actor.run.remote(job.head, job.holder, job.items).future()
        except Exception as exc:
            slot.jobs.remove(job)
            job.future.set_exception(exc)
            return
        # Ray runs this callback on its own thread, which must never block: it only
        # passes the news on to our dispatcher thread.
        done.add_done_callback(lambda done: self._ended.put((job, done)))

    def _dispatch_ended(self) -> None:
        """The dispatcher thread: as each batch ends, its worker takes the next one."""
        while (ended := self._ended.get()) is not None:
            job, done = ended
            try:
                exc = done.exception()
            except BaseException as error:  # cancelled inside Ray: still an outcome
                exc = error
            with self._lock:
                slot = job.slot
                assert slot is not None
                if job in slot.jobs:
                    slot.jobs.remove(job)
                if isinstance(exc, _CRASHES) and slot.actor is job.actor:
                    slot.dead = True
                self._dispatch()
            if exc is None:
                job.future.set_result(done.result())
            else:
                job.future.set_exception(exc)

    def _pool(self) -> list[_Slot]:
        """The workers: started on first use; a dead one is replaced (on its node if alive)."""
        if len(self._slots) != self._size():
            self._retire(self._slots)
            self._slots = [_Slot(node) for node in _placement(self._nodes, self._size())]
        for slot in self._slots:
            if slot.actor is None or slot.dead:
                if slot.dead:
                    self._retire([slot])
                    alive = _alive_nodes()
                    slot.node = slot.node if slot.node in alive else next(iter(alive))
                strategy = NodeAffinitySchedulingStrategy(slot.node, soft=False)
                slot.actor = Worker.options(scheduling_strategy=strategy).remote()  # type: ignore[attr-defined]
                slot.dead, slot.jobs = False, []
        return self._slots

    def _retire(self, slots: list[_Slot]) -> None:
        for slot in slots:
            if slot.actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(slot.actor)
                slot.actor = None

    def wait(self, futures: Collection[cf.Future[Any]], timeout: float | None) -> set[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _WAIT_SLICE if deadline is None else deadline - time.monotonic()
            done, _ = cf.wait(
                futures, timeout=max(0.0, min(left, _WAIT_SLICE)), return_when=cf.FIRST_COMPLETED
            )
            if done or (deadline is not None and time.monotonic() >= deadline):
                return done

    def translate(self, exc: BaseException, future: cf.Future[Any] | None) -> BaseException:
        if isinstance(exc, rex.RayTaskError):  # the user's errors come back as records; this
            cause = exc.cause  # is an error of Ray or of parmap's own code on the worker
            if not isinstance(cause, BaseException):
                return exc
            if not isinstance(cause, _CRASHES):
                return cause
            exc = cause
        if isinstance(exc, _CRASHES):
            return WorkerCrashedError(_crash_message(exc))
        return exc

    def cancel(self, futures: Collection[cf.Future[Any]], *, stop_running: bool) -> None:
        with self._lock:
            for future in futures:
                job: _Job | None = getattr(future, "_parmap_job", None)
                if job is None or future.cancel() or not stop_running:
                    continue  # dropped from the queue, or handed to a worker and left to end
                slot = job.slot
                if slot is not None and slot.jobs and slot.jobs[0] is job:
                    self._retire([slot])  # a running actor call cannot be interrupted
                    slot.dead, slot.jobs = True, []
            self._queue = deque(job for job in self._queue if not job.future.cancelled())

    def publish(self, token: str, blob: bytes) -> Locator:
        self._connect()
        return RayLocator(token, ray.put(blob))

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"ray": ray.__version__, "connected": self._connected_to}
        if self._connected_to is not None and ray.is_initialized():
            facts["workers"] = self.workers
            facts["nodes"] = len(_alive_nodes())
        return facts

    def shutdown(self) -> None:
        with self._lock:
            if ray.is_initialized() and not self._owns_ray:  # the caller's Ray lives on
                self._retire(self._slots)
            self._forget_runtime()
            owned, self._owns_ray = self._owns_ray, False
            self._connected_to = None
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            self._ended.put(None)
            dispatcher.join(timeout=10)
        with self._lock:
            if owned and ray.is_initialized():
                ray.shutdown()
            _ray_local.stop_reaper(self._reaper)
            self._reaper = None


@contextlib.contextmanager
def _keeping_random_state() -> Iterator[None]:
    """Leave the caller's ``random`` sequence as it was: starting Ray draws from it,
    and a seeded run (DEAP) must give the same results on every backend."""
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


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
