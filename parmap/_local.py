"""``parmap.per_worker(factory, *args)``: an object each worker builds once.

A rollout worker's environment, a loaded model, a database connection: state
that is costly to build, that cannot (or should not) travel, and that every
item a worker runs may reuse. The handle carries the recipe, never the object::

    caller                                worker process (any backend)
    ──────                                ────────────────────────────
    env = per_worker(make_env, "CartPole")
    parmap(lambda s: run(env.value, s), seeds)
      │ the function is pickled with the
      │ handle inside: (token, make_env,
      │ ("CartPole",)), a few hundred bytes ──►  env.value
      │                                           table[token]?  yes: return it
      │                                           no: make_env("CartPole"), keep it
      ▼
    results                               the next item, batch or call with the same
                                          handle finds it in this process's table

The table belongs to the process, so the object is built once per worker
process whatever the backend: a process-pool worker, a Ray actor, a Dask
worker (one that joins the cluster later builds its own on its first item),
and the caller itself under ``serial`` (and for the items ``auto`` runs in
place). A worker that replaces a dead one starts with an empty table, so it
builds afresh; a forked child clears the table it inherited, since an object
built in the parent (a socket, a thread, a simulator handle) is rarely safe to
use after ``fork``.

Threads: builds are serialized by one lock, so the threads of a Dask worker
with ``--nthreads 2`` build one object and share it. A backend whose workers
are threads of one process calls :func:`bind_thread` in each of its threads:
that thread then gets a table of its own, since environments and models are
rarely thread-safe. That is the whole seam; nothing else changes.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

__all__ = ["PerWorker", "bind_thread", "per_worker", "release_thread"]

T = TypeVar("T")
P = ParamSpec("P")

_table: dict[str, Any] = {}  # token -> the object built in this process
_threads = threading.local()  # .table: a worker thread's own table (see bind_thread)
_build_lock = threading.RLock()  # reentrant: a factory may read another handle


def bind_thread() -> None:
    """Give the calling thread a table of its own, empty.

    For a backend whose workers are threads: call it once at the start of each
    worker thread, so each builds its own objects instead of sharing the process's.
    """
    _threads.table = {}


def release_thread() -> None:
    """Drop the calling thread's own table (its objects go when nothing else holds them)."""
    _threads.__dict__.pop("table", None)


def _current_table() -> dict[str, Any]:
    table: dict[str, Any] | None = getattr(_threads, "table", None)
    return _table if table is None else table


def _forget_after_fork() -> None:
    global _build_lock
    _table.clear()
    _threads.__dict__.pop("table", None)
    _build_lock = threading.RLock()  # another thread of the parent may have held it


os.register_at_fork(after_in_child=_forget_after_fork)


class PerWorker(Generic[T]):
    """A handle to an object that each worker process builds once, on first use.

    Read it with ``handle.value`` inside the mapped function (or in the caller).
    Copies of a handle (the ones pickled to workers) share its token, so they
    find the object built for it; another handle, even of the same factory, is
    another object.
    """

    __slots__ = ("_args", "_factory", "_kwargs", "_token")

    def __init__(
        self, factory: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], token: str
    ) -> None:
        self._factory = factory
        self._args = args
        self._kwargs = kwargs
        self._token = token

    @property
    def value(self) -> T:
        """The object for this process (or worker thread): built by the first read here."""
        table = _current_table()
        try:
            return table[self._token]
        except KeyError:
            return self._build(table)

    def _build(self, table: dict[str, Any]) -> T:
        with _build_lock:
            if self._token not in table:  # another thread may have built it meanwhile
                table[self._token] = self._factory(*self._args, **self._kwargs)
            return table[self._token]

    def built_here(self) -> bool:
        """Whether this process (or worker thread) holds the object already."""
        return self._token in _current_table()

    def __repr__(self) -> str:
        name = getattr(self._factory, "__qualname__", type(self._factory).__qualname__)
        return f"<parmap.PerWorker {name} {self._token[:8]}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PerWorker, (self._factory, self._args, self._kwargs, self._token))


def per_worker(factory: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> PerWorker[T]:
    """Make a handle to an object built once in each worker process, on first use.

    Capture the handle in your function and read ``handle.value`` there::

        env = parmap.per_worker(make_env, "CartPole", seed=0)
        parmap.parmap(lambda genome: rollout(env.value, genome), population)

    Each worker process calls ``factory(*args, **kwargs)`` the first time one of
    its items reads ``env.value``, and keeps the result for every later item,
    batch and call that uses this handle. Under ``backend="serial"`` the caller
    builds it once. The factory and its arguments travel with the function, by
    value like the function itself: keep them small, and pass a large input as
    a :func:`parmap.share` handle.

    Args:
        factory: builds the object; a function, a class, a lambda.
        *args: positional arguments for ``factory``.
        **kwargs: keyword arguments for ``factory``.

    Returns:
        A :class:`PerWorker` handle.

    Raises:
        TypeError: ``factory`` is not callable.
    """
    if not callable(factory):
        raise TypeError(
            f"per_worker() needs a callable that builds the object (a function or a "
            f"class), got {type(factory).__name__} {factory!r:.60}; to send a ready "
            "object to every worker, use parmap.share(obj)"
        )
    return PerWorker(factory, args, kwargs, uuid.uuid4().hex)
