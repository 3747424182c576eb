"""The Ray backend: batches run as Ray tasks, on one machine or a cluster.

Connecting, on the first call::

    ray.is_initialized()          the caller's own runtime: used as is, never shut down
    address= or $RAY_ADDRESS      ray.init(address=...): an existing cluster
    otherwise                     an embedded local instance, started quietly
                                  (num_cpus = workers, no dashboard), reused by
                                  later calls and stopped by parmap.shutdown()

One call::

    prepare(spec)   pickle the call's spec once. A small function (< 64 KiB) rides
                    along with each task: copying a few KiB is cheaper than any
                    object-store round trip, and workers unpickle it once (by
                    digest). A large one, or shared values, go to the object
                    store once (ray.put, cached across calls); tasks carry the
                    ref nested in a list, so Ray does not fetch it for them: a
                    worker fetches it only when it lacks something
    submit(batch)   _execute.remote(head, [ref] or None, items) -> ObjectRef.future()
    wait            short cf.wait slices, so Ctrl-C is seen at once (a signal may
                    land on one of Ray's threads, leaving a plain wait blocked)
    cancel          ray.cancel(force=stop_running): force kills the running worker

``parmap.share()`` values go to the object store once (``publish``); each
worker fetches a value once and caches it. Ray's own task retries are off
(``max_retries=0``): ``retries=`` is the core's. A dead worker, node or object
becomes :class:`parmap.WorkerCrashedError`; Ray does not report the worker's
exit code, so the message names the likely causes instead.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import ray
import ray.exceptions as rex

from parmap import _worker
from parmap._errors import WorkerCrashedError
from parmap._serialization import loads
from parmap._worker import CallSpec, run_batch
from parmap.backends import _ray_reaper
from parmap.backends._base import Backend, Locator, default_workers

__all__ = ["RayBackend", "RayLocator"]

log = logging.getLogger("parmap")

_WAIT_SLICE = 0.25  # seconds; the longest a Ctrl-C waits to be noticed
_PREPARED_CACHE_SIZE = 8
_INLINE_LIMIT = (
    64 * 1024
)  # bytes of function that ride along with each task (Ray inlines < 100 KiB)
_CRASHES = (
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.LocalRayletDiedError,
    rex.OutOfMemoryError,
    rex.ObjectLostError,  # OwnerDiedError, ObjectReconstructionFailedError...
    rex.RayActorError,
    rex.RaySystemError,
)

# ---------------------------------------------------------------- worker side

_batch_refs: dict[str, Any] = {}  # share() token -> ObjectRef, while a batch runs


def _execute(head: bytes, holder: list[Any] | None, items: bytes) -> bytes:
    """The Ray task: run one batch; fetch the call's bundle only if this worker lacks it."""
    spec, shares = pickle.loads(head)
    refs: dict[str, Any] = {}
    if holder is not None and _needs_bundle(spec, shares):
        spec, refs = ray.get(holder[0])
    _batch_refs.update(refs)
    try:
        return run_batch(spec, items)
    finally:
        for token in refs:
            _batch_refs.pop(token, None)


def _needs_bundle(spec: CallSpec, shares: tuple[str, ...]) -> bool:
    """Whether this worker lacks the function, the initializer's run or a shared value."""
    return (
        (spec.fn is None and spec.fn_token not in _worker._functions)
        or (
            spec.init_token is not None
            and spec.initializer is None
            and spec.init_token not in _worker._initialized
        )
        or any(token not in _worker.shared_values for token in shares)
    )


_remote_execute = ray.remote(max_retries=0, num_cpus=1)(_execute)


class RayLocator(Locator):
    """A ``parmap.share()`` value in Ray's object store.

    In the caller it holds the ObjectRef; pickled into a function it becomes
    its token alone, and the call hands the ref to Ray alongside (so Ray
    counts the reference and frees the value when no call needs it).
    """

    def __init__(self, token: str, ref: Any = None) -> None:
        self.token = token
        self.ref = ref

    def __reduce__(self) -> tuple[Any, ...]:
        if self.ref is not None:
            _collected_refs().append((self.token, self.ref))
        return (RayLocator, (self.token,))

    def load(self) -> Any:
        ref = self.ref if self.ref is not None else _batch_refs.get(self.token)
        if ref is None:
            raise RuntimeError(
                f"the parmap.share() value {self.token[:8]} is not available on this Ray "
                "worker: read handle.value inside the mapped function or the initializer"
            )
        return loads(ray.get(ref))


