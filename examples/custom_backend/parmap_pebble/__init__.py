"""parmap on pebble's process pool: a backend written only against ``parmap.backends``.

pebble (https://pypi.org/project/Pebble/) runs functions in a pool of worker
processes and reports a worker that died as ``ProcessExpired`` with its exit
code; a dead worker is replaced and the pool goes on. parmap does not ship it:
this package adds it, and parmap finds it through the ``parmap.backends`` entry
point in its ``pyproject.toml``.

What the backend does, and what it leaves to parmap::

    parmap's core                          this backend
    ─────────────                          ────────────
    batching, window, order, retries,      submit(): one pebble task per batch,
    timeouts, progress, error notes        running parmap.backends.run_batch
                                           translate(): ProcessExpired ->
                                             parmap.WorkerCrashedError
                                           cancel(): drop what has not started;
                                             to stop running work, stop the pool
                                           shutdown(): stop the pool
    (stop_worker: the default, shutdown(), stops a worker left running an item
     that timed out, and the next batch starts a fresh pool)
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import threading
import weakref
from collections.abc import Collection
from concurrent.futures.process import BrokenProcessPool
from types import MappingProxyType
from typing import Any

from parmap import WorkerCrashedError
from parmap.backends import Backend, CallSpec, describe_exit, prepare_pool_worker, run_batch

__all__ = ["PebbleBackend"]


class PebbleBackend(Backend):
    """Batches as tasks of a pebble ``ProcessPool`` (started on first use, kept for later calls)."""

    name = "pebble"
    batch_overhead = 3e-4  # seconds per batch round trip, measured warm on 2 cores
    startup_seconds = 0.3  # the pool's first call, for auto before calibration
    # auto's conservative constants until `parmap bench --calibrate` measures this machine
    default_model = MappingProxyType(
        {"fixed": 1.5e-3, "per_item": 2e-6, "per_batch": 4e-4, "work_factor": 1.1}
    )

    def __init__(self, workers: int | None = None, **options: Any) -> None:
        super().__init__(workers, **options)
        self._pool: Any = None
        self._futures: weakref.WeakSet[cf.Future[Any]] = weakref.WeakSet()  # the pool's
        self._lock = threading.Lock()

    def _running_pool(self) -> Any:
        """The pool, started on first use and after a stop."""
        with self._lock:
            if self._pool is None or not self._pool.active:
                from pebble import ProcessPool  # the engine is imported when first used

                self._pool = ProcessPool(
                    max_workers=self.workers,
                    initializer=prepare_pool_worker,  # ignore Ctrl-C; exit with the caller
                    initargs=(os.getpid(),),
                )
            return self._pool

    def submit(self, prepared: CallSpec, items: bytes) -> cf.Future[Any]:
        future = self._running_pool().schedule(run_batch, args=(prepared, items))
        self._futures.add(future)
        return future

    def translate(self, exc: BaseException, future: cf.Future[Any] | None) -> BaseException:
        from pebble import ProcessExpired

        # A lost batch must become WorkerCrashedError: that is what retries= resends.
        if isinstance(exc, ProcessExpired):  # its worker died
            how = describe_exit(exc.exitcode)  # "was killed by SIGKILL (-9): often ... OOM"
            return WorkerCrashedError(f"a pebble worker process {how}", exitcode=exc.exitcode)
        if isinstance(exc, BrokenProcessPool):  # the pool was stopped (see _stop)
            return WorkerCrashedError("a batch was lost when its pebble pool stopped")
        return exc

    def cancel(self, futures: Collection[cf.Future[Any]], *, stop_running: bool) -> None:
        for future in futures:
            if not future.running():  # pebble would stop a running task's process
                future.cancel()
        if stop_running:  # a running Python function cannot be interrupted: stop the pool
            self._stop()

    def describe(self) -> dict[str, Any]:
        return {"workers": self.workers, "started": self._pool is not None}

    def shutdown(self) -> None:
        self._stop()

    def _stop(self) -> None:
        """Stop the pool and its processes; the next batch starts a fresh one."""
        with self._lock:
            pool, self._pool = self._pool, None
            futures, self._futures = list(self._futures), weakref.WeakSet()
        if pool is not None:
            pool.stop()
            pool.join()  # its processes are gone: no stopped batch starts another item
        for future in futures:  # pebble may leave a stopped pool's futures pending: a
            if not future.done():  # crash must never become a hang, so fail them here
                with contextlib.suppress(cf.InvalidStateError):
                    future.set_exception(BrokenProcessPool("the pebble pool was stopped"))
