"""The Dask backend beyond the contract suite: which cluster it uses, how batches
reach it, faults, and a real scheduler with two workers started as separate processes."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import funcs
import psutil
import pytest
from conftest import children, wait_for_no_children

import parmap

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def _no_scheduler_from_the_environment(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)


def live_dask_backend():
    return next(b for b in parmap._registry.live_backends() if b.name == "dask")


def worker_pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


# -- the embedded LocalCluster ---------------------------------------------------------


def test_identical_items_are_each_evaluated(census):
    def noisy(_):
        return uuid.uuid4().hex

    got = parmap.parmap(noisy, [7] * 40, backend="dask", chunksize=1)
    assert len(set(got)) == 40, "identical batches were merged: submit with pure=False"
    assert len(set(parmap.parmap(noisy, [7] * 40, backend="dask"))) == 40


def test_embedded_cluster_is_local_and_quiet(census, capfd):
    assert parmap.parmap(funcs.square, range(10), backend="dask") == [i * i for i in range(10)]
    backend = live_dask_backend()
    facts = backend.describe()
    assert facts["cluster"] == "an embedded Dask LocalCluster"
    assert facts["scheduler"].startswith("tls://127.0.0.1:")  # its own key (test_reliability)
    assert facts["batches"] == "sent straight to the workers"
    assert facts["workers"] == parmap.backends._base.default_workers()
    assert set(backend.client.nthreads().values()) == {1}
    parmap.shutdown()
    out, err = capfd.readouterr()
    assert "distributed" not in out + err, out + err


def test_initializer_runs_once_per_worker_process(census):
    name = f"PARMAP_TEST_INIT_{uuid.uuid4().hex}"

    def init(tag):
        os.environ[name] = str(int(os.environ.get(name, "0")) + 1) + tag

    def runs(_):
        return os.getpid(), os.environ.get(name)

    for _ in range(2):  # the second call must not run it again
        got = parmap.parmap(
            runs, range(30), backend="dask", chunksize=1, initializer=init, initargs=("!",)
        )
        assert {count for _, count in got} == {"1!"}, got
    assert len({pid for pid, _ in got}) == parmap.backends._base.default_workers()


def test_worker_crash_names_the_exit_code_and_retries_work(census, tmp_path):
    with pytest.raises(parmap.WorkerCrashedError) as info:
        parmap.parmap(funcs.exit_at(7, code=3), range(20), backend="dask", chunksize=5)
    assert info.value.exitcode == 3
    assert "exited with code 3" in str(info.value)
    assert 7 in info.value.items
    marker = tmp_path / "crashed-once"
    crash_once = funcs.crash_once(marker, bad=3)
    got = parmap.parmap(crash_once, range(10), backend="dask", chunksize=2, retries=1)
    assert got == [x * 10 for x in range(10)] and marker.exists()


def test_large_function_is_broadcast_once_and_survives_a_crash(census, tmp_path):
    big = bytes(range(256)) * 1_000  # captured by the function: 256 KB, above the inline size
    marker = tmp_path / "crashed-once"

    def pick(i):
        if i == 5 and not marker.exists():
            marker.touch()
            os._exit(3)
        return big[i]

    got = parmap.parmap(pick, range(40), backend="dask", chunksize=2, retries=2)
    assert got == [big[i] for i in range(40)] and marker.exists()


def test_embedded_batches_skip_the_scheduler(census):
    """On the embedded cluster a batch is one request to a worker, never a task."""
    got = parmap.parmap(funcs.square, range(300), backend="dask", chunksize=3)
    assert got == [i * i for i in range(300)]
    scheduler = live_dask_backend().engine.session().cluster.scheduler
    tasks = {"run_batch", "run_batch_task"} & set(scheduler.task_prefixes)
    assert not tasks, "batches went through the scheduler"


def test_a_worker_that_let_go_of_a_large_function_gets_it_again(census):
    big = bytes(range(256)) * 1_000  # above the inline size: later batches leave it out

    def pick(i):
        return big[i]

    expected = [big[i] for i in range(40)]
    assert parmap.parmap(pick, range(40), backend="dask", chunksize=2) == expected
    client = live_dask_backend().client
    client.run(lambda: parmap._worker._functions.clear())  # as if its cache had let it go
    assert parmap.parmap(pick, range(40), backend="dask", chunksize=2) == expected


def test_an_idle_worker_takes_back_a_batch_waiting_behind_a_slow_one(census):
    """Each worker holds its running batch and the next one; at the end of a call a
    worker that ran out of work takes a waiting batch from the other."""

    def slow_first(i):
        time.sleep(2.0 if i == 0 else 0.01)
        return os.getpid()

    parmap.parmap(funcs.square, range(4), backend="dask")  # the cluster is up
    pids = parmap.parmap(slow_first, range(6), backend="dask", chunksize=1)
    assert pids[0] not in pids[1:], "a batch waited for the slow one on its worker"


def test_timeout_kills_running_work_and_share_survives(census):
    table = parmap.share(list(range(1_000)))

    def look(i):
        return table.value[i]

    assert parmap.parmap(look, [1, 999], backend="dask", chunksize=1) == [1, 999]
    client = live_dask_backend().client
    before = worker_pids(client)
    started = time.monotonic()
    with pytest.raises(parmap.TimeoutError):
        parmap.parmap(funcs.sleep_then(120), range(4), backend="dask", chunksize=1, timeout=1)
    assert time.monotonic() - started < 10, "the timeout waited for running work"
    assert parmap.parmap(look, [2, 998], backend="dask", chunksize=1) == [2, 998]
    assert not before & worker_pids(client), "workers running stopped batches still live"


def hang_on_one(x):
    if x == 1:
        time.sleep(120)
    return x


@pytest.mark.parametrize("kept", [True, False], ids=["nannies-kept", "nannies-started-again"])
def test_a_killed_worker_is_replaced_even_when_its_nanny_is_reaped(kept, monkeypatch, census):
    """distributed's SpecCluster closes a nanny whose worker is not back within
    lost-worker-timeout (15 s; 0 here, so the kill of a hung item always meets that check):
    the embedded cluster keeps its nannies, and without that (private) override, it starts
    the missing one again at the next call."""
    from parmap.backends import _dask_cluster

    if not kept:
        monkeypatch.setattr(_dask_cluster, "_BASE_UPDATE", None)
    dask = pytest.importorskip("dask")
    with dask.config.set({"distributed.deploy.lost-worker-timeout": 0}):
        parmap.parmap(funcs.square, range(4), backend="dask")
        client = live_dask_backend().client
        got = parmap.parmap(hang_on_one, range(4), backend="dask", chunksize=1,
                            item_timeout=1, return_exceptions=True)  # fmt: skip
        assert isinstance(got[1], parmap.ItemTimeoutError)
        assert got[:1] + got[2:] == [0, 2, 3]
        cluster, wanted = client.cluster, len(client.cluster.worker_spec)
        # The reaping runs on the cluster's event loop once the scheduler's news of the
        # kill arrives: a busy machine delays it. Wait for it (without the override it
        # comes, unless the replacement registered first), so the next call meets it.
        until(lambda: len(cluster.workers) < wanted, 10 if not kept else 1)
        assert parmap.parmap(funcs.square, range(8), backend="dask") == [i * i for i in range(8)]
        client.wait_for_workers(wanted, timeout=60)
        assert until(lambda: len(cluster.workers) == wanted, 30), cluster.workers


def until(condition, seconds: float) -> bool:
    """Whether ``condition()`` became true within ``seconds`` (polled)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_share_is_broadcast_once(census):
    blob = parmap.share(b"x" * 2_000_000)

    def size(_):
        return len(blob.value)

    for _ in range(3):
        assert parmap.parmap(size, range(8), backend="dask", chunksize=1) == [2_000_000] * 8
    client = live_dask_backend().client
    names = [name for name in client.list_datasets() if name.startswith("parmap-share-")]
    assert len(names) == 1, names  # published once, not once per call
    value = client.get_dataset(names[0])
    assert set(client.who_has(value)[value.key]) == set(client.nthreads())  # on every worker


