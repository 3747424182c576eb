"""The mpi backend: the ranks of an MPI job, through mpi4py's ``futures``.

Started as ``mpiexec -n N python -m mpi4py.futures script.py`` (or ``srun``),
rank 0 runs the script and ranks 1..N-1 wait for work: mpi4py's shared pool.
Each ``MPIPoolExecutor`` rank 0 makes sends its tasks to those ranks; this
backend keeps one and sends it one task per batch::

    rank 0: parmap's core                   ranks 1..N-1 (mpi4py.futures' server loop)
    ─────────────────────                   ───────────────────────────────────────────
    batching, window, order, retries,       _run_on_rank(spec, items) = run_batch(...):
    timeouts, progress, error notes           the function by value (cloudpickle, in the
      submit(): executor.submit(               spec), DEAP's classes, the user's errors
        _run_on_rank, spec, blob)              in the Outcome; a fatal signal prints the
      wait(): also checks that the ranks       rank's Python stack (faulthandler)
        on this host are alive

What MPI decides, and what follows for parmap:

- A rank cannot be stopped nor replaced: the pool is the job's ranks for the
  job's life. So ``stops_running`` is False: ``item_timeout=`` is refused,
  and after ``timeout=`` or Ctrl-C the batches already running on ranks run
  to their end (queued ones are dropped); the ranks then take new work.
- A rank that dies ends the job: MPI's launchers (MPICH's and Open MPI's
  ``mpiexec``, ``srun``) kill every rank, rank 0 included, within a second.
  The launcher's exit status is the rank's; a segfault or abort prints the
  rank's Python stack first. If the launcher lets the job go on
  (``mpiexec -disable-auto-cleanup``), the lost batch never comes back and
  mpi4py.futures can no longer end the job (it waits for that rank at exit):
  parmap notices a rank of this host gone and ends the job itself with
  ``MPI_Abort``, naming the rank.
- Outside such a job there are no ranks to use: ``backend="mpi"`` raises,
  saying how to start the script. mpi4py could spawn workers
  (``MPI_Comm_spawn``), but then the death of one worker kills the calling
  process too, with no message (MPICH), and a cluster's ranks come from its
  launcher anyway; loky or multiprocessing serve one machine.
- ``auto`` considers this backend only in rank 0 of such a job
  (:meth:`MPIBackend.attached`), where it is the cluster to use.
- A call made on a worker rank (nested in ``fn``) runs on that rank, as
  mpi4py.futures runs an executor made there.

What parmap reads of mpi4py that it does not document is isolated in
:func:`_shared_pool` (whether this process is rank 0 of ``python -m
mpi4py.futures``), feature-checked: without it, parmap says how to start.
"""

from __future__ import annotations

import concurrent.futures as cf
import faulthandler
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Collection
from types import MappingProxyType
from typing import Any

from parmap._errors import WorkerCrashedError
from parmap._worker import CallSpec, on_worker, run_batch
from parmap.backends._base import Backend

__all__ = ["MPIBackend"]

log = logging.getLogger("parmap")

HOW_TO_START = (
    "start the script as `mpiexec -n N python -m mpi4py.futures script.py` "
    "(or `srun -n N python -m mpi4py.futures script.py`): rank 0 runs it and the "
    "other N-1 ranks are its workers"
)
CENSUS_SECONDS = 60.0  # for every rank to answer once at start (they may be busy)
CHECK_EVERY = 0.5  # seconds between checks that this host's ranks are alive


