"""The backend interface: start workers, run one batch, stop.

A backend adapts one execution engine to parmap. It does not batch, order,
retry, time out or annotate errors: the core's driver (``parmap._driver``)
does that once for all. One call's life, as a backend sees it::

    prepare(spec)            once per call: connect or start, ship the function
    batch_overhead           read after prepare: sizes the call's batches
    submit(prepared, items)  once per batch -> concurrent.futures.Future
                             (its result: run_batch's bytes, or an Outcome)
    wait(futures, timeout)   until at least one is done
    translate(exc, future)   engine errors -> parmap errors (WorkerCrashedError)
    cancel(futures, ...)     on error, timeout, Ctrl-C or an abandoned imap
    shutdown()               at parmap.shutdown() or interpreter exit

What the core needs to know about a backend without running it (whether it
serializes, its costs, whether ``auto`` may choose it, which environment
variable names its cluster, which options it takes) are attributes of its
class, read from the registry: no engine is named in the core. Import the
engine itself in the methods, not at the top of the module, so reading those
facts stays cheap (``auto`` reads them for every installed backend).
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import os
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from parmap._worker import CallSpec, Outcome

__all__ = ["Backend", "InlineLocator", "Locator", "default_workers"]


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Locator:
    """Where a worker finds the value of a ``parmap.share()`` handle.

    A backend's :meth:`Backend.publish` returns one; it is pickled into the
    function and its :meth:`load` runs on the worker, once per worker process.
    """

    def load(self) -> Any:
        """Return the shared value (on a worker)."""
        raise NotImplementedError

    def current(self) -> bool:
        """Whether this locator still finds the value (in the caller). False when the
        engine restarted since it was published: the handle then publishes it again."""
        return True


class InlineLocator(Locator):
    """The value travels inside the pickled function (the default)."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def load(self) -> Any:
        from parmap._serialization import loads

        return loads(self.blob)


_NO_MODEL: Mapping[str, float] = MappingProxyType({})