def test_callers_seeded_random_stream_is_left_alone(census):
    """A seeded program (DEAP) draws the same numbers as under the serial backend."""
    table = parmap.share(list(range(1_000)))

    def draws(backend):
        random.seed(42)
        out = []
        for _ in range(4):
            out.append(random.random())
            parmap.parmap(lambda i: table.value[i], range(300), backend=backend)
            parmap.parmap(funcs.square, list(range(50)) * 3, backend=backend, chunksize=7)
        return [*out, random.random()]

    parmap.parmap(funcs.square, range(3), backend="dask")  # the cluster starts first
    assert draws("dask") == draws("serial")


def test_default_client_is_used_and_left_open(census):
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    client = distributed.Client(cluster)  # becomes the default client
    try:
        pids = set(parmap.parmap(funcs.pid, range(20), backend="dask", chunksize=1))
        assert pids == worker_pids(client)
        assert live_dask_backend().client is client
        assert live_dask_backend().describe()["cluster"] == "the default Dask client"
        parmap.shutdown()
        assert client.status == "running"
        assert client.submit(funcs.square, 3).result() == 9
    finally:
        client.close()
        cluster.close()


# -- the caller's death and Ctrl-C ---------------------------------------------------

CALLER = textwrap.dedent(
    """
    import os, sys, time
    import parmap

    def slow(x):
        time.sleep(120)
        return x

    if __name__ == "__main__":
        pids = sorted(set(parmap.parmap(lambda _: os.getpid(), range(40), backend="dask",
                                        chunksize=1)))
        print(*pids, flush=True)
        started = time.monotonic()
        try:
            parmap.parmap(slow, range(8), backend="dask", chunksize=1)
        except KeyboardInterrupt:
            print("interrupted after", round(time.monotonic() - started, 2), flush=True)
        print(parmap.parmap(lambda x: x * 2, range(4), backend="dask"), flush=True)
    """
)