_local = threading.local()


def _collected_refs() -> list[tuple[str, Any]]:
    refs: list[tuple[str, Any]] | None = getattr(_local, "refs", None)
    if refs is None:
        refs = _local.refs = []
    return refs


# ---------------------------------------------------------------- caller side


@dataclass(frozen=True)
class _Prepared:
    """What every task of one call carries besides its items.

    ``head`` is the pickled ``(CallSpec, share tokens)``: the whole spec when
    the function is small, else the spec without the function's bytes.
    ``holder`` is ``[ObjectRef]`` of ``(whole spec, share refs)`` when a
    worker may have to fetch something (a large function, shared values),
    else None. The ref is nested in a list so Ray passes it without fetching.
    """

    head: bytes
    holder: list[Any] | None


class RayBackend(Backend):
    """Runs each batch as a Ray task (``parmap._worker.run_batch``)."""

    name = "ray"
    batch_overhead: ClassVar[float] = 2e-3

    def __init__(self, workers: int | None = None, **options: Any) -> None:
        super().__init__(workers, **options)
        self._lock = threading.RLock()
        self._owns_ray = False
        self._reaper: subprocess.Popen[bytes] | None = None
        self._connected_to: str | None = None
        self._cpus = 0
        self._prepared: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()

    @classmethod
    def option_names(cls) -> Collection[str]:
        return ("address",)

    # -- connecting

    def _connect(self) -> None:
        """Attach to a running Ray, connect to a cluster or start a local instance."""
        if ray.is_initialized() and self._connected_to is not None:
            return
        with self._lock:
            if ray.is_initialized() and self._connected_to is not None:
                return
            self._prepared.clear()
            address = self.options.get("address") or os.environ.get("RAY_ADDRESS") or None
            if ray.is_initialized():
                where = "the running Ray runtime (ray.init() by the caller)"
            elif address:
                with _no_sigint_for_children():
                    ray.init(address=address, logging_level=logging.ERROR)
                where = f"the Ray cluster at {address}"
            else:
                self._start_local()
                where = "an embedded local Ray instance"
            self._cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            self._connected_to = where
            log.debug("parmap: ray backend on %s, %d CPUs", where, self._cpus)

    def _start_local(self) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self._stop_reaper()
        before = _children()
        with _no_sigint_for_children(), _loopback_only():
            ray.init(
                address="local",  # a new instance, even if `ray start` runs on this machine
                num_cpus=self.requested_workers or default_workers(),
                include_dashboard=False,
                logging_level=logging.ERROR,
            )
        self._owns_ray = True
        self._reaper = _start_reaper(_children() - before)

    def _stop_reaper(self) -> None:
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            with contextlib.suppress(OSError):
                reaper.stdin.close()  # type: ignore[union-attr]
            try:
                reaper.wait(timeout=_ray_reaper._KILL_DEADLINE + 5)
            except subprocess.TimeoutExpired:
                reaper.kill()
                reaper.wait()

    @property
    def workers(self) -> int:
        if self.requested_workers:
            return self.requested_workers
        self._connect()
        return self._cpus

    # -- one call

    def prepare(self, spec: CallSpec) -> _Prepared:
        self._connect()
        refs = dict(_collected_refs())
        _collected_refs().clear()
        shares = tuple(sorted(refs))
        small = len(spec.fn) + len(spec.initializer or b"") <= _INLINE_LIMIT
        if small and not shares:
            return _Prepared(pickle.dumps((spec, ()), protocol=5), None)
        light = spec if small else CallSpec(spec.fn_token, None, spec.star, spec.init_token, None)
        head = pickle.dumps((light, shares), protocol=5)
        return _Prepared(head, self._bundle(spec, refs))

    def _bundle(self, spec: CallSpec, refs: dict[str, Any]) -> list[Any]:
        """``[ray.put((spec, refs))]``, put once per distinct spec and shares (LRU)."""
        key = (spec.fn_token, spec.init_token, tuple(sorted(refs)))
        with self._lock:
            holder = self._prepared.get(key)
            if holder is None:
                holder = self._prepared[key] = [ray.put((spec, refs))]
                if len(self._prepared) > _PREPARED_CACHE_SIZE:
                    self._prepared.popitem(last=False)
            else:
                self._prepared.move_to_end(key)
            return holder

    def submit(self, prepared: _Prepared, items: bytes) -> cf.Future[Any]:
        ref = _remote_execute.remote(prepared.head, prepared.holder, items)
        future = ref.future()
        future._parmap_ref = ref  # type: ignore[attr-defined]
        return future

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
        if isinstance(exc, rex.RayTaskError):
            cause = exc.cause if isinstance(exc.cause, BaseException) else None
            if cause is None:
                return exc
            if not isinstance(cause, _CRASHES):
                return cause
            exc = cause
        if isinstance(exc, _CRASHES):
            return WorkerCrashedError(_crash_message(exc))
        return exc

    def cancel(self, futures: Collection[cf.Future[Any]], *, stop_running: bool) -> None:
        for future in futures:
            ref = getattr(future, "_parmap_ref", None)
            if ref is None or future.done():
                continue
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=stop_running)

    def publish(self, token: str, blob: bytes) -> Locator:
        self._connect()
        return RayLocator(token, ray.put(blob))

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"ray": ray.__version__, "connected": self._connected_to}
        if self._connected_to is not None:
            facts["workers"] = self.workers
            facts["nodes"] = sum(1 for node in ray.nodes() if node.get("Alive"))
        return facts

    def shutdown(self) -> None:
        with self._lock:
            self._prepared.clear()
            owned, self._owns_ray = self._owns_ray, False
            self._connected_to = None
            if owned and ray.is_initialized():
                ray.shutdown()
            self._stop_reaper()


