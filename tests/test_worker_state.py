"""``parmap.per_worker``: an object built once per worker process, on every backend.

Each build leaves a file named ``<pid>-<build id>`` in a folder, so a test counts
the builds of every process, wherever it ran (the cluster workers here share the
file system with the test).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import cloudpickle
import pytest
from conftest import children, in_process, wait_for_no_children

import parmap
from parmap import _local

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # cluster workers cannot import it

pytestmark = pytest.mark.timeout(180)


class Built:
    """What the factory makes: it records its own build in ``folder``."""

    def __init__(self, folder: str, delay: float = 0.0) -> None:
        time.sleep(delay)
        self.pid = os.getpid()
        self.build_id = uuid.uuid4().hex
        Path(folder, f"{self.pid}-{self.build_id}").touch()


def builds(folder: Path) -> dict[int, list[str]]:
    """pid -> the build ids made in that process."""
    found: dict[int, list[str]] = collections.defaultdict(list)
    for path in folder.iterdir():
        pid, build_id = path.name.split("-")
        found[int(pid)].append(build_id)
    return dict(found)


def reader(state: parmap.PerWorker[Built]):
    def where(x: int) -> tuple[int, str]:
        time.sleep(0.002)  # long enough for every worker to get items
        return os.getpid(), state.value.build_id

    return where


def assert_one_build_per_process(folder: Path, results: list[tuple[int, str]]) -> None:
    made = builds(folder)
    assert all(len(ids) == 1 for ids in made.values()), f"rebuilt in a process: {made}"
    for pid, build_id in results:
        assert made[pid] == [build_id], f"pid {pid} read another object than it built"


def on_threads(backend) -> bool:
    """Whether the backend's workers are (or, under auto, may be) threads of this process."""
    return backend in ("threads", "auto") or isinstance(backend, cf.ThreadPoolExecutor)


def test_built_once_per_worker_across_items_and_calls(backend, census, tmp_path):
    state = parmap.per_worker(Built, str(tmp_path))
    first = parmap.parmap(reader(state), range(40), backend=backend, chunksize=2)
    made = builds(tmp_path)
    second = parmap.parmap(reader(state), range(40), backend=backend, chunksize=2)
    if on_threads(backend):  # a worker is a thread: each builds its own object, once
        assert builds(tmp_path) == made, "the second call built again"
        assert all(build_id in made[pid] for pid, build_id in first + second)
        assert len(made[os.getpid()]) <= 1 + 2  # the caller (auto's probe) and each thread
        return
    assert_one_build_per_process(tmp_path, first + second)
    first_pids = {pid for pid, _ in first}
    assert {pid for pid, _ in second} <= first_pids | set(builds(tmp_path))
    assert set(builds(tmp_path)) == first_pids | {pid for pid, _ in second}
    if backend == "serial":
        assert set(builds(tmp_path)) == {os.getpid()}, "serial builds once, in the caller"


