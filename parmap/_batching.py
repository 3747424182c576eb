"""Automatic batching: how many items go into each task.

One policy for every backend. Its inputs are the backend's per-batch overhead
(``Backend.batch_overhead``, seconds per round trip), the number of workers and
the function's per-item cost, which is measured on the workers and remembered
across calls (keyed by the function's content digest, with its qualified name
as a fallback), so the second DEAP generation starts where the first left off.

    cost unknown ──► probe: one small batch per worker, wait for timings
         │
         ▼
    rounds of one batch per worker, all of      guided self-scheduling in rounds:
    size = ceil(remaining / (2 * workers))        big batches first, a finer tail;
      below tail_size: the last round, what is    equal sizes within a round, so any
        left in equal shares                      placement of them stays balanced
      tail_size: batch lasts >= 8 x overhead       (a finer tail would cost more
                                                    round trips than it saves idling)
      max_size: batch lasts <= 1 s                 (balance, progress, timeouts)
      and never above ceil(total / workers)        (every worker gets work)

    unsized input (a generator, imap): 4 x min_size (a batch lasts >= 20 x
    overhead: overhead <= 5%), at most STREAM_BATCH_ITEMS items, so that what
    is read ahead and in flight stays bounded in memory

With ``chunksize=`` the user's size is used as is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

from parmap._costs import costs
from parmap._errors import add_note

__all__ = ["Batcher", "read_items"]

OVERHEAD_FACTOR = 20.0  # a stream's batches: overhead <= 5% of their time
TAIL_FACTOR = 8.0  # the guided rounds end where a batch would last less than this x overhead
MAX_BATCH_SECONDS = 1.0
PROBE_SIZE = 4
STREAM_BATCH_ITEMS = 50_000  # a cheap function over a generator: ~1-2 MB per batch


class Batcher:
    """Decides the size of each batch of one call.

    Args:
        workers: how many batches can run at once.
        batch_overhead: the backend's cost of one batch round trip, in seconds.
        total: the number of items if known (``None`` for unsized input).
        keys: cost-memory keys of the function (digest, then qualified name).
        chunksize: a fixed batch size chosen by the user, or ``None`` for auto.
    """

    def __init__(
        self,
        workers: int,
        batch_overhead: float,
        total: int | None,
        keys: tuple[str | None, ...],
        chunksize: int | None = None,
    ) -> None:
        self.workers = max(1, workers)
        self.batch_overhead = batch_overhead
        self.total = total
        self.keys = keys
        self.chunksize = chunksize
        self.cost = costs.get(*keys)
        self.dispatched = 0
        self._round_size = 0
        self._round_left = 0  # batches still to dispatch at _round_size

    @property
    def probing(self) -> bool:
        """True while the per-item cost is unknown (only one batch per worker then)."""
        return self.chunksize is None and self.cost is None

    def next_size(self) -> int:
        """The size of the next batch to dispatch."""
        if self.chunksize is not None:
            return self.chunksize
        if self.cost is None:
            return PROBE_SIZE
        cost = max(self.cost, 1e-9)
        min_size = max(1, math.ceil(OVERHEAD_FACTOR * self.batch_overhead / cost))
        max_size = max(min_size, math.floor(MAX_BATCH_SECONDS / cost))
        if self.total is None:
            return min(max_size, 4 * min_size, STREAM_BATCH_ITEMS)
        tail_size = max(1, math.ceil(TAIL_FACTOR * self.batch_overhead / cost))
        if self._round_left == 0:  # a new round: one batch per worker, all the same size
            remaining = max(1, self.total - self.dispatched)
            size = math.ceil(remaining / (2 * self.workers))
            if size < tail_size:  # the last round: what is left, in equal shares
                size = math.ceil(remaining / self.workers)
            self._round_size = max(1, min(size, max_size, math.ceil(self.total / self.workers)))
            self._round_left = self.workers
        return self._round_size

    def took(self, size: int) -> None:
        """Record that a batch of ``size`` items was dispatched."""
        self.dispatched += size
        self._round_left = max(0, self._round_left - 1)

    def observe(self, items: int, seconds: float) -> None:
        """Learn from one finished batch: ``items`` computed in ``seconds`` on a worker."""
        if items > 0:
            self.cost = costs.observe(self.keys, items, seconds)


def read_items(items: Iterator[Any], size: int, start: int) -> list[Any]:
    """The next ``size`` items (fewer at the end); an input error names its index.

    Args:
        items: the call's input iterator.
        size: how many to read.
        start: the index of the first item read.

    Raises:
        Exception: whatever the input iterator raised, with a note naming the item.
    """
    chunk: list[Any] = []
    try:
        chunk.extend(itertools.islice(items, size))
    except Exception as exc:
        index = start + len(chunk)
        add_note(exc, f"parmap: raised by the input iterable while reading item {index}")
        raise
    return chunk
