"""What the two local process-pool backends (multiprocessing, loky) share.

The pool starts on the first batch and lives until ``parmap.shutdown()``.
A worker that dies breaks the pool; the error names its exit code or signal,
and the next batch starts a fresh pool. Stopping running work (timeout,
Ctrl-C) kills the pool's processes: a Python function cannot be interrupted.
Workers ignore SIGINT and exit by themselves if the caller dies.

``parmap.share()`` values are files in a directory of the caller's own, in
/dev/shm (memory) where it can: a file is deleted when its handle is collected,
the directory at shutdown or on SIGTERM, and a directory whose caller was
SIGKILLed by the next caller that makes one (``_owned``).
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Collection
from concurrent.futures.process import BrokenProcessPool
from types import MappingProxyType
from typing import Any

from parmap._errors import WorkerCrashedError, describe_exit
from parmap._serialization import loads
from parmap._worker import CallSpec, Outcome, run_batch
from parmap.backends._base import Backend, Locator
from parmap.backends._owned import forget_on_sigterm, make_owned_dir, remove_on_sigterm

__all__ = ["SHARED_PREFIX", "FileLocator", "ProcessPoolBackend"]

# share() values live in <tmp>/parmap-shared-<pid>-<start>-<random>/ (see _owned)
SHARED_PREFIX = "parmap-shared-"


class FileLocator(Locator):
    """A shared value pickled once to a file that each worker reads once."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> Any:
        with open(self.path, "rb") as file:
            return loads(file.read())


class ProcessPoolBackend(Backend):
    """A backend over a ``concurrent.futures``-style process pool."""

    batch_overhead: float = 2e-4
    startup_seconds = 0.5
    # Measured on a 2-core machine, then rounded up so that auto errs towards serial.
    default_model = MappingProxyType(
        {"fixed": 1.5e-3, "per_item": 2e-6, "per_byte": 5e-9, "per_batch": 3e-4, "work_factor": 1.1}
    )

    def __init__(self, workers: int | None = None, **options: Any) -> None:
        super().__init__(workers, **options)
        self._executor: cf.Executor | None = None
        self._lock = threading.Lock()
        self._shared_dir: str | None = None

    @abc.abstractmethod
    def _new_executor(self) -> cf.Executor:
        """Create the pool; its initializer must be ``prepare_pool_worker(os.getpid())``."""

    def _pool(self) -> cf.Executor:
        with self._lock:
            if self._executor is None:
                self._executor = self._new_executor()
            return self._executor

    def submit(self, prepared: CallSpec, items: bytes) -> cf.Future[Any]:
        pool = self._pool()
        try:
            future = pool.submit(run_batch, prepared, items)
        except (BrokenProcessPool, RuntimeError) as exc:  # broken or shut down: start afresh
            if "bootstrapping phase" in str(exc):  # the standard library's own words
                raise RuntimeError(_IN_A_STARTING_WORKER) from None
            self._discard(pool)
            pool = self._pool()
            future = pool.submit(run_batch, prepared, items)
        # Remember each pool's processes: their exit codes explain a crash later.
        pool.__dict__.setdefault("_parmap_processes", {}).update(getattr(pool, "_processes", {}))
        future._parmap_pool = pool  # type: ignore[attr-defined]
        if not getattr(pool, "_parmap_ran", False):
            future.add_done_callback(_note_ran)
        return future

    def translate(self, exc: BaseException, future: cf.Future[Any] | None) -> BaseException:
        pool = getattr(future, "_parmap_pool", None)
        stopped = getattr(pool, "_parmap_stopped", False)
        lost = f"a batch was lost when parmap stopped its {self.name} pool"
        if stopped and not isinstance(exc, BrokenProcessPool):
            return WorkerCrashedError(lost)
        if not isinstance(exc, BrokenProcessPool):
            return exc
        exitcode = self._exitcode(exc, pool)
        if stopped and exitcode == -signal.SIGKILL:  # parmap's own kill, not the kernel's
            return WorkerCrashedError(lost)
        if pool is not None:
            self._discard(pool)
        if not getattr(pool, "_parmap_ran", False) and self._reruns_main() and exitcode == 1:
            return WorkerCrashedError(_MAIN_GUARD_HINT.format(self.name), exitcode=1,
                                      retryable=False)  # fmt: skip
        message = f"a {self.name} worker process {describe_exit(exitcode)}"
        return WorkerCrashedError(message, exitcode=exitcode)

    def _reruns_main(self) -> bool:
        """Whether this pool's workers import the caller's main script again as they start
        (the standard library's 'spawn' and 'forkserver' do; loky's workers do not)."""
        return False

    def _exitcode(self, exc: BaseException, pool: cf.Executor | None) -> int | None:
        """The exit code (negative: signal) of the worker whose death broke ``pool``."""
        return _crash_exitcode(pool)

    def cancel(self, futures: Collection[cf.Future[Any]], *, stop_running: bool) -> None:
        running = [f for f in futures if not f.cancel() and not f.done()]
        if not stop_running:
            return
        pools = {id(p): p for p in (getattr(f, "_parmap_pool", None) for f in running) if p}
        for pool in pools.values():
            self._stop(pool)

    def stop_worker(self, future: cf.Future[Any], outcome: Outcome) -> None:
        """Kill the pool that ran the batch (a worker's death breaks the whole pool anyway);
        the next batch starts a fresh one."""
        pool: cf.Executor | None = getattr(future, "_parmap_pool", None)
        if pool is not None:
            self._stop(pool)

    def _stop(self, pool: cf.Executor) -> None:
        """Kill ``pool`` now; its batches not done are lost (see :meth:`translate`)."""
        with self._lock:
            if self._executor is pool:
                self._executor = None
        pool._parmap_stopped = True  # type: ignore[attr-defined]
        self._kill(pool)

    def _kill(self, pool: cf.Executor) -> None:
        """Stop a pool now, killing its processes."""
        processes = list(_processes(pool))
        for process in processes:
            if process.exitcode is None:
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5.0)

    def _shutdown(self, pool: cf.Executor) -> None:
        """Stop a pool after the work it holds is done."""
        pool.shutdown(wait=True, cancel_futures=True)

    def _discard(self, pool: cf.Executor) -> None:
        with self._lock:
            if self._executor is pool:
                self._executor = None
        pool.shutdown(wait=False)

    def publish(self, token: str, blob: bytes) -> Locator:
        with self._lock:
            if self._shared_dir is None:
                shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
                self._shared_dir = make_owned_dir(shm, SHARED_PREFIX)
                remove_on_sigterm(self._shared_dir)
            path = os.path.join(self._shared_dir, f"{token}.pkl")
        with open(path, "wb") as file:
            file.write(blob)
        return FileLocator(path)

    def release(self, token: str) -> None:
        shared = self._shared_dir
        if shared is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(shared, f"{token}.pkl"))

    def describe(self) -> dict[str, Any]:
        return {"workers": self.workers, "started": self._executor is not None}

    def shutdown(self) -> None:
        with self._lock:
            pool, self._executor = self._executor, None
            shared, self._shared_dir = self._shared_dir, None
        if pool is not None:
            self._shutdown(pool)
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
            forget_on_sigterm(shared)