class MPIBackend(Backend):
    """The worker ranks of ``mpiexec -n N python -m mpi4py.futures script.py``.

    Facts (see :class:`parmap.backends.Backend`): it is usable only in rank 0 of
    such a job, and on its ranks (see :meth:`usable`); ``stops_running`` is False:
    a running rank cannot be stopped or replaced, so ``item_timeout=`` is refused.
    """

    name = "mpi"
    stops_running = False  # an MPI rank cannot be stopped, nor replaced
    batch_overhead = 1e-3  # a warm round trip on 2 ranks of one host (MPICH 5), rounded up
    startup_seconds = 0.05  # the ranks exist already; the first call meets them
    default_model = MappingProxyType(
        {
            "fixed": 3e-3,
            "per_item": 1.5e-6,
            "per_byte": 3e-9,
            "per_batch": 1.5e-3,
            "work_factor": 1.1,
        }
    )

    def __init__(self, workers: int | None = None, **options: Any) -> None:
        super().__init__(workers, **options)
        self._executor: Any = None
        self._ranks: list[tuple[str, int]] = []  # (host, pid) of each worker rank
        self._lock = threading.Lock()
        self._checked = 0.0

    @classmethod
    def usable(cls) -> str | None:
        """Only in an MPI job started with ``-m mpi4py.futures`` (rank 0, or a worker rank
        running a nested call); elsewhere there are no ranks to use."""
        return None if cls.attached() or on_worker() else HOW_TO_START

    @classmethod
    def attached(cls) -> bool:
        """Whether this process is rank 0 of ``python -m mpi4py.futures`` with worker
        ranks: the engine the script already runs in (read without importing it)."""
        pool = _shared_pool()
        return pool is not None and _pool_size() > 0

    @property
    def workers(self) -> int:
        """The worker ranks (N-1), unless ``workers=`` asks for fewer batches at once."""
        ranks = _pool_size()
        if self.requested_workers:
            return min(self.requested_workers, ranks) if ranks > 0 else self.requested_workers
        return max(ranks, 1)

    def _pool(self) -> Any:
        """The executor on the job's worker ranks, made on first use."""
        with self._lock:
            if self._executor is None:
                self._executor, self._ranks = _start()
            return self._executor

    def submit(self, prepared: CallSpec, items: bytes) -> cf.Future[Any]:
        if on_worker() and not self.attached():  # a nested call on a worker rank: the
            future: cf.Future[Any] = cf.Future()  # others are busy; it runs here, as
            future.set_result(run_batch(prepared, items))  # mpi4py.futures would
            return future
        return self._pool().submit(_run_on_rank, prepared, items)

    def wait(self, futures: Collection[cf.Future[Any]], timeout: float | None) -> set[Any]:
        """As the default, checking every half second that the ranks of this host live:
        a lost rank's batch would never come back (see the module docstring)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = CHECK_EVERY if end is None else min(CHECK_EVERY, end - time.monotonic())
            done, _ = cf.wait(futures, timeout=max(left, 0.0), return_when=cf.FIRST_COMPLETED)
            if done or (end is not None and time.monotonic() >= end):
                return done
            self._check_ranks()

    def _check_ranks(self) -> None:
        lost = _lost(self._ranks)
        if lost is not None:
            _end_job(lost)

    def translate(self, exc: BaseException, future: cf.Future[Any] | None) -> BaseException:
        if isinstance(exc, cf.BrokenExecutor):
            return WorkerCrashedError(f"the MPI pool of this job broke: {exc}")
        if isinstance(exc, ImportError) and future is not None:  # a rank could not unpickle
            return WorkerCrashedError(  # the task: parmap itself is missing there
                f"an MPI rank could not load parmap's task ({exc}); every rank needs the "
                "same Python with the same packages (parmap, and what fn imports)"
            )
        return exc

    def cancel(self, futures: Collection[cf.Future[Any]], *, stop_running: bool) -> None:
        running = [future for future in futures if not future.cancel() and not future.done()]
        if running and stop_running:
            log.warning(
                "parmap: %d batch(es) were running on MPI ranks, which cannot be stopped: "
                "they run to their end (or the job's), then their ranks take new work",
                len(running),
            )

    def describe(self) -> dict[str, Any]:
        hosts = sorted({host for host, _ in self._ranks})
        return {"workers": self.workers, "started": self._executor is not None, "hosts": hosts}

    def shutdown(self) -> None:
        """Release the executor; the ranks are the job's and stay for its end."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


# -- rank 0 -------------------------------------------------------------------------------


def _shared_pool() -> Any:
    """mpi4py.futures' shared pool when this process is rank 0 of ``python -m
    mpi4py.futures`` with worker ranks, else None.

    Undocumented in mpi4py (``mpi4py.futures._core.SharedPool``, its ``counter``
    set on the root only): read from ``sys.modules`` without importing, and
    feature-checked; without it parmap takes the script as not started that way.
    """
    core = sys.modules.get("mpi4py.futures._core")
    pool = getattr(core, "SharedPool", None)
    if pool is None or getattr(pool, "counter", None) is None:
        return None
    return pool


