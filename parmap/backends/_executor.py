"""Your own ``concurrent.futures.Executor`` as the backend: ``backend=executor``.

parmap submits one task per batch to it, with its own batching, order,
errors, progress and retries on top; the executor stays yours: parmap never
starts, stops or shuts it down (``parmap.shutdown()`` leaves it alone)::

    parmap's core                      ExecutorBackend
    ─────────────                      ───────────────
    batches, window, order,            a ThreadPoolExecutor: submit(run_here, spec, items),
    retries, timeouts, progress          live objects, no pickling (as the threads backend)
                                       any other executor: submit(run_batch, spec, blob),
                                         the function by value (cloudpickle), so any start
                                         method, loky, mpi4py's MPIPoolExecutor, Dask's
                                         client.get_executor() work alike
                                       a worker that died (BrokenExecutor, a lost Dask
                                         worker) -> WorkerCrashedError
                                       an executor shut down -> an error: pass a live one

Each executor is its own backend, known by its identity for as long as it
lives (:meth:`ExecutorBackend.adopting` makes a class per executor, holding it
by a weak reference); the registry forgets it when it is collected.

What parmap reads of an executor that ``concurrent.futures`` does not
document is feature-checked, with a fallback: its worker count
(``_max_workers``; else the CPUs here), for the number of batches in flight.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import re
import types
import weakref
from collections.abc import Callable, Collection
from typing import Any, ClassVar

from parmap._errors import WorkerCrashedError, describe_exit
from parmap._worker import CallSpec, run_batch
from parmap.backends._base import Backend, default_workers
from parmap.backends._process import _crash_exitcode
from parmap.backends._threads import (
    StopFlag,
    done_here,
    notice_running,
    on_pool_thread,
    run_here,
    stop_batches,
)

__all__ = ["ExecutorBackend"]

# Errors of executors' own that mean "a worker was lost with its task", by class name
# (their packages are not imported here): Dask's scheduler gives up on a task whose
# workers died; loky's TerminatedWorkerError is a BrokenExecutor already.
_LOST_WORKER_ERRORS = ("KilledWorker",)


class ExecutorBackend(Backend):
    """A ``concurrent.futures.Executor`` the caller owns, run through parmap's core.

    Pass the executor as ``backend=`` (or ``parmap.config(backend=...)``); parmap
    makes the subclass for it (:meth:`adopting`). ``workers=`` sets how many
    batches parmap keeps in flight (default: the executor's worker count).
    """

    name = "executor"
    auto = False  # an executor is chosen by passing it, never by auto
    stops_running = False  # parmap does not stop the workers of an executor it does not own
    startup_seconds = 0.0
    executor_type: ClassVar[str] = "Executor"
    _held: ClassVar[tuple[Callable[[], cf.Executor | None], ...]] = ()  # (a weak reference,)

    @classmethod
    def adopting(cls, executor: cf.Executor, name: str) -> type[ExecutorBackend]:
        """The backend class for one executor, which it holds by a weak reference
        (a strong one if the executor has no weak references: then until
        ``parmap.shutdown()``)."""
        ref: Callable[[], cf.Executor | None]
        try:
            ref = weakref.ref(executor)
        except TypeError:
            ref = functools.partial(_same, executor)
        local = isinstance(executor, cf.ThreadPoolExecutor)  # live objects: no pickling
        facts = {
            "name": name,
            "serializes": not local,
            "batch_overhead": 5e-5 if local else _batch_overhead(executor),
            "executor_type": type(executor).__qualname__,
            "_held": (ref,),
        }
        return type(f"ExecutorBackend[{type(executor).__qualname__}]", (cls,), facts)

    def _ref(self) -> cf.Executor | None:
        return self._held[0]() if self._held else None

    def executor(self) -> cf.Executor:
        """The executor, while it lives."""
        executor = self._ref()
        if executor is None:
            raise RuntimeError(f"the {self.executor_type} passed as backend= no longer exists")
        return executor

    def __init__(self, workers: int | None = None, **options: Any) -> None:
        super().__init__(workers, **options)
        self._processes: dict[Any, Any] = {}

    @property
    def workers(self) -> int:
        if self.requested_workers:
            return self.requested_workers
        count = getattr(self._ref(), "_max_workers", None)  # undocumented: feature-checked
        return count if isinstance(count, int) and count > 0 else default_workers()

    def submit(self, prepared: CallSpec, items: Any) -> cf.Future[Any]:
        if not self.serializes:
            if on_pool_thread():  # nested on one of its threads: they may all be waiting
                return done_here(prepared, items)
            stop = StopFlag()
            local: cf.Future[Any] = self.executor().submit(run_here, prepared, items, stop)
            local._parmap_stop = stop  # type: ignore[attr-defined]
            return local
        executor = self.executor()
        future: cf.Future[Any] = executor.submit(run_batch, prepared, items)
        # A local process pool's processes (undocumented, feature-checked): their exit
        # codes say how a worker died, should one break the pool.
        self._processes.update(getattr(executor, "_processes", None) or {})
        return future

    def translate(self, exc: BaseException, future: cf.Future[Any] | None) -> BaseException:
        what = f"the {self.executor_type} passed as backend="
        if isinstance(exc, cf.BrokenExecutor) or type(exc).__name__ in _LOST_WORKER_ERRORS:
            code = self._exitcode(exc)
            how = describe_exit(code) if code is not None else f"was lost ({_first_line(exc)})"
            return WorkerCrashedError(
                f"a worker of {what} {how}; a broken executor takes no more work: pass a new "
                "one (parmap does not restart an executor it does not own)",
                exitcode=code,
            )
        if future is None and isinstance(exc, RuntimeError):  # submit() refused: shut down
            return RuntimeError(
                f"{what} takes no new work ({exc}): it was shut down. Pass a live executor "
                "(parmap never shuts down an executor you pass; keep it open while you map)"
            )
        if isinstance(exc, cf.CancelledError):  # cancelled by its owner, not by parmap
            return WorkerCrashedError(f"{what} cancelled a batch (was it shut down?)")
        return exc

    def _exitcode(self, exc: BaseException) -> int | None:
        """The exit code of the worker that broke the executor: named in loky's error
        ("... exit codes of the workers are {EXIT(3)}"), else read from the processes
        seen at submit (a standard-library pool), else unknown."""
        named = str(exc).rpartition("exit codes of the workers are")[2]
        codes = re.findall(r"\((-?\d+)\)", named)
        if codes:
            return int(codes[0])
        if not self._processes:
            return None
        manager = getattr(self._ref(), "_executor_manager_thread", None)
        seen = types.SimpleNamespace(
            _parmap_processes=self._processes, _executor_manager_thread=manager
        )
        return _crash_exitcode(seen)  # type: ignore[arg-type]

    def cancel(self, futures: Collection[cf.Future[Any]], *, stop_running: bool) -> None:
        running = stop_batches(futures)
        if running and stop_running:
            what = "" if not self.serializes else "run to their end (parmap does not stop them)"
            notice_running(running, f"the {self.executor_type} you passed", what)

    def describe(self) -> dict[str, Any]:
        return {"workers": self.workers, "executor": repr(self._ref())}

    def shutdown(self) -> None:
        """Nothing to stop: the executor is the caller's."""


def _batch_overhead(executor: cf.Executor) -> float:
    """A warm batch's round trip: a local process pool's, else (MPI, a cluster) 1 ms."""
    return 2e-4 if isinstance(executor, cf.ProcessPoolExecutor) else 1e-3


def _same(executor: cf.Executor) -> cf.Executor:
    return executor


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