class Backend(abc.ABC):
    """Base class of parmap backends.

    Facts the core reads from the class (override them in a subclass):

    Attributes:
        name: the registered name (``backend=``, ``$PARMAP_BACKEND``).
        serializes: False for backends that run ``fn`` in the caller's process
            on live objects (their batches go to :func:`parmap.backends.run_local`);
            True for the rest, whose batches are bytes for
            :func:`parmap.backends.run_batch`.
        batch_overhead: typical seconds of one batch's round trip on a warm
            backend; the batching policy sizes batches from it. The core reads it
            after :meth:`prepare`, which may set it for where it connected.
        startup_seconds: what the first call costs to start the workers, for
            ``auto`` before ``parmap bench --calibrate`` has measured it.
        default_model: ``auto``'s conservative overhead constants before
            calibration (``fixed``, ``per_item``, ``per_batch`` seconds and a
            ``work_factor``; see ``parmap._model``). Empty: ``auto`` never
            chooses this backend uncalibrated.
        auto: whether ``backend="auto"`` may choose it.
        cluster_env: an environment variable naming this backend's cluster
            (e.g. ``RAY_ADDRESS``). When one is set, ``auto`` chooses between
            serial and the backends whose variable is set.
        option_names: the options it takes besides ``workers`` (e.g.
            ``("address",)``); a call's options of those names reach
            ``__init__``.
        stops_running: whether ``cancel(..., stop_running=True)`` and
            :meth:`stop_worker` really stop work that already runs (False where
            ``fn`` runs on the caller's own threads, which cannot be stopped:
            ``item_timeout=`` is refused there).
        shares_gil: its workers are threads of the caller's process: where the
            interpreter has a GIL, pure-Python work runs on them one at a time,
            so ``auto`` measures per function how well it scales on two threads
            (the model's ``work_factor`` is then for work that runs in parallel).
    """

    name: ClassVar[str] = "?"
    serializes: ClassVar[bool] = True
    batch_overhead: float = 1e-3
    startup_seconds: ClassVar[float] = 1.0
    default_model: ClassVar[Mapping[str, float]] = _NO_MODEL
    auto: ClassVar[bool] = True
    cluster_env: ClassVar[str | None] = None
    option_names: ClassVar[tuple[str, ...]] = ()
    stops_running: ClassVar[bool] = True
    shares_gil: ClassVar[bool] = False

    def __init__(self, workers: int | None = None, **options: Any) -> None:
        if workers is not None and (
            not isinstance(workers, int) or isinstance(workers, bool) or workers < 1
        ):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        unknown = set(options) - set(self.option_names)
        if unknown:
            raise TypeError(
                f"backend {self.name!r} does not take option(s) {sorted(unknown)}; "
                f"it takes {sorted(self.option_names) or 'none'}"
            )
        self.requested_workers = workers
        self.options = options

    @classmethod
    def usable(cls) -> str | None:
        """Why this backend cannot run in this process, or None if it can (the default).

        For a backend that needs a context to run in (MPI's needs the ranks of an
        MPI job): outside it, it is installed but not available, so ``auto``,
        calibration and the benchmarks leave it out. Must not import the engine.
        """
        return None

    @classmethod
    def attached(cls) -> bool:
        """Whether the caller's own code already runs this engine in this process (for
        Ray: ``ray.init()``). It then counts as started, and as the cluster to use.
        Must not import the engine: look in ``sys.modules``."""
        return False

    @property
    def workers(self) -> int:
        """How many batches can run at the same time."""
        return self.requested_workers or default_workers()

    def prepare(self, spec: CallSpec) -> Any:
        """Make the call's spec available to workers; the result goes to ``submit``."""
        return spec

    @abc.abstractmethod
    def submit(self, prepared: Any, items: Any) -> cf.Future[Any]:
        """Start one batch; the future's result is ``run_batch``'s bytes (or an Outcome).

        ``items`` is the batch pickled (``serializes``) or the list of items.
        """

    def wait(self, futures: Collection[cf.Future[Any]], timeout: float | None) -> set[Any]:
        """Block until at least one future is done or ``timeout`` passes; return the done ones."""
        done, _ = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return done

    def translate(self, exc: BaseException, future: cf.Future[Any] | None) -> BaseException:
        """Map an engine's error to a parmap error (default: as is).

        A worker lost with its batch must become :class:`parmap.WorkerCrashedError`:
        that is what ``retries=`` retries. A batch lost through no fault of its own
        (its worker lives, data it needed died with other workers) is one with
        ``collateral=True``: the core sends it again without counting it.

        Args:
            exc: what ``submit`` or ``future.result()`` raised.
            future: the batch's future, or None when ``submit`` itself raised.
        """
        return exc

    def cancel(self, futures: Collection[cf.Future[Any]], *, stop_running: bool) -> None:
        """Cancel queued batches; with ``stop_running``, stop running ones too.

        When it returns, no stopped batch may start another item: a timeout or a
        Ctrl-C means that the work has stopped, not that it will.
        """
        for future in futures:
            future.cancel()

    def stop_worker(self, future: cf.Future[Any], outcome: Outcome) -> None:
        """Stop and replace the worker that ran this batch: one of its threads still runs
        an item that ran longer than ``item_timeout=`` (``outcome.stuck``).

        Batches that worker holds may be lost with it: they fail as
        :class:`parmap.WorkerCrashedError` and the core sends them again, free of
        ``retries=``. By default every worker stops (:meth:`shutdown`) and the next
        batch starts fresh ones; override it to stop that one worker only.

        Args:
            future: the batch's future, as :meth:`submit` returned it.
            outcome: the batch's outcome; ``outcome.pid`` is the worker's process.
        """
        self.shutdown()

    def publish(self, token: str, blob: bytes) -> Locator:
        """Send a shared value to the workers once; return how they find it."""
        return InlineLocator(blob)

    def release(self, token: str) -> None:  # noqa: B027 - optional
        """Forget a shared value published under ``token`` (its handle was collected).

        Called from any thread, maybe from a garbage collection: do not block.
        """

    def describe(self) -> dict[str, Any]:
        """Facts for ``parmap info``."""
        return {"workers": self.workers}

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop the workers this backend started (never ones it merely connected to)."""