def _pool_size() -> int:
    """The worker ranks of this job (N-1), or 0 when not in rank 0 of such a job."""
    if _shared_pool() is None:
        return 0
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi.COMM_WORLD.Get_size() - 1 if mpi is not None else 0


def _start() -> tuple[Any, list[tuple[str, int]]]:
    """A new executor on the job's worker ranks, and where each rank runs.

    Raises:
        RuntimeError: not rank 0 of ``python -m mpi4py.futures`` with worker ranks.
    """
    from mpi4py import MPI
    from mpi4py.futures import MPIPoolExecutor

    _check_started(MPI)
    # main=False: the ranks need not import the script (the function travels by
    # value); a script without the __main__ guard would run again on every rank.
    executor = MPIPoolExecutor(main=False)
    return executor, _census(executor, MPI.COMM_WORLD.Get_size() - 1)


def _check_started(mpi: Any) -> None:
    """Raise, saying how to start the script, unless this is rank 0 of a pool with workers."""
    size = mpi.COMM_WORLD.Get_size()
    if _shared_pool() is not None:
        return
    core = sys.modules.get("mpi4py.futures._core")
    if getattr(core, "SharedPool", None) is not None and size == 1:
        raise RuntimeError(
            "backend='mpi': this MPI job has one rank, so no rank is left to work "
            f"(mpiexec -n 1); {HOW_TO_START}, with N >= 2"
        )
    if size > 1:
        raise RuntimeError(
            f"backend='mpi': this is rank {mpi.COMM_WORLD.Get_rank()} of {size}, each "
            f"running the script, which mpi4py.futures did not start; {HOW_TO_START}"
        )
    raise RuntimeError(
        f"backend='mpi' runs on the ranks of an MPI job, and this process is not in one: "
        f"{HOW_TO_START}. On one machine without MPI, use backend='loky' or "
        "'multiprocessing'"
    )


def _census(executor: Any, size: int) -> list[tuple[str, int]]:
    """Where each worker rank runs, by one task per rank (held at a barrier of the
    workers, so that no rank takes two); empty if they do not all answer in time."""
    futures = [executor.submit(_here) for _ in range(size)]
    _, waiting = cf.wait(futures, timeout=CENSUS_SECONDS)
    if waiting:
        log.warning("parmap: not every MPI rank answered in %gs; ranks unchecked", CENSUS_SECONDS)
        return []
    return [future.result() for future in futures]


def _lost(ranks: list[tuple[str, int]]) -> tuple[str, int] | None:
    """(host, pid) of a worker rank of this host that is gone, if any."""
    host = socket.gethostname()
    for where, pid in ranks:
        if where == host and not _alive(pid):
            return where, pid
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rpartition(b")")[2].split()[0] != b"Z"  # a zombie is gone
    except (OSError, IndexError):
        return True


def _end_job(lost: tuple[str, int]) -> None:
    """End the MPI job: one of its ranks is gone and its batch will never come back."""
    from mpi4py import MPI

    host, pid = lost
    sys.stderr.write(
        f"parmap: a worker rank of this MPI job (pid {pid} on {host}) died while batches "
        "ran on the ranks. MPI cannot replace a rank, and mpi4py.futures cannot end a job "
        "with one missing, so parmap ends the job now (MPI_Abort). Its Python stack, if "
        "it crashed on a signal, is above.\n"
    )
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(1)


# -- the worker ranks ------------------------------------------------------------------------


def _here() -> tuple[str, int]:
    """On a worker rank: where it runs, once every worker rank holds such a task."""
    from mpi4py.futures import get_comm_workers

    _prepare_rank()
    get_comm_workers().Barrier()
    return socket.gethostname(), os.getpid()


def _run_on_rank(spec: CallSpec, items: bytes) -> bytes:
    """On a worker rank: one batch, through :func:`parmap.backends.run_batch`."""
    _prepare_rank()
    return run_batch(spec, items)


def _prepare_rank() -> None:
    """Once per rank: a fatal signal (segfault, abort) prints the rank's Python stack
    before MPI's launcher ends the job."""
    if not faulthandler.is_enabled():
        faulthandler.enable()
