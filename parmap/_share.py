"""``parmap.share(obj)``: send a large read-only object to each worker once.

A :class:`Shared` handle is captured by the function like any other value.
When a call serializes its function, each handle inside it asks the call's
backend to publish the value once (Ray: the object store; Dask: ``scatter``
to every worker; process pools: one file each worker reads once) and pickles
as a small locator. On a worker, ``handle.value`` loads the value on first
use and caches it for every later batch and call.

A value lives as long as its handle in the caller::

    handle collected (del, gc)    each backend it was published on releases its
                                  copy (Backend.release: the object store, the
                                  cluster's dataset, the file)
    the next call's spec          carries the tokens of this process's live handles
                                  (live_shares); a worker drops the cached values of
                                  this process that are not among them

So a program that shares a new value every generation holds one generation's
value at a time, in the caller, the engines and the workers.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from parmap import _worker
from parmap._serialization import dumps

if TYPE_CHECKING:
    from parmap.backends._base import Backend, Locator

__all__ = ["Shared", "live_shares", "publishing", "share"]

_log = logging.getLogger("parmap")

T = TypeVar("T")
# This process's tokens start with OWNER: a worker serving several callers drops only
# the values of the caller whose live tokens it was told.
OWNER = uuid.uuid4().hex[:12] + "-"
_MAX_LIVE = 256  # past this many live handles, a call's spec carries none (workers keep all)
_sent: set[str] = set()  # tokens of live handles that were pickled for workers
_publisher: ContextVar[Backend | None] = ContextVar("parmap_publisher", default=None)


@contextlib.contextmanager
def publishing(backend: Backend) -> Iterator[None]:
    """While active, pickled handles publish their value through ``backend``."""
    token = _publisher.set(backend)
    try:
        yield
    finally:
        _publisher.reset(token)


class Shared(Generic[T]):
    """A handle to a read-only value that workers receive once.

    Read it with ``handle.value``, in the caller or on a worker.
    """

    def __init__(self, value: T) -> None:
        self._value = value
        self._token = OWNER + uuid.uuid4().hex
        self._locators: weakref.WeakKeyDictionary[Backend, Locator] = weakref.WeakKeyDictionary()
        weakref.finalize(self, _collected, self._token, self._locators)

    @property
    def value(self) -> T:
        """The shared object."""
        return self._value

    def __repr__(self) -> str:
        return f"<parmap.Shared {type(self._value).__name__} {self._token[:8]}>"

    def __reduce__(self) -> tuple[Any, ...]:
        _sent.add(self._token)
        backend = _publisher.get()
        if backend is None:
            from parmap.backends._base import InlineLocator

            return (_RemoteShared, (self._token, InlineLocator(dumps(self._value))))
        locator = self._locators.get(backend)
        if locator is None or not locator.current():
            locator = self._locators[backend] = backend.publish(self._token, dumps(self._value))
        return (_RemoteShared, (self._token, locator))


def _collected(token: str, locators: weakref.WeakKeyDictionary[Backend, Locator]) -> None:
    """A handle was collected: every backend it was published on forgets its value.

    Runs in whichever thread the collection happened in: ``release`` must not block.
    """
    _sent.discard(token)
    for backend in list(locators.keys()):
        try:
            backend.release(token)
        except Exception:  # never raise from a finalizer; the value stays until shutdown
            _log.warning("parmap: %s could not release a shared value", backend.name,
                         exc_info=True)  # fmt: skip


def live_shares() -> tuple[str, ...]:
    """What a call's spec tells workers: this process's prefix and its live tokens.

    Empty (workers drop nothing) when this process has too many live handles.
    """
    while True:
        try:  # a collection in this very thread may shrink the set while it is read
            live = list(_sent)
            break
        except RuntimeError:  # pragma: no cover - rare
            continue
    if len(live) > _MAX_LIVE:
        return ()
    return (OWNER, *sorted(live))


class _RemoteShared(Shared[T]):
    """A handle as seen on a worker: loads the value on first access."""

    def __init__(self, token: str, locator: Locator) -> None:
        self._token = token
        self._locator = locator
        _worker.note_share(token)  # the function that holds it is dropped with the value

    @property
    def value(self) -> T:
        try:
            return _worker.shared_values[self._token]
        except KeyError:
            value = _worker.shared_values[self._token] = self._locator.load()
            return value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_RemoteShared, (self._token, self._locator))


def share(value: T) -> Shared[T]:
    """Wrap a large read-only object so each worker receives it once.

    Capture the handle in your function and read ``handle.value`` there::

        data = parmap.share(big_array)
        parmap.parmap(lambda i: data.value[i].sum(), range(100))

    Args:
        value: any picklable object. Workers must treat it as read-only.

    Returns:
        A :class:`Shared` handle.
    """
    return Shared(value)
