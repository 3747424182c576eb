"""SCOOP's ``scoop.futures`` on parmap: ``map``, ``submit``, ``wait``, ``mapReduce``...

Drop-in for ``from scoop import futures``::

    from parmap.scoop import futures

    results = list(futures.map(evaluate, population))
    future = futures.submit(fn, 1, key=2)
    future.result()

The backend is parmap's (``parmap.config()``, ``$PARMAP_BACKEND`` or the
default, or the launcher's ``--backend``). A call made inside a function that
already runs on a worker runs there, in place: recursive SCOOP programs
complete on every backend. Futures are ``concurrent.futures.Future`` objects,
so ``wait`` and ``as_completed`` follow PEP 3148 exactly.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import parmap
from parmap.backends import on_worker
from parmap.scoop import _runtime
from parmap.scoop._runtime import Future

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "CancelledError",
    "Future",
    "TimeoutError",
    "as_completed",
    "map",
    "mapReduce",
    "mapScan",
    "map_as_completed",
    "shutdown",
    "submit",
    "wait",
]

FIRST_COMPLETED = cf.FIRST_COMPLETED
FIRST_EXCEPTION = cf.FIRST_EXCEPTION
ALL_COMPLETED = cf.ALL_COMPLETED
CancelledError = cf.CancelledError
TimeoutError = cf.TimeoutError

_builtin_map = map


def map(func: Callable[..., Any], *iterables: Iterable[Any], **kwargs: Any) -> Iterator[Any]:
    """``func`` over the items in parallel; a lazy iterator of results in input order.

    Like SCOOP's ``futures.map`` and the built-in ``map``: with several
    iterables ``func`` gets one argument from each, the shortest one ends it.
    Items are read as the work advances (an endless generator is fine);
    leaving the loop early cancels the rest.

    Args:
        func: any callable; functions of the ``__main__`` script travel by value.
        *iterables: one or more iterables.
        **kwargs: ``timeout``: seconds for the whole map (parmap's ``timeout=``);
            any other keyword goes to every call of ``func``
            (``futures.map(f, xs, depth=2)`` calls ``f(x, depth=2)``).

    Returns:
        An iterator over ``func``'s results.

    Raises:
        Exception: what ``func`` raised (with its own type), while iterating.
        TypeError: no iterable.
    """
    return _imap(func, iterables, kwargs, ordered=True)


def map_as_completed(
    func: Callable[..., Any], *iterables: Iterable[Any], **kwargs: Any
) -> Iterator[Any]:
    """Like :func:`map`, yielding each result as soon as it is ready.

    Args:
        func: see :func:`map`.
        *iterables: see :func:`map`.
        **kwargs: see :func:`map`.

    Returns:
        An iterator over ``func``'s results in completion order.

    Raises:
        Exception: as :func:`map`.
    """
    return _imap(func, iterables, kwargs, ordered=False)


def _imap(
    func: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    kwargs: dict[str, Any],
    *,
    ordered: bool,
) -> Iterator[Any]:
    extra = {key: value for key, value in kwargs.items() if key != "timeout"}
    task = _runtime.MapTask(func, _runtime.constants(), extra)
    with _runtime.call_config():
        stream = parmap.imap(task, *iterables, ordered=ordered, timeout=kwargs.get("timeout"),
                             return_exceptions=True)  # fmt: skip
    return _as_futures(stream)


def _as_futures(stream: Iterator[Any]) -> Iterator[Any]:
    """The results of a map read like SCOOP's futures: each result up to a failed item,
    whose exception is raised there (the rest of the map is cancelled)."""
    try:
        for value in stream:
            if isinstance(value, BaseException):
                raise value
            yield value.value if type(value) is _runtime.Returned else value
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def submit(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Start ``func(*args, **kwargs)`` in parallel; return its future.

    On a worker (a submit inside a submitted function) and on the serial
    backend the call runs at once and the future comes back done.

    Args:
        func: any callable.
        *args: its positional arguments.
        **kwargs: its keyword arguments.

    Returns:
        A :class:`Future`; ``result()`` returns the value or raises what
        ``func`` raised, with its own type.

    Raises:
        TypeError: ``func`` is not callable.
    """
    return _runtime.submitter.submit(func, args, kwargs)


def wait(
    fs: Iterable[cf.Future[Any]], timeout: float | None = -1, return_when: str = ALL_COMPLETED
) -> Any:
    """Wait for futures to complete, as ``concurrent.futures.wait``.

    Args:
        fs: the futures.
        timeout: seconds to wait; negative or None: no limit (SCOOP's default
            is -1); 0: just look.
        return_when: ``FIRST_COMPLETED``, ``FIRST_EXCEPTION`` or ``ALL_COMPLETED``.

    Returns:
        A named tuple ``(done, not_done)`` of sets of futures.

    Raises:
        ValueError: ``return_when`` is not one of the three constants.
    """
    if return_when not in (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED):
        raise ValueError(
            f"return_when must be FIRST_COMPLETED, FIRST_EXCEPTION or ALL_COMPLETED, "
            f"got {return_when!r}"
        )
    limit = None if timeout is None or timeout < 0 else timeout
    return cf.wait(list(fs), timeout=limit, return_when=return_when)


def as_completed(
    fs: Iterable[cf.Future[Any]], timeout: float | None = None
) -> Iterator[cf.Future[Any]]:
    """Yield the futures as they complete (finished or cancelled).

    Args:
        fs: the futures.
        timeout: seconds for the whole iteration; None: no limit.

    Returns:
        An iterator over the futures.

    Raises:
        TimeoutError: ``timeout`` passed with futures still running.
    """
    return cf.as_completed(list(fs), timeout=timeout)


def mapReduce(
    mapFunc: Callable[..., Any],
    reductionFunc: Callable[[Any, Any], Any],
    *iterables: Iterable[Any],
    **kwargs: Any,
) -> Any:
    """Map in parallel, then reduce the results pairwise, like SCOOP.

    The pairs form SCOOP's tree (halves, recursively), so a reduction that
    is not associative gives SCOOP's answer too. The map runs on the
    workers, the (usually cheap) reductions in the caller.

    Args:
        mapFunc: applied to each item, as in :func:`map`.
        reductionFunc: combines two results into one.
        *iterables: the items.
        **kwargs: ``timeout`` for the map and keywords for ``mapFunc``, as in :func:`map`.

    Returns:
        The single reduced value (the mapped value itself for one item).

    Raises:
        TypeError: the iterables are empty: there is nothing to reduce.
        Exception: what ``mapFunc`` or ``reductionFunc`` raised.
    """
    values = _mapped(mapFunc, iterables, kwargs, "mapReduce")
    return values[0] if len(values) == 1 else _tree(values, reductionFunc, scan=False)


def mapScan(
    mapFunc: Callable[..., Any],
    reductionFunc: Callable[[Any, Any], Any],
    *iterables: Iterable[Any],
    **kwargs: Any,
) -> list[Any]:
    """Like :func:`mapReduce`, keeping intermediate reductions, exactly as SCOOP 0.7 does.

    SCOOP's result is not a textbook prefix scan beyond two items: each
    half keeps its own partial values and the last entry is the total (for
    ``[1, 2, 3, 4, 5]`` and ``add``: ``[1, 3, 3, 4, 15]``). It is kept here so
    migrated programs print what they printed before; for a prefix scan use
    ``itertools.accumulate(futures.map(...), fn)``.

    Args:
        mapFunc: applied to each item, as in :func:`map`.
        reductionFunc: combines two results into one.
        *iterables: the items.
        **kwargs: ``timeout`` for the map and keywords for ``mapFunc``, as in :func:`map`.

    Returns:
        SCOOP's list of reduced values; its last entry is the full reduction.

    Raises:
        TypeError: the iterables are empty.
        Exception: what ``mapFunc`` or ``reductionFunc`` raised.
    """
    values = _mapped(mapFunc, iterables, kwargs, "mapScan")
    return [values[0]] if len(values) == 1 else _tree(values, reductionFunc, scan=True)


def _mapped(
    fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...], kwargs: dict[str, Any], name: str
) -> list[Any]:
    values = list(_imap(fn, iterables, kwargs, ordered=True))
    if not values:
        raise TypeError(f"futures.{name}() of empty iterables: there is nothing to reduce")
    return values


def _tree(values: list[Any], reduction: Callable[[Any, Any], Any], *, scan: bool) -> Any:
    """SCOOP 0.7's ``_recursiveReduce`` over mapped values (``len(values) >= 2``)."""
    half = len(values) // 2
    out = [
        part[0] if len(part) == 1 else _tree(part, reduction, scan=scan)
        for part in (values[:half], values[half:])
    ]
    if not scan:
        return reduction(*out)
    last = copy.copy(out)
    if type(out[0]) is not list:
        out[0] = [out[0]]
    else:
        last[0] = out[0][-1]
    if type(out[1]) is list:
        out[0].extend(out[1][:-1])
        last[1] = out[1][-1]
    out[0].append(reduction(*last))
    return out[0]


def shutdown(wait: bool = True) -> None:
    """Release the workers (they start again on the next call).

    SCOOP's ``shutdown`` does nothing; here, as in PEP 3148, ``wait=True``
    waits for submitted futures, then stops parmap's worker processes.

    Args:
        wait: wait for submitted futures first (and stop the workers).
    """
    _runtime.submitter.shutdown(wait)
    if wait and not on_worker():
        parmap.shutdown()
