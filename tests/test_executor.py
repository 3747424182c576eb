"""backend=<your concurrent.futures.Executor>: parmap's batching on an executor it does not own.

The contract suite runs on a ThreadPoolExecutor and a ProcessPoolExecutor through the
``backend`` fixture; here, what is particular to an executor that is the caller's.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import multiprocessing
import os
import threading
import time
import weakref

import funcs
import pytest

import parmap
from parmap import _registry
from parmap.backends import ExecutorBackend

pytestmark = pytest.mark.timeout(120)


def test_one_task_per_batch_never_one_per_item():
    submitted = []

    class Counting(cf.ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted.append(len(args[1]))
            return super().submit(fn, *args, **kwargs)

    with Counting(2) as executor:
        got = parmap.parmap(funcs.square, range(10_000), backend=executor)
    assert got == [i * i for i in range(10_000)]
    assert sum(submitted) == 10_000 and len(submitted) < 200


def test_the_executor_stays_the_callers():
    with cf.ThreadPoolExecutor(2) as executor:
        assert parmap.parmap(funcs.square, range(5), backend=executor) == [0, 1, 4, 9, 16]
        parmap.shutdown()  # leaves it alone
        assert executor.submit(abs, -3).result() == 3
        assert parmap.parmap(funcs.square, range(3), backend=executor) == [0, 1, 4]


def test_the_registry_does_not_keep_an_executor_alive():
    executor = cf.ThreadPoolExecutor(2)
    name = parmap.get_backend(executor).name
    assert name.startswith("executor:ThreadPoolExecutor@")
    assert parmap.parmap(funcs.square, range(5), backend=executor) == [0, 1, 4, 9, 16]
    assert name in {backend.name for backend in _registry.live_backends()}
    executor.shutdown()
    ref = weakref.ref(executor)
    del executor
    gc.collect()
    assert ref() is None, "parmap kept the executor alive"
    assert name not in {backend.name for backend in _registry.live_backends()}
    assert name not in _registry._adopted


def test_a_shut_down_executor_says_to_pass_a_live_one():
    executor = cf.ThreadPoolExecutor(2)
    executor.shutdown()
    with pytest.raises(RuntimeError, match=r"was shut down\. Pass a live executor"):
        parmap.parmap(funcs.square, range(5), backend=executor)


def test_config_takes_an_executor_and_workers_sets_the_window():
    seen = []
    lock = threading.Lock()
    now = [0]

    def count(x):
        with lock:
            now[0] += 1
            seen.append(now[0])
        time.sleep(0.01)
        with lock:
            now[0] -= 1
        return x

    with cf.ThreadPoolExecutor(8) as executor, parmap.config(backend=executor):
        assert parmap.parmap(count, range(40), chunksize=1, workers=2) == list(range(40))
        assert 2 <= max(seen) <= 4  # two batches in flight per worker, not the 8 threads
        assert parmap.get_backend().source == "config"


def test_a_nested_call_on_a_full_executor_runs_in_place():
    with cf.ThreadPoolExecutor(2) as executor:

        def outer(x):
            return sum(parmap.parmap(funcs.square, range(x), backend=executor))

        got = parmap.parmap(outer, range(6), backend=executor, chunksize=1)
    assert got == [sum(i * i for i in range(x)) for x in range(6)]


class OwnThreads(cf.Executor):
    """A user's executor that runs tasks on threads of the caller's process, but is no
    ThreadPoolExecutor: parmap ships it pickled batches, as to any executor."""

    def __init__(self):
        self._pool = cf.ThreadPoolExecutor(2)

    def submit(self, fn, /, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._pool.shutdown(wait, cancel_futures=cancel_futures)


def test_batches_run_on_the_callers_own_threads_leave_it_a_caller(census):
    """A batch run in the caller's process marks only its thread as a worker: the
    caller's next calls still go to their backend, not in place (a backend named as an
    argument is used even on a worker: the later call takes it from the context)."""
    with OwnThreads() as executor:
        nested = parmap.parmap(funcs.pid, range(3), backend=executor, chunksize=1)
        assert nested == [os.getpid()] * 3
        got = parmap.parmap(lambda x: parmap.parmap(funcs.square, range(x)), range(4),
                            backend=executor, chunksize=1)  # fmt: skip
        assert got == [[i * i for i in range(x)] for x in range(4)]
    with parmap.config(backend="multiprocessing", workers=2):  # not an argument: see below
        pids = parmap.parmap(funcs.pid, range(8), chunksize=1)
    assert os.getpid() not in pids, "the caller was left marked as a worker: ran in place"


def test_something_else_is_a_clear_error():
    with pytest.raises(parmap.UnknownBackendError, match=r"concurrent\.futures\.Executor"):
        parmap.parmap(funcs.square, range(3), backend=object())


def test_the_class_is_public_and_described():
    with cf.ThreadPoolExecutor(3) as executor:
        parmap.parmap(funcs.square, range(3), backend=executor)
        name = parmap.get_backend(executor).name
        (backend,) = [b for b in _registry.live_backends() if b.name == name]
        assert isinstance(backend, ExecutorBackend)
        assert backend.workers == 3 and not backend.serializes and not backend.stops_running
        assert "ThreadPoolExecutor" in backend.describe()["executor"]
    parmap.shutdown()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_any_start_method(method, census):
    context = multiprocessing.get_context(method)
    with cf.ProcessPoolExecutor(2, mp_context=context) as executor:
        got = parmap.parmap(lambda x: (x + 1, os.getpid()), range(40), backend=executor)
    assert [x for x, _ in got] == list(range(1, 41))
    assert os.getpid() not in {pid for _, pid in got}


def test_loky_reusable_executor(census):
    loky = pytest.importorskip("loky")
    executor = loky.get_reusable_executor(max_workers=2)
    try:
        assert parmap.parmap(lambda x: -x, range(20), backend=executor) == [-i for i in range(20)]
        with pytest.raises(parmap.WorkerCrashedError, match="exited with code 3") as info:
            parmap.parmap(funcs.exit_at(5), range(10), backend=executor, chunksize=2)
        assert info.value.exitcode == 3
        fresh = loky.get_reusable_executor(max_workers=2)  # loky's way to start afresh
        assert parmap.parmap(funcs.square, range(4), backend=fresh) == [0, 1, 4, 9]
    finally:
        loky.get_reusable_executor(max_workers=2).shutdown(wait=True, kill_workers=True)


def test_retries_on_a_broken_executor_say_it_is_broken(tmp_path):
    with cf.ProcessPoolExecutor(2) as executor:
        marker = tmp_path / "crashed"
        with pytest.raises(parmap.WorkerCrashedError, match="pass a new one"):
            parmap.parmap(funcs.crash_once(marker), range(20), backend=executor, retries=2)


@pytest.mark.slow
def test_dask_client_executor(census):
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        executor = client.get_executor()
        got = parmap.parmap(lambda x: (x * 3, os.getpid()), range(50), backend=executor)
        assert [x for x, _ in got] == [3 * i for i in range(50)]
        assert os.getpid() not in {pid for _, pid in got}
        with pytest.raises(KeyError) as info:
            parmap.parmap(funcs.fail_at(13, KeyError), range(30), backend=executor)
        assert "item 13" in "\n".join(info.value.__notes__)