def test_another_handle_of_the_same_factory_is_another_object(backend, census, tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
    one, two = (parmap.per_worker(Built, str(tmp_path / name)) for name in ("one", "two"))

    def both(_: int) -> tuple[str, str]:
        return one.value.build_id, two.value.build_id

    got = parmap.parmap(both, range(10), backend=backend)
    assert all(a != b for a, b in got)


def test_rebuilt_on_a_replaced_worker(backend, census, tmp_path):
    if in_process(backend):
        pytest.skip("the worker is the caller itself: it is never replaced")
    if isinstance(backend, cf.Executor):
        pytest.skip("a broken executor of the caller's takes no more work: parmap replaces none")
    folder, marker = tmp_path / "builds", tmp_path / "crashed-pid"
    folder.mkdir()
    state = parmap.per_worker(Built, str(folder))

    def crash_once(x: int) -> tuple[int, str]:
        built = state.value  # the crashing worker has built it too
        if x == 5 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(7)
        time.sleep(0.002)
        return os.getpid(), built.build_id

    before = parmap.parmap(reader(state), range(20), backend=backend, chunksize=1)
    crashed = parmap.parmap(crash_once, range(20), backend=backend, chunksize=1, retries=3)
    assert [pid for pid, _ in crashed] and marker.exists()
    after: list[tuple[int, str]] = []
    deadline = time.monotonic() + 60  # a Dask nanny restarts its worker in the background
    while not {pid for pid, _ in after} - {pid for pid, _ in before}:
        assert time.monotonic() < deadline, "no replacement worker ran items after the crash"
        after += parmap.parmap(reader(state), range(40), backend=backend, chunksize=1)
        time.sleep(0.2)
    dead = int(marker.read_text())
    assert dead in builds(folder), "the worker that died had built the object"
    assert dead not in {pid for pid, _ in after}
    assert_one_build_per_process(folder, before + crashed + after)


def test_a_factory_error_keeps_its_type_and_nothing_is_kept(backend, census, tmp_path):
    flag = tmp_path / "fail"
    flag.touch()

    def make() -> str:
        if flag.exists():
            raise KeyError("no simulator here")
        return "ready"

    state = parmap.per_worker(make)
    with pytest.raises(KeyError, match="no simulator here"):
        parmap.parmap(lambda _: state.value, range(4), backend=backend)
    flag.unlink()
    assert parmap.parmap(lambda _: state.value, range(4), backend=backend) == ["ready"] * 4


def test_a_factory_that_is_not_callable_is_a_clear_error():
    with pytest.raises(TypeError, match=r"parmap\.share\(obj\)"):
        parmap.per_worker([1, 2, 3])  # type: ignore[arg-type]


def test_the_handle_is_small_on_the_wire_and_keeps_its_token():
    state = parmap.per_worker(dict, size=3)
    copy = cloudpickle.loads(cloudpickle.dumps(state))
    assert len(cloudpickle.dumps(state)) < 300
    assert copy.value is state.value, "a copy in the same process finds the same object"
    assert "PerWorker dict" in repr(state)


def test_threads_of_one_process_build_once():
    """The threads of one worker (a Dask worker with --nthreads 2) share one object."""
    made: list[int] = []

    def make() -> object:
        made.append(threading.get_ident())
        time.sleep(0.2)  # the other threads arrive while it is built
        return object()

    state = parmap.per_worker(make)
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(state.value)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(made) == 1 and len({id(obj) for obj in seen}) == 1


def test_a_thread_with_its_own_table_builds_its_own():
    """The seam for a backend whose workers are threads."""
    state = parmap.per_worker(object)
    seen: list[object] = []

    def worker_thread() -> None:
        _local.bind_thread()
        try:
            seen.extend([state.value, state.value])
        finally:
            _local.release_thread()

    threads = [threading.Thread(target=worker_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert seen[0] is seen[1] and seen[2] is seen[3] and seen[0] is not seen[2]
    assert not state.built_here(), "the process table was left alone"


def test_a_forked_child_builds_its_own(census):
    state = parmap.per_worker(object)
    built_in_parent = state.value
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it did not inherit the parent's object
        os._exit(0 if not state.built_here() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert state.value is built_in_parent


# -- a Dask cluster worker that joins later ---------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str]) -> subprocess.Popen:
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return subprocess.Popen(command, start_new_session=True, **quiet)  # type: ignore[call-overload]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def test_a_dask_worker_that_joins_later_builds_its_own(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    before = children()
    address = f"tcp://127.0.0.1:{free_port()}"
    http = ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
    scheduler = ["dask", "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":")[-1]]
    worker = ["dask", "worker", address, "--nthreads", "1", "--host", "127.0.0.1", *http]
    processes = [start([*scheduler, *http]), start([*worker, "--name", "first"])]
    state = parmap.per_worker(Built, str(tmp_path))
    try:
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
            first = parmap.parmap(reader(state), range(10), backend="dask", address=address)
            processes.append(start([*worker, "--name", "later"]))
            client.wait_for_workers(2, timeout=60)
            pids = set(client.run(os.getpid).values())
        later = parmap.parmap(
            reader(state), range(60), backend="dask", address=address, chunksize=1
        )
    finally:
        parmap.shutdown()
        stop(processes[1:])
        stop(processes[:1])
    assert len({pid for pid, _ in first}) == 1
    joined = pids - {pid for pid, _ in first}
    assert joined and joined <= {pid for pid, _ in later}, "the later worker ran no item"
    assert_one_build_per_process(tmp_path, first + later)
    left = wait_for_no_children(before)
    assert not left, f"cluster processes left: {left}"
