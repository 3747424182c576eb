"""The Ray backend: a pool of persistent Ray actors, on one machine or a cluster.

Connecting, on the first call::

    ray.is_initialized()          the caller's own runtime: used as is, never shut down
    address= or $RAY_ADDRESS      ray.init(address=...): an existing cluster
    otherwise                     an embedded local instance (see _ray_local): quiet,
                                  loopback-only, num_cpus = workers, reused by later
                                  calls and stopped by parmap.shutdown()

The batches go to actors, one per CPU of each node, through the shared
per-worker dispatcher (``_dispatch``: each actor holds the batch it runs and
the next). Why actors rather than one Ray task per batch: a task first leases
a worker from the raylet, an actor call goes straight to its process. On this
2-core machine a call of 300 cheap items took 1.8-4.5 ms on actors against
4.5-7 ms on tasks, side by side (benchmarks/bench_ray.py measures the actors).

This module holds the class and its facts only; the engine side is
``_ray_pool`` (imported on first use, so that reading the facts does not
import Ray).
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import threading
from collections.abc import Collection
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from parmap._worker import CallSpec, Outcome
from parmap.backends._base import Backend, Locator

if TYPE_CHECKING:
    from parmap.backends._ray_pool import RayPool

__all__ = ["RayBackend"]


class RayBackend(Backend):
    """Runs batches on a pool of persistent Ray actors, one per CPU (see the module doc)."""

    name = "ray"
    batch_overhead: float = 1.5e-3  # measured: ~0.75 ms of wall time per batch, 2 workers
    startup_seconds = 10.0
    default_model = MappingProxyType(
        {"fixed": 5e-3, "per_item": 3e-6, "per_byte": 5e-9, "per_batch": 1.5e-3, "work_factor": 1.1}
    )
    cluster_env = "RAY_ADDRESS"
    option_names = ("address",)

    def __init__(self, workers: int | None = None, **options: Any) -> None:
        super().__init__(workers, **options)
        self._lock = threading.Lock()
        self._engine: RayPool | None = None

    @classmethod
    def attached(cls) -> bool:
        ray = sys.modules.get("ray")
        return bool(ray is not None and ray.is_initialized())

    @property
    def pool(self) -> RayPool:
        """The engine side, made on first use."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from parmap.backends._ray_pool import RayPool

                    self._engine = RayPool(self.requested_workers, self.options.get("address"))
        return self._engine

    @property
    def workers(self) -> int:
        return self.pool.workers

    def prepare(self, spec: CallSpec) -> Any:
        return self.pool.prepare(spec)

    def submit(self, prepared: Any, items: bytes) -> cf.Future[Any]:
        return self.pool.submit(prepared, items)

    def wait(self, futures: Collection[cf.Future[Any]], timeout: float | None) -> set[Any]:
        return self.pool.wait(futures, timeout)

    def translate(self, exc: BaseException, future: cf.Future[Any] | None) -> BaseException:
        return self.pool.translate(exc)

    def cancel(self, futures: Collection[cf.Future[Any]], *, stop_running: bool) -> None:
        self.pool.cancel(futures, stop_running=stop_running)

    def stop_worker(self, future: cf.Future[Any], outcome: Outcome) -> None:
        self.pool.stop_worker(future)

    def publish(self, token: str, blob: bytes) -> Locator:
        return self.pool.publish(token, blob)

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
