"""The Dask backend: batches run on the workers of a ``distributed`` cluster.

Which cluster a call uses, decided at every call (first match wins)::

    address="tcp://host:8786"        connect to that scheduler; disconnect at shutdown
    a default distributed.Client     use it as it is; parmap never closes it
    $DASK_SCHEDULER_ADDRESS          connect to that scheduler; disconnect at shutdown
    otherwise                        an embedded LocalCluster on 127.0.0.1: a process
                                     per worker, one thread each, no dashboard, quiet;
                                     started on first use, kept until parmap.shutdown()

On the embedded cluster, parmap sends each batch straight to a worker
(``_dask_direct``: one request instead of a task's five messages through the
scheduler). On a cluster parmap connects to or a client it adopts, each batch
is a task, so that the scheduler sees the work (adaptive scaling, other
clients, the dashboard); a batch's round trip costs more there, and
``batch_overhead`` says so once ``prepare`` has found the cluster.

This module holds the class and its facts only; the engine side is
``_dask_cluster`` (imported on first use, so that reading the facts does not
import Dask).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Collection
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from parmap._worker import CallSpec, Outcome
from parmap.backends._base import Backend, Locator

if TYPE_CHECKING:
    from parmap.backends._dask_cluster import DaskEngine

__all__ = ["DaskBackend"]

# One batch's round trip, measured warm on 2 cores. A task: 7 ms on an idle machine and
# 10-15 ms while the workers keep both cores busy (the scheduler and client run in the
# caller's process and wait for a core); a DEAP generation of 180 x 1.3 ms items idled
# its workers longest when cut into 6 batches rather than 2 or 4. A batch sent straight
# to an embedded worker: 1.3 ms idle, 1.9 ms for two at once.
TASK_OVERHEAD = 12e-3
DIRECT_OVERHEAD = 2e-3


class DaskBackend(Backend):
    """Batches on a Dask ``distributed`` cluster (see the module doc)."""

    name = "dask"
    batch_overhead: float = DIRECT_OVERHEAD  # the embedded cluster's; prepare() sets it
    startup_seconds = 5.0
    default_model = MappingProxyType(
        {"fixed": 15e-3, "per_item": 3e-6, "per_byte": 1e-8, "per_batch": 3e-3, "work_factor": 1.1}
    )
    cluster_env = "DASK_SCHEDULER_ADDRESS"
    option_names = ("address",)

    def __init__(self, workers: int | None = None, **options: Any) -> None:
        super().__init__(workers, **options)
        self._lock = threading.Lock()
        self._engine: DaskEngine | None = None

    @property
    def engine(self) -> DaskEngine:
        """The engine side, made on first use."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from parmap.backends._dask_cluster import DaskEngine

                    self._engine = DaskEngine(self.requested_workers, self.options.get("address"))
        return self._engine

    @property
    def workers(self) -> int:
        return self.requested_workers or self.engine.threads()

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` in use (connecting or starting a cluster if need be)."""
        return self.engine.session().client

    def prepare(self, spec: CallSpec) -> Any:
        prepared = self.engine.prepare(spec)
        self.batch_overhead = DIRECT_OVERHEAD if prepared.session.direct else TASK_OVERHEAD
        return prepared

    def submit(self, prepared: Any, items: bytes) -> cf.Future[Any]:
        return self.engine.submit(prepared, items)

    def translate(self, exc: BaseException, future: cf.Future[Any] | None) -> BaseException:
        return self.engine.translate(exc, future)

    def cancel(self, futures: Collection[cf.Future[Any]], *, stop_running: bool) -> None:
        self.engine.cancel(futures, stop_running=stop_running)

    def stop_worker(self, future: cf.Future[Any], outcome: Outcome) -> None:
        self.engine.stop_worker(future, outcome)

    def publish(self, token: str, blob: bytes) -> Locator:
        return self.engine.publish(token, blob)

    def release(self, token: str) -> None:
        if self._engine is not None:
            self._engine.release(token)

    def describe(self) -> dict[str, Any]:
        if self._engine is None:
            return {"workers": self.requested_workers or "?", "started": False}
        return self._engine.describe()

    def shutdown(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