def start_caller(tmp_path):
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    workers = [int(pid) for pid in process.stdout.readline().split()]
    assert workers, "the caller did not start"
    descendants = {p.pid for p in psutil.Process(process.pid).children(recursive=True)}
    return process, descendants


def wait_gone(pids: set[int], deadline: float) -> set[int]:
    end = time.monotonic() + deadline
    while True:
        alive = set()
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.add(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.05)


def test_workers_exit_when_the_caller_is_killed(tmp_path):
    process, descendants = start_caller(tmp_path)
    time.sleep(0.5)  # a batch is running
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    left = wait_gone(descendants, deadline=5.0)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "Dask workers outlived their killed caller"


def test_ctrl_c_stops_running_work(tmp_path):
    process, descendants = start_caller(tmp_path)
    time.sleep(1.0)  # the slow call is running
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    try:
        out, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert "interrupted after" in out, out
    assert float(out.split("interrupted after")[1].split()[0]) < 10
    assert "[0, 2, 4, 6]" in out, "the next call failed after Ctrl-C"
    assert process.returncode == 0
    assert not wait_gone(descendants, deadline=10.0)


# -- a real scheduler and two workers, started as separate processes ---------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture(scope="module")
def scheduler_address():
    """`dask scheduler` and two `dask worker --nthreads 1` processes on 127.0.0.1.

    Started as ``python -m dask`` with this interpreter, not as ``dask`` from PATH: the
    suite must pass in a virtual environment that is not activated.
    """
    before = children()
    address = f"tcp://127.0.0.1:{free_port()}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    http = ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
    port = address.rsplit(":", 1)[1]
    command = [
        sys.executable,
        "-m",
        "dask",
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        *http,
    ]
    processes = [subprocess.Popen(command, env=env, **quiet)]
    try:
        for name in ("w1", "w2"):
            command = [
                sys.executable,
                "-m",
                "dask",
                "worker",
                address,
                "--nthreads",
                "1",
                "--nworkers",
                "1",
            ]
            command += ["--host", "127.0.0.1", "--name", name, *http]
            processes.append(subprocess.Popen(command, **quiet))
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        parmap.shutdown()
        stop(processes[1:])
        stop(processes[:1])
        left = wait_for_no_children(before)
        assert not left, f"cluster processes left: {[psutil.Process(p).cmdline() for p in left]}"


def test_connects_by_environment_address(scheduler_address, monkeypatch, census):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", scheduler_address)
    items = list(range(1_000))
    assert parmap.parmap(funcs.square, items, backend="dask") == parmap.parmap(
        funcs.square, items, backend="serial"
    )
    backend = live_dask_backend()
    assert "$DASK_SCHEDULER_ADDRESS" in backend.describe()["cluster"]
    noisy = parmap.parmap(lambda _: uuid.uuid4().hex, [7] * 40, backend="dask", chunksize=1)
    assert len(set(noisy)) == 40, "identical batches were merged: submit with pure=False"
    # a cluster parmap only connects to sees the work: each batch is a task
    assert backend.client.run_on_scheduler(
        lambda dask_scheduler: "run_batch_task" in dask_scheduler.task_prefixes
    )
    pids = parmap.parmap(funcs.pid, range(200), backend="dask", chunksize=1)
    with distributed.Client(scheduler_address) as client:
        workers = worker_pids(client)
        assert set(pids) == workers and len(workers) == 2, "both workers should do work"
        parmap.shutdown()  # disconnects; the cluster stays up
        assert len(client.nthreads()) == 2


