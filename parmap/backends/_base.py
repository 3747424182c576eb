"""The backend interface: start workers, run one batch, stop.

A backend adapts one execution engine to parmap. It does not batch, order,
retry, time out or annotate errors: ``parmap._api`` does that once for all.
One call's life, as a backend sees it::

    prepare(spec)            once per call: ship the function (e.g. ray.put)
    submit(prepared, items)  once per batch -> concurrent.futures.Future[bytes]
    wait(futures, timeout)   until at least one is done
    translate(exc, future)   engine errors -> parmap errors (WorkerCrashedError)
    cancel(futures, ...)     on error, timeout, Ctrl-C or an abandoned imap
    shutdown()               at parmap.shutdown() or interpreter exit

Workers start lazily on the first ``submit`` and are reused by later calls.
A remote worker runs ``parmap._worker.run_batch(spec, items_blob)``.
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import os
from collections.abc import Collection
from typing import Any, ClassVar

from parmap._worker import CallSpec

__all__ = ["Backend", "InlineLocator", "Locator", "default_workers"]


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Locator:
    """Where a worker finds the value of a ``parmap.share()`` handle."""

    def load(self) -> Any:
        raise NotImplementedError


class InlineLocator(Locator):
    """The value travels inside the pickled function (the fallback)."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def load(self) -> Any:
        from parmap._serialization import loads

        return loads(self.blob)


class Backend(abc.ABC):
    """Base class of parmap backends.

    Class attributes:
        name: the registered name.
        batch_overhead: typical seconds of one batch round trip on a warm
            backend; the batching policy sizes batches from it.
        serializes: False for backends that run in the caller's process on
            live objects (serial); True for the rest, which receive bytes.
    """

    name: ClassVar[str] = "?"
    batch_overhead: float = 1e-3
    serializes: ClassVar[bool] = True

    def __init__(self, workers: int | None = None, **options: Any) -> None:
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        unknown = set(options) - set(self.option_names())
        if unknown:
            raise TypeError(
                f"backend {self.name!r} does not take option(s) {sorted(unknown)}; "
                f"it takes {sorted(self.option_names()) or 'none'}"
            )
        self.requested_workers = workers
        self.options = options

    @classmethod
    def option_names(cls) -> Collection[str]:
        """Options besides ``workers`` this backend accepts (e.g. ``address``)."""
        return ()

    @property
    def workers(self) -> int:
        """How many batches can run at the same time."""
        return self.requested_workers or default_workers()

    def prepare(self, spec: CallSpec) -> Any:
        """Make the call's spec available to workers; the result goes to ``submit``."""
        return spec

    @abc.abstractmethod
    def submit(self, prepared: Any, items: Any) -> cf.Future[Any]:
        """Start one batch; the future's result is ``run_batch``'s bytes (or an Outcome)."""

    def wait(self, futures: Collection[cf.Future[Any]], timeout: float | None) -> set[Any]:
        """Block until at least one future is done or ``timeout`` passes; return the done ones."""
        done, _ = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return done

    def translate(self, exc: BaseException, future: cf.Future[Any] | None) -> BaseException:
        """Map an engine's error to a parmap error (default: as is).

        Args:
            exc: what ``submit`` or ``future.result()`` raised.
            future: the batch's future, or None when ``submit`` itself raised.
        """
        return exc

    def cancel(self, futures: Collection[cf.Future[Any]], *, stop_running: bool) -> None:
        """Cancel queued batches; with ``stop_running``, stop running ones too."""
        for future in futures:
            future.cancel()

    def publish(self, token: str, blob: bytes) -> Locator:
        """Send a shared value to the workers once; return how they find it."""
        return InlineLocator(blob)

    def describe(self) -> dict[str, Any]:
        """Facts for ``parmap info``."""
        return {"workers": self.workers}

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop the workers this backend started (never ones it merely connected to)."""
