"""parmap's exceptions.

A user's own exception is never wrapped: it comes back with its own type, the
worker's traceback chained as its ``__cause__`` and a note naming the failing
item. The classes below are for failures of the machinery itself::

    Exception
     └── ParmapError
          ├── UnknownBackendError        (also a ValueError)   bad backend name
          ├── BackendNotInstalledError   (also an ImportError) missing extra
          ├── SerializationError         (also a PicklingError) fn/item/result won't pickle
          ├── WorkerCrashedError                                a worker process died
          ├── WorkerInitializationError                         initializer= raised
          ├── TimeoutError               (also a TimeoutError)  timeout= exceeded
          └── ItemTimeoutError           (also a TimeoutError)  one item exceeded item_timeout=
"""

from __future__ import annotations

import pickle
import signal
from collections.abc import Sequence

__all__ = [
    "BackendNotInstalledError",
    "ItemTimeoutError",
    "ParmapError",
    "RemoteTraceback",
    "SerializationError",
    "TimeoutError",
    "UnknownBackendError",
    "WorkerCrashedError",
    "WorkerInitializationError",
    "add_note",
    "describe_exit",
]

_BuiltinTimeoutError = TimeoutError


class ParmapError(Exception):
    """Base class of the errors parmap itself raises."""


class UnknownBackendError(ParmapError, ValueError):
    """The backend name is not one parmap knows."""


class BackendNotInstalledError(ParmapError, ImportError):
    """The backend exists but the package it needs is not installed."""


class SerializationError(ParmapError, pickle.PicklingError):
    """The function, an item or a result could not be sent between processes."""


class WorkerInitializationError(ParmapError):
    """The ``initializer=`` callable raised on a worker; its exception is the cause."""


class WorkerCrashedError(ParmapError):
    """A worker process died while it held work: exit, signal, segfault or OOM kill.

    Attributes:
        exitcode: the worker's exit code (negative: killed by that signal), or None.
        items: the indices of the items that were in flight on the lost worker(s).
        retryable: False when sending the batch again cannot help (the worker died
            while starting, before any item ran): ``retries=`` does not apply.
        collateral: True when the batch was lost through no fault of its own: its worker
            lives, but data it needed was lost with other workers (a backend's
            ``translate`` says so). Such a batch is sent again without counting
            against ``retries=`` (a few times at most).
    """

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None = None,
        items: Sequence[int] = (),
        retryable: bool = True,
        collateral: bool = False,
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.items = tuple(items)
        self.retryable = retryable
        self.collateral = collateral


class TimeoutError(ParmapError, _BuiltinTimeoutError):
    """The call ran longer than its ``timeout=``; its running work was stopped."""


class ItemTimeoutError(ParmapError, _BuiltinTimeoutError):
    """One item ran longer than ``item_timeout=``; its worker was stopped and replaced.

    Attributes:
        index: the item's index in the call's input.
        item: a short repr of the item.
        seconds: the ``item_timeout`` it exceeded.
    """

    def __init__(self, message: str, *, index: int = -1, item: str = "", seconds: float = 0.0):
        super().__init__(message)
        self.index = index
        self.item = item
        self.seconds = seconds

    def __reduce__(self) -> tuple[object, ...]:
        return (_item_timeout, (str(self), self.index, self.item, self.seconds))


def _item_timeout(message: str, index: int, item: str, seconds: float) -> ItemTimeoutError:
    return ItemTimeoutError(message, index=index, item=item, seconds=seconds)


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback; set as the ``__cause__`` of re-raised errors."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def describe_exit(exitcode: int | None) -> str:
    """Say in words how a worker ended, with the likely cause.

    Args:
        exitcode: a process exit code; negative values are signal numbers.

    Returns:
        A phrase such as ``"was killed by SIGKILL (-9) ..."``.
    """
    if exitcode is None:
        return "died (exit code unknown)"
    if exitcode >= 0:
        return f"exited with code {exitcode} (a call to os._exit() or sys.exit() outside fn?)"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    hint = {
        "SIGKILL": "often the kernel's OOM killer: the machine may have run out of memory",
        "SIGSEGV": "a segmentation fault, usually in a C extension",
        "SIGBUS": "a bus error, usually in a C extension or a full /dev/shm",
        "SIGABRT": "an abort, usually a failed assertion in a C extension",
        "SIGTERM": "someone terminated it",
    }.get(name, "")
    return f"was killed by {name} ({exitcode})" + (f": {hint}" if hint else "")


def add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` (shown under its traceback), keeping its type."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python 3.10
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]
