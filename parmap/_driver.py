"""Driving one call on a backend: the window of batches in flight, results in order.

The one loop in the core that schedules work. A backend places each batch on
a worker (``parmap.backends``); this loop decides how many are out at once,
in what size, and what becomes of each::

    Driver.batches()  ─────────────────────────────────────────────────────────┐
      read the next batch from the input (size: _batching.Batcher)              │
      backend.submit(prepared, batch)   while the window has room              │
      backend.wait(in_flight)           until one batch is done, or the timeout │
      worker: run_batch -> Outcome      results and timing, or an error record  │
      learn the per-item cost; retry a batch lost with its worker; raise        │
      yield results in input order (or as completed)  ◄────────────────────────┘

On any exit from the loop (error, timeout, Ctrl-C, an abandoned ``imap``) the
batches still in flight are cancelled; on timeout, a lost worker and Ctrl-C,
running work is stopped too.

A backend that runs ``fn`` in other processes may draw from the caller's
global ``random`` while it starts an engine or talks to it, and a seeded
program (a DEAP run) must draw the same numbers on every backend: the call
hands the caller's ``random`` state back as it found it each time control
returns to the caller (see :class:`RandomState`).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import random
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from parmap._batching import Batcher, read_items
from parmap._errors import SerializationError, TimeoutError, WorkerCrashedError
from parmap._failures import error_from, in_place, item_repr, item_timeout, span
from parmap._serialization import dumps, loads
from parmap._worker import Outcome
from parmap.backends._base import Backend

__all__ = ["Driver", "RandomState", "on_first_batch"]

log = logging.getLogger("parmap")

FREE_RESENDS = 5  # times a batch lost as collateral of other deaths is sent again for free

# Called once, as soon as a call's first batch is in its backend's hands (or the call
# ends without one). parmap.scoop sets it to hand over submitted calls in their order.
on_first_batch: ContextVar[Callable[[], None] | None] = ContextVar(
    "parmap_on_first_batch", default=None
)


class RandomState:
    """The caller's global ``random`` state, kept while parmap's engines work.

    Taken before a backend that runs ``fn`` elsewhere is started or used, and
    put back each time control returns to the caller: whatever the engine drew
    in this process meanwhile (Ray's start draws port numbers and ids, a Dask
    client picks a worker to gather from) is undone, and ``fn`` itself draws on
    the workers. A thread that draws from the global ``random`` while another
    thread's call runs sees its draws undone too: such threads should use a
    ``random.Random()`` of their own.
    """

    def __init__(self) -> None:
        self.state = random.getstate()

    def give_back(self) -> None:
        """Put the caller's state back (control returns to the caller)."""
        random.setstate(self.state)

    def take(self) -> None:
        """Note the caller's state (control comes back to parmap)."""
        self.state = random.getstate()


@dataclass
class Batch:
    """One batch of a call: where its items start, the items, what was sent.

    A batch whose item timed out (``item_timeout=``, with ``return_exceptions``)
    goes on as a batch of the items after that one, under the same ``seq``; its
    ``done`` holds the results of the parts that came back.
    """

    seq: int
    start: int
    items: Sequence[Any]
    payload: Any
    attempts: int = 0
    done: list[Any] = field(default_factory=list)
    exposed: bool = False  # in flight when a stuck worker was stopped: a crash is not its own
    resent: int = 0  # times sent again for free, lost as collateral

    def span(self) -> str:
        return span(self.start, len(self.items))


