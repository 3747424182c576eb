"""The backend contract: what a backend is, what its workers run, how they find shared values.

A backend adapts one execution engine to parmap: it starts workers, runs one
batch, and stops. Everything else (batching, the window of batches in flight,
ordering, retries, timeouts, progress, error notes) is written once in the
core, so a backend is small. The whole of one::

    import concurrent.futures as cf
    from parmap.backends import Backend, run_batch

    class MyBackend(Backend):
        name = "mine"
        def __init__(self, workers=None, **options):
            super().__init__(workers, **options)
            self.executor = make_my_engine_executor(self.workers)
        def submit(self, prepared, items):        # one batch: bytes in, bytes out
            return self.executor.submit(run_batch, prepared, items)
        def shutdown(self):
            self.executor.shutdown()

    parmap.register_backend("mine", "my_package.module:MyBackend")   # or an entry point

What this module offers, by who uses it:

- the class to subclass, :class:`Backend`, and its facts (``serializes``,
  ``batch_overhead``, ``startup_seconds``, ``default_model``, ``auto``,
  ``cluster_env``, ``option_names``, ``stops_running``, ``shares_gil``), which
  ``auto``, calibration, ``parmap info`` and the command line read;
- what a worker runs: :func:`run_batch` (in a worker process: the call's
  :class:`CallSpec` and the pickled items in, the pickled :class:`Outcome` out)
  or :func:`run_local` (in the caller's process, on live objects); a process
  pool's workers start with :func:`prepare_pool_worker`; :func:`on_worker`
  tells code that it runs on one;
- how workers find ``parmap.share()`` values: :meth:`Backend.publish` returns a
  :class:`Locator` (the default, :class:`InlineLocator`, pickles the value
  into the function);
- for engines that let the caller choose each batch's worker: :class:`Dispatcher`,
  the one per-worker placement (two batches per worker thread, a waiting
  batch taken back by an idle worker at the end of a call);
- :class:`ExecutorBackend`: what a ``concurrent.futures.Executor`` passed as
  ``backend=`` runs through (one task per batch; the executor stays the caller's);
- :func:`default_workers`: the CPUs this process may use; :func:`describe_exit`:
  how a dead worker's exit code reads in an error, with its likely cause.

``docs/writing-a-backend.md`` walks through a complete external backend
(``examples/custom_backend/``).
"""

from parmap._errors import describe_exit
from parmap._worker import (
    INLINE_SPEC_BYTES,
    CallSpec,
    ErrorRecord,
    Outcome,
    holds,
    on_worker,
    prepare_pool_worker,
    run_batch,
    run_local,
)
from parmap.backends._base import Backend, InlineLocator, Locator, default_workers
from parmap.backends._dispatch import Dispatcher, Job
from parmap.backends._executor import ExecutorBackend

__all__ = [
    "INLINE_SPEC_BYTES",
    "Backend",
    "CallSpec",
    "Dispatcher",
    "ErrorRecord",
    "ExecutorBackend",
    "InlineLocator",
    "Job",
    "Locator",
    "Outcome",
    "default_workers",
    "describe_exit",
    "holds",
    "on_worker",
    "prepare_pool_worker",
    "run_batch",
    "run_local",
]