def _crash_message(exc: BaseException) -> str:
    detail = str(exc).strip().splitlines()
    said = f" (Ray: {type(exc).__name__}: {detail[0] if detail else ''})"
    if isinstance(exc, rex.OutOfMemoryError):
        return (
            "a ray worker was killed by Ray's memory monitor: the node ran low on memory"
            f"{said}. Use fewer workers= or less memory per item"
        )
    if isinstance(exc, (rex.NodeDiedError, rex.LocalRayletDiedError)):
        return f"the Ray node running a batch died{said}. Check the cluster's health"
    if isinstance(exc, rex.ObjectLostError):
        return f"data of a batch was lost with the Ray node or process that held it{said}"
    return (
        f"a ray worker process died{said}: a call to os._exit(), a crash in a C extension "
        "(segmentation fault), or the kernel's OOM killer are the usual causes; "
        "Ray's worker logs (python-core-worker-*.log) say more"
    )


def _children() -> set[_ray_reaper.Process]:
    """This process's children that run Ray's programs."""
    found = set()
    for pid, start in _ray_reaper.children(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                if b"/ray/" in file.read():
                    found.add((pid, start))
        except OSError:
            pass
    return found


def _start_reaper(started: set[_ray_reaper.Process]) -> subprocess.Popen[bytes] | None:
    """Start the process that stops these Ray processes when this one dies (Linux)."""
    if not started or not os.path.isdir("/proc"):
        return None
    roots = [f"{pid}:{start}" for pid, start in sorted(started)]
    return subprocess.Popen(
        [sys.executable, "-I", _ray_reaper.__file__, *roots],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make the embedded instance listen and talk on 127.0.0.1 only.

    By default Ray binds its servers to every interface and advertises the
    machine's network address, even for a single-machine instance that nobody
    else should reach. Ray's own single-node mode (ray-project/ray#18730, used
    on macOS and Windows) keeps to the loopback address; it is selected by
    ``$RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which the processes Ray starts read
    from their environment and this process read when it imported Ray.
    """
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        yield  # another Ray layout: keep its defaults
        return
    saved_env = os.environ.get(_SINGLE_NODE_VAR)
    saved_flag = constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_NODE_VAR] = "0"
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_SINGLE_NODE_VAR, None)
        else:
            os.environ[_SINGLE_NODE_VAR] = saved_env


_SINGLE_NODE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _no_sigint_for_children() -> Iterator[None]:
    """Block SIGINT in this thread while Ray starts its processes and threads.

    Ray's helper processes (log monitor, dashboard, autoscaler monitor) run in
    the caller's process group, so a Ctrl-C at the terminal would kill them
    and silence the workers' output for the rest of the session. Children and
    threads inherit the blocked signal mask: they never see SIGINT, and the
    caller's own Ctrl-C goes to its main thread, where it belongs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
