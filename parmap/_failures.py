"""Turning a worker's error record back into the exception the caller sees.

A batch that stops on an error returns an :class:`~parmap._worker.ErrorRecord`
instead of raising through the engine, so the user's exception never meets an
engine's own error machinery. Here, in the caller, it becomes::

    stage "item"    fn's own exception, same type, the worker's traceback as
                    its __cause__ and a note naming the item, its index and
                    the worker ("parmap: raised by fn on item 37: 37 (loky
                    worker pid 812)"); with return_exceptions, the same,
                    kept in the item's place (an ItemFailed in the results)
    stage "timeout" ItemTimeoutError naming the item (item_timeout=; see item_timeout)
    stage "init"    WorkerInitializationError
    stage "load"    SerializationError: the worker could not unpickle fn or items
    stage "result"  SerializationError: a result could not be pickled back
"""

from __future__ import annotations

import os
import reprlib
from collections.abc import Sequence
from typing import Any

from parmap._errors import (
    ItemTimeoutError,
    RemoteTraceback,
    SerializationError,
    WorkerInitializationError,
    add_note,
)
from parmap._worker import ErrorRecord, ItemFailed, Outcome

__all__ = ["error_from", "in_place", "item_error", "item_repr", "item_timeout", "span"]

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6

LOAD_HINT = (
    "Workers must be able to import the modules your function and items come from "
    "(install them there, or ship one by value with cloudpickle.register_pickle_by_value(module)); "
    "classes made at run time can be made on each worker with initializer="
)


def item_repr(item: Any) -> str:
    """A short repr of an item, for error messages."""
    return _repr.repr(item)


def span(start: int, count: int) -> str:
    """Item indices ``start`` to ``start + count - 1``, as people write them."""
    end = start + count - 1
    return str(start) if end <= start else f"{start}-{end}"


def error_from(
    outcome: Outcome,
    start: int,
    items: Sequence[Any],
    backend: str,
    serializes: bool,
    fn_name: str,
) -> BaseException:
    """The exception to raise for a batch that stopped on an error record.

    Args:
        outcome: the batch's outcome; its ``error`` is set.
        start: the index of the batch's first item in the call.
        items: the batch's items.
        backend: the backend's name, for the message.
        serializes: whether the error crossed a process boundary (then the
            worker's traceback text becomes the ``__cause__``).
        fn_name: the function's qualified name.
    """
    record = outcome.error
    assert record is not None
    where = f"{backend} worker pid {outcome.pid or os.getpid()}"  # 0: run in this process
    if record.position is not None:
        item = f"item {start + record.position}: {item_repr(items[record.position])}"
    else:
        item = f"items {span(start, len(items))}"
    if record.stage == "item":
        return item_error(record, item, where, serializes, fn_name)
    cause = record.exc if record.exc is not None and not serializes else None
    if record.stage == "init":
        error: BaseException = WorkerInitializationError(
            f"initializer raised {record.type_name}: {record.message} ({where}); "
            "no item ran. Fix the initializer; it runs once in each worker process"
        )
    elif record.stage == "result":
        error = SerializationError(
            f"the result of {fn_name} on {item} could not be pickled to send it "
            f"back from the {where}: {record.type_name}: {record.message}"
        )
    else:
        error = SerializationError(
            f"the {where} could not unpickle the function or {item}: "
            f"{record.type_name}: {record.message}. {LOAD_HINT}"
        )
    error.__cause__ = cause or RemoteTraceback(record.tb)
    return error


def item_error(
    record: ErrorRecord, item: str, where: str, serializes: bool, fn_name: str
) -> BaseException:
    """fn's own exception: its type, the worker's traceback as its cause, a note."""
    exc = record.exc if record.exc is not None else rebuild(record)
    if serializes:
        exc.__cause__ = RemoteTraceback(record.tb)
    add_note(exc, f"parmap: raised by {fn_name} on {item} ({where})")
    return exc


def item_timeout(
    record: ErrorRecord,
    start: int,
    items: Sequence[Any],
    backend: str,
    fn_name: str,
    seconds: float,
) -> ItemTimeoutError:
    """The :class:`ItemTimeoutError` of the item a "timeout" record names."""
    assert record.position is not None
    index, shown = start + record.position, item_repr(items[record.position])
    return ItemTimeoutError(
        f"{fn_name} on item {index} ({shown}) {record.message} on the {backend} backend; "
        "its worker was stopped and replaced",
        index=index,
        item=shown,
        seconds=seconds,
    )


def in_place(
    results: list[Any], start: int, items: Sequence[Any], where: str, serializes: bool,
    fn_name: str,
) -> list[Any]:  # fmt: skip
    """``results`` with each :class:`ItemFailed` replaced by its exception (return_exceptions)."""
    for position, result in enumerate(results):
        if type(result) is ItemFailed:
            item = f"item {start + position}: {item_repr(items[position])}"
            results[position] = item_error(result.record, item, where, serializes, fn_name)
    return results


def rebuild(record: ErrorRecord) -> BaseException:
    """Re-create an exception that could not be pickled, keeping its type if possible."""
    module, _, name = record.type_name.rpartition(".")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
        return cls(record.message)
    except Exception:
        return RuntimeError(f"{record.type_name}: {record.message}")