class Driver:
    """Runs one call's items on a leased backend (see the module docstring).

    Args:
        backend: the backend, already prepared for this call.
        prepared: what ``backend.prepare`` returned.
        items: the input iterator, positioned at item ``start``.
        batcher: sizes the batches.
        fn_name: for messages.
        start: the index of the first item read from ``items``.
        ordered: results in input order, else as batches complete.
        progress: a tqdm bar, or None.
        timeout: seconds for the whole call, counted from ``started``.
        retries: times a batch lost with its worker is sent again.
        random_state: the caller's ``random`` state to keep, or None.
        return_exceptions: an item's exception (or ItemTimeoutError, or a
            WorkerCrashedError once retries are spent) is its result.
        item_timeout: the seconds each item may run (the workers watch it).
    """

    def __init__(
        self,
        backend: Backend,
        prepared: Any,
        items: Iterator[Any],
        batcher: Batcher,
        fn_name: str,
        *,
        start: int = 0,
        ordered: bool = True,
        progress: Any = None,
        timeout: float | None = None,
        retries: int = 0,
        started: float | None = None,
        random_state: RandomState | None = None,
        return_exceptions: bool = False,
        item_timeout: float | None = None,
    ) -> None:
        self.backend = backend
        self.prepared = prepared
        self.items = items
        self.batcher = batcher
        self.fn_name = fn_name
        self.start = start
        self.ordered = ordered
        self.bar = progress
        self.timeout = timeout
        self.retries = retries
        self.started = time.monotonic() if started is None else started
        self.random_state = random_state
        self.return_exceptions = return_exceptions
        self.item_timeout = item_timeout
        self.done_items = 0

    def batches(self) -> Generator[list[Any], None, None]:
        """Drive the call; yield the results batch by batch."""
        in_flight: dict[cf.Future[Any], Batch] = {}
        keep = self.random_state
        stop_running = True
        try:
            for results in self._drive(in_flight):
                if keep is not None:
                    keep.give_back()
                yield results
                if keep is not None:
                    keep.take()
            stop_running = False
        except GeneratorExit:  # the caller abandoned imap(): cancel what has not started
            stop_running = False
            raise
        except Exception as exc:  # fn's error: running batches are bounded, let them end
            stop_running = isinstance(exc, (TimeoutError, WorkerCrashedError))
            raise
        finally:  # KeyboardInterrupt and other BaseExceptions stop running work
            if in_flight:
                self.backend.cancel(list(in_flight), stop_running=stop_running)
            if keep is not None:
                keep.give_back()

    def _drive(self, in_flight: dict[cf.Future[Any], Batch]) -> Iterator[list[Any]]:
        ready: dict[int, list[Any]] = {}
        next_seq = seq = 0
        next_index = self.start
        exhausted = False
        while True:
            while not exhausted and self._room(in_flight, ready):
                size = self.batcher.next_size()
                chunk = read_items(self.items, size, next_index)
                exhausted = len(chunk) < size
                if chunk:
                    batch = Batch(seq, next_index, chunk, self._payload(chunk, next_index))
                    self._submit(batch, in_flight)
                    self.batcher.took(len(chunk))
                    seq, next_index = seq + 1, next_index + len(chunk)
            if not in_flight:
                return
            done = self.backend.wait(list(in_flight), self._remaining())
            if not done:
                self._time_out()
            for future in sorted(done, key=lambda f: in_flight[f].seq):
                batch = in_flight.pop(future)
                results = self._collect(future, batch, in_flight)
                if results is None:  # sent again: after a crash, or the rest of a batch
                    continue
                self.done_items += len(results)
                if self.bar is not None:
                    self.bar.update(len(results))
                if batch.done:  # the parts of a batch that timed out and went on
                    results = batch.done + results
                if self.ordered:
                    ready[batch.seq] = results
                else:
                    yield results
            while next_seq in ready:
                yield ready.pop(next_seq)
                next_seq += 1
            if self._remaining() == 0.0:
                self._time_out()

    def _room(self, in_flight: dict[Any, Batch], ready: dict[int, Any]) -> bool:
        workers = self.backend.workers
        window = workers if self.batcher.probing else 2 * workers
        return len(in_flight) < window and len(in_flight) + len(ready) < 8 * workers

    def _payload(self, chunk: list[Any], start: int) -> Any:
        if not self.backend.serializes:
            return chunk
        try:
            return dumps(chunk)
        except Exception as exc:
            position = _first_unpicklable(chunk)
            what = "an item"
            if position >= 0:
                what = f"item {start + position} ({item_repr(chunk[position])})"
            raise SerializationError(
                f"{what} could not be pickled to send it to a {self.backend.name} worker: {exc}"
            ) from exc

    def _submit(self, batch: Batch, in_flight: dict[cf.Future[Any], Batch]) -> None:
        try:
            future = self.backend.submit(self.prepared, batch.payload)
        except Exception as exc:
            error = self.backend.translate(exc, None)
            if error is exc:
                raise
            raise error from exc
        in_flight[future] = batch
        hook = on_first_batch.get()
        if hook is not None:
            on_first_batch.set(None)
            hook()

    def _collect(
        self, future: cf.Future[Any], batch: Batch, in_flight: dict[cf.Future[Any], Batch]
    ) -> list[Any] | None:
        """One finished batch's results; None if it was sent again (or went on)."""
        try:
            raw = future.result()
        except BaseException as exc:
            error = self.backend.translate(exc, future)
            if isinstance(error, WorkerCrashedError):
                return self._lost(error, exc, batch, in_flight)
            if error is exc:
                raise
            raise error from exc
        outcome: Outcome = loads(raw) if isinstance(raw, bytes) else raw
        if outcome.stuck:  # a thread there still runs the item that timed out
            self._stop_worker(future, outcome, in_flight)
        if outcome.error is not None:
            return self._stopped(outcome, batch, in_flight)
        self.batcher.observe(len(batch.items), outcome.seconds)
        results = outcome.results or []
        if self.return_exceptions:
            where = f"{self.backend.name} worker pid {outcome.pid or os.getpid()}"
            in_place(results, batch.start, batch.items, where, self.backend.serializes,
                     self.fn_name)  # fmt: skip
        return results

    def _lost(
        self,
        error: WorkerCrashedError,
        cause: BaseException,
        batch: Batch,
        in_flight: dict[cf.Future[Any], Batch],
    ) -> list[Any] | None:
        """A batch lost with its worker: sent again while retries last, else the error.

        A batch caught in the stop of another's stuck worker is sent again for free, every
        time: each stop took out an item that timed out, so there are no more stops than
        such items (a pool that stops as a whole, as loky's does, catches every batch in
        flight each time). One lost as collateral of other workers' deaths is sent again
        for free a few times at most (nothing bounds those)."""
        free = batch.exposed or (error.collateral and batch.resent < FREE_RESENDS)
        if error.retryable and (free or batch.attempts < self.retries):
            if free and not batch.exposed:
                batch.resent += 1
            elif not free:
                batch.attempts += 1
                log.warning("parmap: %s; retrying items %s", error, batch.span())
            batch.exposed = False
            self._submit(batch, in_flight)
            return None
        crashed = self._crashed(error, batch, in_flight)
        if not self.return_exceptions:
            raise crashed from cause
        lost = WorkerCrashedError(
            str(crashed),
            exitcode=error.exitcode,
            items=range(batch.start, batch.start + len(batch.items)),
        )
        return [lost] * len(batch.items)  # fmt: skip

    def _stopped(
        self, outcome: Outcome, batch: Batch, in_flight: dict[cf.Future[Any], Batch]
    ) -> list[Any] | None:
        """A batch stopped by an error record: raise it, or with an item that timed out
        and ``return_exceptions``, keep its error and send the items after it on."""
        record = outcome.error
        assert record is not None
        name, serializes = self.backend.name, self.backend.serializes
        if record.stage != "timeout":
            raise error_from(outcome, batch.start, batch.items, name, serializes, self.fn_name)
        assert record.position is not None and self.item_timeout is not None
        timed_out = item_timeout(record, batch.start, batch.items, name, self.fn_name,
                                 self.item_timeout)  # fmt: skip
        if not self.return_exceptions:
            raise timed_out
        position = record.position
        results = outcome.results or []
        where = f"{name} worker pid {outcome.pid}"
        head = in_place(results, batch.start, batch.items, where, serializes, self.fn_name)
        rest = batch.items[position + 1 :]
        if not rest:
            return [*head, timed_out]
        batch.done += [*head, timed_out]
        self.done_items += len(head) + 1
        if self.bar is not None:
            self.bar.update(len(head) + 1)
        start = batch.start + position + 1
        after = Batch(batch.seq, start, rest, self._payload(list(rest), start), done=batch.done)
        self._submit(after, in_flight)
        return None

    def _stop_worker(
        self, future: cf.Future[Any], outcome: Outcome, in_flight: dict[cf.Future[Any], Batch]
    ) -> None:
        """Have the backend stop and replace a worker left running a timed-out item; the
        batches in flight now may be lost with it, and are sent again if so."""
        for other in in_flight.values():
            other.exposed = True
        self.backend.stop_worker(future, outcome)

    def _crashed(
        self, error: WorkerCrashedError, batch: Batch, in_flight: dict[Any, Batch]
    ) -> WorkerCrashedError:
        lost = [batch, *in_flight.values()]
        spans = ", ".join(b.span() for b in sorted(lost, key=lambda b: b.start))
        hint = (
            "" if self.retries or not error.retryable else "; pass retries=N to retry lost batches"
        )
        message = f"{error}; it was running {self.fn_name}, items in flight: {spans}{hint}"
        indices = [i for b in lost for i in range(b.start, b.start + len(b.items))]
        return WorkerCrashedError(message, exitcode=error.exitcode, items=sorted(indices),
                                  retryable=error.retryable)  # fmt: skip

    def _remaining(self) -> float | None:
        if self.timeout is None:
            return None
        return max(0.0, self.timeout - (time.monotonic() - self.started))

    def _time_out(self) -> None:
        total = "?" if self.batcher.total is None else self.batcher.total
        raise TimeoutError(
            f"parmap call of {self.fn_name} exceeded timeout={self.timeout}s on the "
            f"{self.backend.name} backend ({self.done_items} of {total} items done); "
            + _STOPPED[self.backend.stops_running]
        )


_STOPPED = {  # what became of the running work, by the backend's stops_running fact
    True: "its running work was stopped",
    False: "no further item starts, but the items running now finish in the background "
    "(this backend cannot stop its workers: a running Python thread cannot be killed, "
    "nor can the workers of an executor parmap does not own)",
}


def _first_unpicklable(chunk: list[Any]) -> int:
    for position, item in enumerate(chunk):
        try:
            dumps(item)
        except Exception:
            return position
    return -1
