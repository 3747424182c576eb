"""The front door: ``parmap()``, ``imap()`` and ``starmap()``.

Each is one line into the route every call takes (``parmap._call``); the
signatures and their documentation live here. One item's journey::

    parmap(fn, items)
      │ parmap._call: check the options; choose the backend (auto decides here)
      │   in place, here: serial with nothing to drive          ─► results
      │   else: lease the backend, serialize fn once (CallSpec)
      ▼
    parmap._driver: batches in flight, in order, retried, timed out
      │ backend.submit(batch) ─► a worker: parmap.backends.run_batch ─► Outcome
      ▼
    results, or fn's own exception rebuilt with its item (parmap._failures)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any

from parmap._call import CALL_OPTIONS, Call, quick

__all__ = ["imap", "parmap", "starmap"]


def parmap(
    fn: Callable[..., Any],
    *iterables: Iterable[Any],
    backend: str | Executor | None = None,
    workers: int | None = None,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: bool | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    address: str | None = None,
    item_timeout: float | None = None,
    return_exceptions: bool | None = None,
) -> list[Any]:
    """Apply ``fn`` to every item in parallel and return the results as a list.

    Called like the built-in ``map``: with several iterables, ``fn`` gets one
    argument from each and the shortest iterable ends the call. So
    ``toolbox.register("map", parmap.parmap)`` works in DEAP as is.

    Args:
        fn: the function; lambdas, closures and decorated functions work.
        *iterables: one or more iterables (generators included).
        backend: ``"serial"``, ``"threads"``, ``"multiprocessing"``, ``"loky"``,
            ``"ray"``, ``"dask"``, ``"auto"`` or a registered name; or a
            ``concurrent.futures.Executor`` of yours (one task per batch; parmap
            never shuts it down). Default from ``parmap.config()``, then
            ``$PARMAP_BACKEND``, then the first installed of ray and loky.
        workers: parallel workers (default: all CPUs, or the cluster's).
        chunksize: items per task; ``None`` sizes batches automatically.
        ordered: results in input order (True) or in completion order.
        progress: show a tqdm progress bar.
        timeout: seconds for the whole call; then running work is stopped.
        retries: times a batch lost to a crashed worker is retried (default 0).
        initializer: called once in each worker process before its first item.
        initargs: arguments for ``initializer``.
        address: a cluster's address, for backends that connect to one (ray, dask).
        item_timeout: seconds each item may run; an item that runs longer is
            stopped (its worker is stopped and replaced, the rest of its batch
            runs elsewhere) and fails with :class:`parmap.ItemTimeoutError`.
            Also ``config()`` and ``$PARMAP_ITEM_TIMEOUT``. Needs a backend that
            runs ``fn`` in worker processes.
        return_exceptions: each failed item's exception (``fn``'s own, with the
            worker's traceback as its cause, an ``ItemTimeoutError``, or a
            ``WorkerCrashedError`` once retries are spent) stands in the item's
            place in the results, and the call goes on (``KeyboardInterrupt`` and
            ``SystemExit`` still stop it). Also ``config()`` and
            ``$PARMAP_RETURN_EXCEPTIONS``.

    Returns:
        The list of ``fn``'s results (and, with ``return_exceptions``, exceptions).

    Raises:
        Exception: whatever ``fn`` raised, with its own type, the worker's
            traceback as ``__cause__`` and a note naming the item.
        UnknownBackendError: the backend name is not known (a ``ValueError``).
        BackendNotInstalledError: the backend's package is missing.
        SerializationError: ``fn``, an item or a result cannot be pickled.
        WorkerCrashedError: a worker process died.
        WorkerInitializationError: ``initializer`` raised.
        TimeoutError: ``timeout`` passed (a builtin ``TimeoutError`` too).
        ItemTimeoutError: an item ran longer than ``item_timeout`` (without
            ``return_exceptions``; a builtin ``TimeoutError`` too).
    """
    if (
        len(iterables) == 1
        and workers is None
        and chunksize is None
        and progress is None
        and timeout is None
        and retries is None
        and initializer is None
        and address is None
        and item_timeout is None
        and return_exceptions is None
    ):  # the common small call: maybe nothing to decide
        results = quick(fn, iterables[0], backend)
        if results is not None:
            return results
    options = {key: value for key, value in locals().items() if key in CALL_OPTIONS}
    return Call.plan(fn, iterables, options).results()


def imap(
    fn: Callable[..., Any],
    *iterables: Iterable[Any],
    backend: str | Executor | None = None,
    workers: int | None = None,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: bool | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    address: str | None = None,
    item_timeout: float | None = None,
    return_exceptions: bool | None = None,
) -> Iterator[Any]:
    """Like :func:`parmap`, but return an iterator that streams the results.

    Only a bounded number of items is read ahead and in flight, so an endless
    generator runs in bounded memory. Closing the iterator (or leaving a
    ``for`` loop over it) cancels the work not yet started.

    Args:
        fn: see :func:`parmap`.
        *iterables: see :func:`parmap`.
        backend: see :func:`parmap`.
        workers: see :func:`parmap`.
        chunksize: see :func:`parmap`.
        ordered: see :func:`parmap`.
        progress: see :func:`parmap`.
        timeout: see :func:`parmap`.
        retries: see :func:`parmap`.
        initializer: see :func:`parmap`.
        initargs: see :func:`parmap`.
        address: see :func:`parmap`.
        item_timeout: see :func:`parmap`.
        return_exceptions: see :func:`parmap`; the exceptions are yielded in
            their items' places (or as they complete, with ``ordered=False``).

    Returns:
        An iterator over ``fn``'s results.

    Raises:
        Exception: as :func:`parmap`; errors about the arguments are raised
            by this call, errors of the work while iterating.
    """
    options = {key: value for key, value in locals().items() if key in CALL_OPTIONS}
    return Call.plan(fn, iterables, options).stream()


def starmap(fn: Callable[..., Any], iterable: Iterable[Iterable[Any]], **options: Any) -> list[Any]:
    """Like :func:`parmap`, with each item unpacked as ``fn(*item)``.

    Args:
        fn: the function.
        iterable: an iterable of argument tuples.
        **options: the keyword arguments of :func:`parmap`.

    Returns:
        The list of results.

    Raises:
        Exception: as :func:`parmap`.
    """
    unknown = set(options) - set(CALL_OPTIONS)
    if unknown:
        raise TypeError(f"starmap() got unexpected keyword argument(s) {sorted(unknown)}")
    return Call.plan(fn, (iterable,), options, star=True).results()
