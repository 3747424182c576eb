"""What the Ray backend runs on its workers, and how shared values reach them.

A worker is a ``Worker`` actor: one persistent Ray worker process that runs
batches one at a time with ``parmap._worker.run_batch``. Each batch carries a
small ``head`` (the pickled call spec) and, when needed, a ``holder``: the
ObjectRef of the call's bundle (the whole spec and the refs of its
``parmap.share()`` values), nested in a list so that Ray passes it along
without fetching it. A worker fetches the bundle only when it lacks
something: the function (cached by digest), the initializer's run, or a
shared value (cached by token). So the function and each shared value cross
to each worker once, however many batches and calls follow.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

import ray

from parmap import _worker
from parmap._serialization import loads
from parmap._worker import CallSpec, run_batch
from parmap.backends._base import Locator

__all__ = ["RayLocator", "Worker", "collected_refs", "execute", "runtimes_started"]

_batch_refs: dict[str, Any] = {}  # share() token -> ObjectRef, while a batch runs
runtimes_started = [0]  # in the caller: Ray runtimes connected to so far (refs die with one)


def execute(head: bytes, holder: list[Any] | None, items: bytes) -> bytes:
    """Run one batch; fetch the call's bundle only if this worker lacks something."""
    spec, shares = pickle.loads(head)
    refs: dict[str, Any] = {}
    if holder is not None and _needs_bundle(spec, shares):
        spec, refs = ray.get(holder[0])
    _batch_refs.update(refs)
    try:
        return run_batch(spec, items)
    finally:
        for token in refs:
            _batch_refs.pop(token, None)


def _needs_bundle(spec: CallSpec, shares: tuple[str, ...]) -> bool:
    """Whether this worker lacks the function, the initializer's run or a shared value."""
    return not _worker.holds(spec) or any(token not in _worker.shared_values for token in shares)


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class Worker:
    """One persistent worker process of the Ray backend's pool."""

    def run(self, head: bytes, holder: list[Any] | None, items: bytes) -> bytes:
        return execute(head, holder, items)


class RayLocator(Locator):
    """A ``parmap.share()`` value in Ray's object store.

    In the caller it holds the ObjectRef. Pickled into a function it becomes
    its token alone and hands the ref to :func:`collected_refs`: the call then
    passes the ref to Ray beside the function, so Ray counts the reference
    (and frees the value once no call and no ``Shared`` handle needs it).
    """

    def __init__(self, token: str, ref: Any = None) -> None:
        self.token = token
        self.ref = ref
        self.runtime = runtimes_started[0]  # the ref belongs to this runtime

    def current(self) -> bool:
        return self.ref is None or self.runtime == runtimes_started[0]

    def __reduce__(self) -> tuple[Any, ...]:
        if self.ref is not None:
            collected_refs().append((self.token, self.ref))
        return (RayLocator, (self.token,))

    def load(self) -> Any:
        ref = self.ref if self.ref is not None else _batch_refs.get(self.token)
        if ref is None:
            raise RuntimeError(
                f"the parmap.share() value {self.token[:8]} is not available on this Ray "
                "worker: read handle.value inside the mapped function or the initializer"
            )
        return loads(ray.get(ref))


_local = threading.local()


def collected_refs() -> list[tuple[str, Any]]:
    """The ``(token, ObjectRef)`` pairs pickled in this thread since the list was cleared."""
    refs: list[tuple[str, Any]] | None = getattr(_local, "refs", None)
    if refs is None:
        refs = _local.refs = []
    return refs
