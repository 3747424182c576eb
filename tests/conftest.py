"""Fixtures shared by every test: the backend list, deadlines and the process census."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time

import cloudpickle
import funcs
import psutil
import pytest

import parmap
from parmap import _worker
from parmap._registry import is_installed

cloudpickle.register_pickle_by_value(funcs)

BUILT_IN = ("serial", "threads", "multiprocessing", "loky", "ray", "dask")
# Every installed backend: the built-in ones, then any registered through an entry
# point (examples/custom_backend, once installed), which pass the same contract suite.
# (backend="mpi" is usable only in rank 0 of `mpiexec -n N python -m mpi4py.futures`: the
# suite runs it there, tests/test_mpi.py, with $PARMAP_TEST_BACKENDS=mpi, comma-separated
# names, narrowing the backend fixture to it.)
BACKENDS = [name for name in BUILT_IN if is_installed(name)] + [
    name for name in parmap.available_backends() if name not in BUILT_IN
]
NARROWED = [name for name in os.environ.get("PARMAP_TEST_BACKENDS", "").split(",") if name]
# Where fn may run in the test process itself (auto picks serial for small, cheap inputs).
IN_PROCESS = ("serial", "auto", "threads")
# The user's own executors, passed as backend=: a fresh one per test (a broken
# executor stays broken), shut down by the test's owner, never by parmap.
EXECUTORS = {
    "ThreadPoolExecutor": lambda: cf.ThreadPoolExecutor(2),
    "ProcessPoolExecutor": lambda: cf.ProcessPoolExecutor(
        2, mp_context=multiprocessing.get_context("forkserver")
    ),
}


def in_process(backend) -> bool:
    """Whether fn runs in the test process on this backend (nothing is pickled)."""
    return backend in IN_PROCESS or isinstance(backend, cf.ThreadPoolExecutor)


@pytest.fixture(params=NARROWED or [*BACKENDS, "auto", *EXECUTORS])
def backend(request):
    """Every installed backend, auto, and an executor of each kind; the contract suite
    runs once per each."""
    make = EXECUTORS.get(request.param)
    if make is None:
        yield request.param
        return
    executor = make()
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# One per parent process, started on first use and exiting with the parent (the
# stdlib's and loky's resource trackers, the forkserver): not workers.
PER_PROCESS_DAEMONS = ("resource_tracker", "forkserver")


def children() -> set[int]:
    """Pids of this process's live descendants, except the per-process daemons."""
    alive = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(name in " ".join(child.cmdline()) for name in PER_PROCESS_DAEMONS):
                continue
            alive.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def wait_for_no_children(before: set[int], deadline: float = 20.0) -> set[int]:
    """Wait until no descendant that was not in ``before`` is alive; return leftovers."""
    end = time.monotonic() + deadline
    while True:
        left = children() - before
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.1)


@pytest.fixture
def census():
    """Assert that a test leaves no new child process behind after parmap.shutdown()."""
    before = children()
    yield
    parmap.shutdown()
    left = wait_for_no_children(before)
    assert not left, f"processes left behind: {[psutil.Process(p).cmdline() for p in left]}"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in (
        "PARMAP_BACKEND",
        "PARMAP_WORKERS",
        "PARMAP_START_METHOD",
        "PARMAP_ITEM_TIMEOUT",
        "PARMAP_RETURN_EXCEPTIONS",
    ):
        monkeypatch.delenv(var, raising=False)
    # backend="auto" predicts with built-in constants in tests: no calibration run per test.
    monkeypatch.setenv("PARMAP_CALIBRATION", "defaults")
    yield


@pytest.fixture(autouse=True)
def _still_the_caller():
    """No test may leave the test process marked as a parmap worker (``run_batch`` marks
    the process it runs in): every later call would run in place, and a later test's
    ``os._exit`` meant for a worker would end the test run itself."""
    yield
    if _worker.in_worker:
        _worker.in_worker = False
        pytest.fail("this test ran run_batch in the test process and left it marked as a "
                    "worker: keep parmap._worker.in_worker with monkeypatch")  # fmt: skip


def pytest_sessionfinish(session, exitstatus):
    parmap.shutdown()
    os.environ.pop("PARMAP_BACKEND", None)