def test_connects_by_address_argument(scheduler_address, census):
    table = parmap.share({i: str(i) for i in range(500)})

    def look(i):
        return table.value[i]

    got = parmap.parmap(look, range(500), backend="dask", address=scheduler_address)
    assert got == [str(i) for i in range(500)]
    assert parmap.starmap(funcs.add, [(i, i) for i in range(50)], address=scheduler_address,
                          backend="dask") == [2 * i for i in range(50)]  # fmt: skip
    facts = live_dask_backend().describe()
    assert facts["scheduler"] == scheduler_address and facts["workers"] == 2
    assert facts["batches"] == "tasks"
    parmap.shutdown()
    with distributed.Client(scheduler_address) as client:  # nothing of ours stays behind
        assert not [n for n in client.list_datasets() if str(n).startswith("parmap-share-")]
        assert not client.who_has()


def test_remote_worker_crash_is_a_worker_crashed_error(scheduler_address):
    # No census here: the worker's nanny starts a fresh worker process, which the
    # fixture stops with the cluster (and checks that nothing is left).
    with pytest.raises(parmap.WorkerCrashedError, match="Dask worker process") as info:
        parmap.parmap(funcs.exit_at(3), range(8), backend="dask", chunksize=2,
                      address=scheduler_address)  # fmt: skip
    assert 3 in info.value.items
    with distributed.Client(scheduler_address) as client:
        client.wait_for_workers(2, timeout=60)  # the worker's nanny starts a fresh one
    got = parmap.parmap(funcs.square, range(20), backend="dask", address=scheduler_address)
    assert got == [i * i for i in range(20)]


def test_remote_timeout_leaves_workers_alone(scheduler_address, census):
    with distributed.Client(scheduler_address) as client:
        before = worker_pids(client)
        started = time.monotonic()
        with pytest.raises(parmap.TimeoutError):
            parmap.parmap(funcs.sleep_then(2), range(4), backend="dask", chunksize=1,
                          timeout=0.5, address=scheduler_address)  # fmt: skip
        assert time.monotonic() - started < 2
        assert worker_pids(client) == before, "parmap killed workers it does not own"


def test_initializer_runs_once_in_a_worker_with_several_threads(census):
    name = f"PARMAP_TEST_INIT_{uuid.uuid4().hex}"

    def slow_init():
        time.sleep(0.5)  # both threads of the worker arrive while it runs
        os.environ[name] = str(int(os.environ.get(name, "0")) + 1)

    def runs(_):
        return os.environ.get(name)

    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    try:
        with distributed.Client(cluster):
            got = parmap.parmap(runs, range(8), backend="dask", chunksize=1, initializer=slow_init)
            assert set(got) == {"1"}, got
            parmap.shutdown()
    finally:
        cluster.close()


@pytest.mark.parametrize("item_timeout", [None, 30.0], ids=["unwatched", "watched"])
def test_a_lost_share_is_noticed_from_the_items_own_thread(item_timeout, monkeypatch):
    """With item_timeout= the items run on a thread of their own: a share() value found
    lost there still marks the batch as lost (the caller sends the value again and
    retries), and is never an item's failure returned in its place."""
    from parmap._serialization import dumps, dumps_function
    from parmap._worker import CallSpec
    from parmap.backends._dask_direct import note_lost, run_watching

    monkeypatch.setattr(parmap._worker, "in_worker", False)  # run_batch marks this process

    def load(x):
        note_lost(f"value-{x}")  # what a shared value's loader does when no copy is left
        return x

    spec = CallSpec("lost-token", dumps_function(load), False, item_timeout=item_timeout,
                    keep_going=True)  # fmt: skip
    _, lost = run_watching(spec, dumps([1, 2]))
    assert lost == ["value-1", "value-2"]