_MAIN_GUARD_HINT = (
    "a {} worker process exited with code 1 while it started, before any batch ran. Each "
    "worker imports your main script again as it starts: if the script calls parmap when "
    "imported, every worker does too, and fails (the workers' tracebacks above say so). "
    "Put the call under `if __name__ == \"__main__\":`, or use backend='loky', "
    "whose workers do not re-run the script"
)


_IN_A_STARTING_WORKER = (
    "parmap was called while this worker process imported the main script, as it does when "
    'it starts: put the script\'s parmap calls under `if __name__ == "__main__":`'
)


def _note_ran(future: cf.Future[Any]) -> None:
    """A batch came back from the pool: its workers start (a later death is not a start-up's)."""
    if not future.cancelled() and future.exception() is None:
        future._parmap_pool._parmap_ran = True  # type: ignore[attr-defined]


def _processes(pool: cf.Executor | None) -> list[Any]:
    return list(getattr(pool, "_parmap_processes", {}).values())


def _crash_exitcode(pool: cf.Executor | None) -> int | None:
    """The exit code of the worker that broke ``pool``.

    A broken pool terminates its other workers (SIGTERM), so once every worker
    has ended, the culprit is the one that ended some other way.

    The pool's manager thread joins them itself; it goes first. Two threads
    polling one forkserver child race to read its status from the one pipe,
    and the loser records 255 (CPython's ``popen_forkserver.Popen.poll`` is not
    thread-safe; gh-140867 reports 255 from the same pattern), so the exit code
    is read only after that thread is done.
    """
    processes = _processes(pool)
    deadline = time.monotonic() + 5.0
    manager = getattr(pool, "_executor_manager_thread", None)
    if manager is not None and manager is not threading.current_thread():
        manager.join(timeout=5.0)
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    codes = [p.exitcode for p in processes if p.exitcode is not None]
    culprits = [code for code in codes if code != -signal.SIGTERM]
    return (culprits or codes or [None])[0]
