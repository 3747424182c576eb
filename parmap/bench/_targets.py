"""What the benchmark times: parmap's backends, the baselines, and serial ``map``.

A target runs ``fn`` over a list of items and returns the results; ``stop``
releases its workers, so the next call starts cold. Baselines are what users
write without parmap:

- ``mp-pool``: ``multiprocessing.Pool(W).map(fn, items)`` (default chunking,
  default start method);
- ``joblib-loky``: ``joblib.Parallel(n_jobs=W, backend="loky")`` with its auto
  batching, a fresh ``Parallel`` per call as usual;
- ``ray-tasks``: one naive Ray task per item (``ray.get([f.remote(x) ...])``),
  measured on at most ``item_cap`` items and scaled up, marked as such;
- ``dask-map``: ``client.gather(client.map(fn, items, pure=False))`` on a
  ``LocalCluster`` of W single-threaded worker processes, one task per item,
  capped and scaled like ``ray-tasks``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from typing import Any, ClassVar

import parmap
from parmap import _registry

__all__ = [
    "BASELINES",
    "DEFAULT_BASELINES",
    "DaskMapTarget",
    "JoblibTarget",
    "MapTarget",
    "ParmapTarget",
    "PoolTarget",
    "RayTasksTarget",
    "Target",
    "baseline_installed",
    "make_target",
]

BASELINES = {
    "mp-pool": (),
    "joblib-loky": ("joblib",),
    "ray-tasks": ("ray",),
    "dask-map": ("distributed",),
}
# measured unless --baselines says otherwise; dask-map (a cluster, one task per item) is
# asked for by name: it would stretch the quick mode past its few minutes
DEFAULT_BASELINES = ("mp-pool", "joblib-loky", "ray-tasks")


class Target:
    """Something that maps a function over items (see the module docstring).

    Attributes:
        name: the name in tables and plots.
        kind: ``"parmap"``, ``"baseline"`` or ``"reference"``.
        batching: the batching policy, for the overhead model.
        batch_overhead: the backend's declared round-trip time (parmap only).
        workers: how many items run at the same time.
        item_cap: measure at most this many items and scale the time (None: all).
    """

    kind: ClassVar[str] = "baseline"
    batching: ClassVar[str] = "single"

    def __init__(self, name: str, workers: int) -> None:
        self.name = name
        self.workers = workers
        self.batch_overhead = 0.0
        self.item_cap: int | None = None

    def run(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """Map ``fn`` over ``items``; return the results in order."""
        raise NotImplementedError

    def stop(self) -> None:
        """Release the workers (the next ``run`` starts them again)."""


class MapTarget(Target):
    """The reference: ``list(map(fn, items))`` in this process."""

    kind = "reference"

    def __init__(self) -> None:
        super().__init__("map", 1)

    def run(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(map(fn, items))


class ParmapTarget(Target):
    """``parmap.parmap(fn, items, backend=name)`` on a warm backend."""

    kind = "parmap"
    batching = "parmap"

    def __init__(self, name: str, workers: int) -> None:
        self.requested: int | None = workers
        if name == _registry.AUTO:  # picks serial or a backend per call
            super().__init__(name, workers)
            self.batch_overhead = 0.0
            return
        cls = _registry.backend_class(name)  # raises if the backend cannot load
        super().__init__(name, 1 if not cls.serializes else workers)
        self.requested = None if name == "serial" else workers
        self.batch_overhead = cls.batch_overhead

    def run(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        results = parmap.parmap(fn, items, backend=self.name, workers=self.requested)
        for backend in _registry.live_backends():  # a cluster may have other than asked
            if backend.name == self.name:
                self.workers = backend.workers
        return results

    def stop(self) -> None:
        parmap.shutdown(None if self.name == _registry.AUTO else self.name)


class PoolTarget(Target):
    """``multiprocessing.Pool.map`` with its default chunking."""

    batching = "pool"

    def __init__(self, workers: int) -> None:
        super().__init__("mp-pool", workers)
        self._pool: Any = None

    def run(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        if self._pool is None:
            import multiprocessing

            self._pool = multiprocessing.Pool(self.workers)
        return self._pool.map(fn, items)

    def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
            pool.join()


class JoblibTarget(Target):
    """``joblib.Parallel(n_jobs=W, backend="loky")`` with ``batch_size="auto"``."""

    batching = "joblib"

    def __init__(self, workers: int) -> None:
        super().__init__("joblib-loky", workers)

    def run(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        from joblib import Parallel, delayed

        return list(Parallel(n_jobs=self.workers, backend="loky")(delayed(fn)(x) for x in items))

    def stop(self) -> None:
        from joblib.externals.loky import reusable_executor

        executor = getattr(reusable_executor, "_executor", None)  # joblib's shared pool
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)


class RayTasksTarget(Target):
    """One Ray task per item: what parmap's batching saves on Ray."""

    batching = "per-item"

    def __init__(self, workers: int, item_cap: int) -> None:
        super().__init__("ray-tasks", workers)
        self.item_cap = item_cap
        self._remote: dict[int, tuple[Any, Any]] = {}
        self._started = False

    def run(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        import ray

        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            from parmap.backends._ray_local import no_sigint_for_children

            with no_sigint_for_children():  # Ray's helpers must not die of our Ctrl-C
                ray.init(
                    num_cpus=self.workers,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                )
            self._started = True
        entry = self._remote.get(id(fn))
        if entry is None or entry[0] is not fn:

            def task(item: Any, _fn: Callable[[Any], Any] = fn) -> Any:  # what users write
                return _fn(item)

            entry = (fn, ray.remote(task))
            self._remote[id(fn)] = entry
        remote = entry[1]
        return list(ray.get([remote.remote(x) for x in items]))

    def stop(self) -> None:
        self._remote.clear()
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


class DaskMapTarget(Target):
    """One Dask task per item through ``client.map``: what users write with Dask."""

    batching = "per-item"

    def __init__(self, workers: int, item_cap: int) -> None:
        super().__init__("dask-map", workers)
        self.item_cap = item_cap
        self._client: Any = None

    def run(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        if self._client is None:
            import distributed

            cluster = distributed.LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # leave 8787 alone
                silence_logs=logging.CRITICAL,
            )
            self._client = distributed.Client(cluster, set_as_default=False)
        client = self._client
        return list(client.gather(client.map(fn, items, pure=False)))

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            cluster = client.cluster
            client.close()
            cluster.close()


def baseline_installed(name: str) -> bool:
    """Whether the packages baseline ``name`` needs can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in BASELINES[name])


def make_target(name: str, workers: int, ray_cap: int) -> Target:
    """The target called ``name``: a parmap backend or one of :data:`BASELINES`.

    Raises:
        parmap.ParmapError: a parmap backend that is unknown or not installed.
        ImportError: the backend's module cannot be imported.
    """
    if name == "mp-pool":
        return PoolTarget(workers)
    if name == "joblib-loky":
        return JoblibTarget(workers)
    if name == "ray-tasks":
        return RayTasksTarget(workers, ray_cap)
    if name == "dask-map":
        return DaskMapTarget(workers, ray_cap)
    return ParmapTarget(name, workers)
