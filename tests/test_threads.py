"""backend="threads": a pool of threads in the caller's process (the contract suite runs
on it through the ``backend`` fixture); here, what is particular to threads."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import funcs
import pytest

import parmap
from parmap.backends import on_worker

pytestmark = pytest.mark.timeout(60)


class Concurrency:
    """Counts how many calls run at the same time (a sleep releases the GIL)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.started: list[int] = []

    def __call__(self, x: int) -> int:
        with self.lock:
            self.started.append(x)
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(self.seconds)
        with self.lock:
            self.now -= 1
        return x


def test_workers_are_threads_of_this_process_and_respected():
    seen = Concurrency(0.02)
    got = parmap.parmap(seen, range(40), backend="threads", workers=3, chunksize=1)
    assert got == list(range(40))
    assert seen.most == 3
    assert set(parmap.parmap(funcs.pid, range(20), backend="threads")) == {os.getpid()}


def test_chosen_by_the_environment(monkeypatch):
    monkeypatch.setenv("PARMAP_BACKEND", "threads")
    assert parmap.get_backend().name == "threads"
    assert parmap.parmap(funcs.square, range(5), chunksize=1) == [0, 1, 4, 9, 16]


def test_on_worker_is_true_on_a_pool_thread_only():
    assert parmap.parmap(lambda _: on_worker(), range(8), backend="threads") == [True] * 8
    assert not on_worker()


def test_a_nested_call_on_a_full_pool_runs_in_place():
    """Every pool thread runs an outer item that maps again on this same backend: were
    the inner batches queued to the pool, they would wait for ever."""

    def outer(x):
        inner = parmap.parmap(funcs.square, range(x), backend="threads", workers=2)
        return (sum(inner), threading.current_thread().name)

    got = parmap.parmap(outer, range(8), backend="threads", workers=2, chunksize=1)
    assert [total for total, _ in got] == [sum(i * i for i in range(x)) for x in range(8)]
    assert all(name.startswith("parmap-pool") for _, name in got)


def test_timeout_says_running_items_finish_and_no_further_item_starts(caplog):
    seen = Concurrency(0.3)
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="parmap"),
        pytest.raises(parmap.TimeoutError, match="finish in the background") as info,
    ):
        parmap.parmap(seen, range(20), backend="threads", workers=2, timeout=0.45)
    assert time.monotonic() - started < 0.9, "the call waited for the running items"
    assert "thread cannot be killed" in str(info.value)
    assert "cannot be stopped" in caplog.text
    at_timeout = len(seen.started)
    time.sleep(0.7)  # the items running at the timeout end; none starts after them
    assert len(seen.started) == at_timeout <= 4
    assert seen.now == 0


def test_ctrl_c_stops_waiting_at_once(caplog):
    seen = Concurrency(1.0)
    main = threading.main_thread().ident
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))  # as at a terminal
    started = time.monotonic()
    timer.start()
    with caplog.at_level(logging.WARNING, logger="parmap"), pytest.raises(KeyboardInterrupt):
        parmap.parmap(seen, range(10), backend="threads", workers=2, chunksize=1)
    assert time.monotonic() - started < 0.9, "Ctrl-C waited for the running items"
    assert "running Python threads cannot be stopped" in caplog.text
    time.sleep(1.0)
    assert len(seen.started) == 2, "an item started after Ctrl-C"
    assert parmap.parmap(funcs.square, range(4), backend="threads") == [0, 1, 4, 9]


def live_pools(workers=None):
    """The pool threads of the live threads backends (of ``workers``, if given)."""
    found = []
    for backend in parmap._registry.live_backends():
        mine = backend.name == "threads" and workers in (None, backend.workers)
        if mine and backend._pool is not None:
            found += backend._pool.threads
    return found


def test_shutdown_ends_the_pool_threads():
    parmap.parmap(funcs.square, range(10), backend="threads")
    threads = live_pools()
    assert threads and all(thread.is_alive() for thread in threads)
    parmap.shutdown()
    assert not any(thread.is_alive() for thread in threads)


def test_a_stopped_pool_is_replaced_and_its_threads_end_after_their_item():
    parmap.parmap(funcs.square, range(4), backend="threads", workers=3)
    stopped = live_pools(workers=3)
    seen = Concurrency(0.3)
    with pytest.raises(parmap.TimeoutError):
        parmap.parmap(seen, range(6), backend="threads", workers=3, timeout=0.1, chunksize=1)
    assert parmap.parmap(funcs.square, range(6), backend="threads", workers=3)[-1] == 25
    fresh = live_pools(workers=3)
    assert len(fresh) == 3 and not set(fresh) & set(stopped), "the stopped pool was reused"
    deadline = time.monotonic() + 5
    while any(thread.is_alive() for thread in stopped) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(thread.is_alive() for thread in stopped), "the stopped pool's threads live on"
