"""docs/reliability.md under harder tests: engine faults, long runs, concurrent callers,
strangers on the machine (issue 26).

Each test has a hard deadline (pytest-timeout) and a process census: the ``census``
fixture, or, where a test starts a caller of its own, a check that none of that
caller's processes outlive it. Figures (times, RSS) are printed: ``pytest -s`` shows
them; the thresholds asserted are far from both the figures measured and the
failures they guard against.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import funcs
import psutil
import pytest
from conftest import BACKENDS, children, in_process, wait_for_no_children

import parmap

pytestmark = pytest.mark.timeout(240)

REMOTE = [b for b in BACKENDS if not in_process(b)]  # fn runs in other processes
POOLS = [b for b in ("multiprocessing", "loky") if b in BACKENDS]
MB = 2**20


def needs(name):
    return pytest.mark.skipif(name not in BACKENDS, reason=f"{name} is not installed")


def kill_after(seconds, find_pid):
    """SIGKILL the process ``find_pid()`` names, ``seconds`` from now; return when it was."""
    killed = {}

    def run():
        time.sleep(seconds)
        pid = find_pid()
        killed["at"] = time.monotonic()
        os.kill(pid, signal.SIGKILL)

    threading.Thread(target=run, daemon=True).start()
    return killed


def descendants_named(word):
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if word in " ".join(process.cmdline()):
                found.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def rss(processes):
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


# -- 1. the engine's own processes die mid-call ----------------------------------------------------


@needs("ray")
def test_ray_raylet_killed_mid_call_fails_within_seconds_and_the_next_call_works(census):
    table = parmap.share(list(range(10)))  # its object dies with the instance: sent again

    def look(i):
        return table.value[i]

    assert parmap.parmap(look, range(10), backend="ray", workers=2) == list(range(10))
    killed = kill_after(2.0, raylet)
    with pytest.raises(parmap.WorkerCrashedError) as info:
        parmap.parmap(funcs.sleep_then(0.25), range(160), backend="ray", workers=2, retries=1)
    seconds = time.monotonic() - killed["at"]
    print(f"ray: the call failed {seconds:.1f} s after the raylet was killed: {info.value}")
    assert seconds < 15, "no timeout= was given: the death must be noticed by itself"
    started = time.monotonic()
    assert parmap.parmap(look, range(10), backend="ray", workers=2) == list(range(10))
    print(f"ray: the next call took {time.monotonic() - started:.1f} s (a fresh instance)")


def raylet():
    """The embedded Ray instance's raylet: a child of this process."""
    return next(p.pid for p in psutil.Process().children(recursive=True) if p.name() == "raylet")


@needs("ray")
def test_embedded_ray_outlives_the_thread_that_started_it(census):
    """Ray's raylet and GCS die with the thread that started them (PR_SET_PDEATHSIG):
    a caller's short-lived thread must not take the instance down with it."""
    parmap.shutdown()
    started = threading.Thread(target=parmap.parmap, args=(abs, range(4)),
                               kwargs={"backend": "ray", "workers": 1})  # fmt: skip
    started.start()
    started.join(120)
    first = raylet()
    time.sleep(2.0)  # the thread has ended
    assert psutil.pid_exists(first) and psutil.Process(first).status() != "zombie"
    assert parmap.parmap(abs, range(-3, 3), backend="ray", workers=1) == [3, 2, 1, 0, 1, 2]
    assert raylet() == first, "the instance was started again"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dask_cli(*args, **popen):
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    command = [os.path.join(os.path.dirname(sys.executable), "dask"), *args]
    return subprocess.Popen(command, **{**quiet, **popen})


def stop(processes):
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture
def dask_cluster_processes():
    """A `dask scheduler` and `dask worker` processes; yields (address, scheduler, start
    worker); stops them all and checks that none is left."""
    distributed = pytest.importorskip("distributed")
    before = children()
    address = f"tcp://127.0.0.1:{free_port()}"
    http = ["--dashboard-address", "127.0.0.1:0"]
    scheduler = dask_cli("scheduler", "--host", "127.0.0.1", "--port",
                         address.rsplit(":", 1)[1], *http)  # fmt: skip
    processes = [scheduler]

    def start_worker(n=1):
        processes.append(dask_cli("worker", address, "--nworkers", str(n), "--nthreads", "1",
                                  "--host", "127.0.0.1", *http))  # fmt: skip
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(n, timeout=60)

    try:
        yield address, scheduler, start_worker
    finally:
        parmap.shutdown()
        stop(processes[1:])
        stop(processes[:1])
        left = wait_for_no_children(before)
        assert not left, f"processes left: {[psutil.Process(p).cmdline() for p in left]}"


@needs("dask")
def test_dask_scheduler_killed_mid_call_fails_within_seconds(dask_cluster_processes):
    address, scheduler, start_worker = dask_cluster_processes
    start_worker(2)
    parmap.parmap(abs, range(10), backend="dask", address=address)
    killed = kill_after(2.0, lambda: scheduler.pid)
    with pytest.raises(parmap.WorkerCrashedError) as info:
        parmap.parmap(
            funcs.sleep_then(0.25), range(160), backend="dask", address=address, retries=1
        )
    seconds = time.monotonic() - killed["at"]
    print(f"dask: the call failed {seconds:.1f} s after the scheduler was killed: {info.value}")
    assert seconds < 10, "the client's 30 s of reconnecting must not hold the call"
    started = time.monotonic()  # the next call says so, once Dask gives up connecting (30 s)
    with pytest.raises(ConnectionError, match="could not connect"):
        parmap.parmap(abs, range(10), backend="dask", address=address)
    assert time.monotonic() - started < 45


# -- 2. a long run that shares a new value every generation ----------------------------------------


def test_a_long_run_of_shares_holds_one_generation_at_a_time(remote_backend, census):
    """30 generations, each sharing a fresh 10 MB value for one call: the workers, the
    caller and /dev/shm hold one generation's value, not all of them."""
    me = psutil.Process()
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()

    def shm():
        total = 0
        for name in set(os.listdir("/dev/shm")) - shm_before:
            if name.startswith("parmap-"):
                for path in Path("/dev/shm", name).rglob("*"):
                    total += path.stat().st_size if path.is_file() else 0
        return total

    def read(handle):
        return lambda i: len(handle.value) + i

    options = {"backend": remote_backend, "workers": 2}
    parmap.parmap(abs, range(10), **options)
    figures = {}
    for generation in range(1, 31):
        handle = parmap.share(os.urandom(10 * MB))
        got = parmap.parmap(read(handle), range(8), chunksize=1, **options)
        assert got == [10 * MB + i for i in range(8)]
        del handle, got
        gc.collect()
        if generation in (5, 30):
            time.sleep(1.0)  # engines free released objects in the background
            workers = rss(psutil.Process().children(recursive=True))
            figures[generation] = (workers, me.memory_info().rss, shm())
    (w5, c5, s5), (w30, c30, s30) = figures[5], figures[30]
    print(f"{remote_backend}: round 5 -> 30: workers {w5 / MB:.0f} -> {w30 / MB:.0f} MB, "
          f"caller {c5 / MB:.0f} -> {c30 / MB:.0f} MB, "
          f"/dev/shm {s5 / MB:.0f} -> {s30 / MB:.0f} MB")  # fmt: skip
    # Holding all 25 later values would add 250 MB per worker process and to the caller
    # (measured before values were freed: +180 to +750 MB for the workers). Ray's object
    # store is shared memory that its processes and the caller map: its allocator touches
    # fresh pages for a while before it reuses freed ones (RSS levels off after about 15
    # generations, at +20 to +120 MB), so there the store's own count is the measure.
    engine = 300 if remote_backend == "ray" else 120
    assert (w30 - w5) / MB < engine, "the workers keep the values of past generations"
    assert (c30 - c5) / MB < engine / 2, "the caller keeps the values of past generations"
    assert s30 / MB <= 21, "/dev/shm keeps the files of past generations"
    if remote_backend == "ray":
        import ray

        held = ray.cluster_resources()["object_store_memory"]
        held -= ray.available_resources().get("object_store_memory", 0)
        print(f"ray: the object store holds {held / MB:.0f} MB after 30 generations")
        assert held / MB < 25, "Ray's object store keeps the values of past generations"


@pytest.fixture(params=REMOTE)
def remote_backend(request):
    return request.param


def test_workers_drop_a_released_value(remote_backend, census):
    """The next call's spec tells each worker which of the caller's values live."""
    old = parmap.share(list(range(1000)))
    kept = parmap.share("kept")

    def tokens(_):
        from parmap import _worker  # on the worker: what it caches

        return sorted(_worker.shared_values)

    def both(old, kept):
        return lambda i: old.value[i] + len(kept.value)

    options = {"backend": remote_backend, "workers": 1, "chunksize": 1}
    assert parmap.parmap(both(old, kept), range(4), **options) == [i + 4 for i in range(4)]
    old_token, kept_token = old._token, kept._token
    del old
    gc.collect()
    held = parmap.parmap(lambda x: (len(kept.value), tokens(x))[1], range(2), **options)
    assert all(kept_token in tokens_ and old_token not in tokens_ for tokens_ in held), held


# -- 3. threads with different options -------------------------------------------------------------


def test_threads_with_different_workers_never_stop_each_other(remote_backend, census):
    rounds = 10 if remote_backend in ("ray", "dask") else 20  # a new instance costs seconds
    failures, wrong = [], []

    def caller(workers):
        for r in range(rounds):
            try:
                got = parmap.parmap(abs, range(-50, 50), backend=remote_backend, workers=workers)
                if got != [abs(i) for i in range(-50, 50)]:
                    wrong.append((workers, r))
            except Exception as exc:
                failures.append(f"workers={workers} round {r}: {exc!r}")

    started = time.monotonic()
    threads = [threading.Thread(target=caller, args=(w,)) for w in (2, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(200)
    seconds = time.monotonic() - started
    print(f"{remote_backend}: {2 * rounds} calls from two threads in {seconds:.1f} s")
    assert not any(thread.is_alive() for thread in threads), "a caller hung"
    assert not failures, failures[:3]
    assert not wrong


# -- 4. Dask: a shared value lost with its worker --------------------------------------------------


@needs("dask")
def test_dask_shared_value_lost_with_its_only_worker_is_sent_again(census):
    """One worker holds the only copy; it is killed mid-call. The value is sent again
    and the lost batches retried: no minute-long wait, no error blamed on fn."""
    table = parmap.share(list(range(1000)))

    def look(x):
        time.sleep(0.1)
        return table.value[x]

    parmap.parmap(abs, range(4), backend="dask", workers=1)
    worker = descendants_named("spawn_main")[0]
    kill_after(1.0, lambda: worker)
    started = time.monotonic()
    got = parmap.parmap(look, range(40), backend="dask", workers=1, chunksize=2, retries=2)
    seconds = time.monotonic() - started
    print(f"dask: 40 items with the only worker killed: {seconds:.1f} s")
    assert got == list(range(40))
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == "zombie"
    assert seconds < 45


@needs("dask")
def test_dask_task_path_shared_value_lost_is_retried(dask_cluster_processes):
    """The same on a cluster parmap connects to: a batch is a task there."""
    address, _, start_worker = dask_cluster_processes
    start_worker(1)
    table = parmap.share(list(range(1000)))

    def look(x):
        time.sleep(0.1)
        return table.value[x]

    assert parmap.parmap(look, range(4), backend="dask", address=address) == list(range(4))
    worker = descendants_named("spawn_main")[0]
    kill_after(1.0, lambda: worker)
    got = parmap.parmap(look, range(40), backend="dask", address=address, chunksize=2, retries=3)
    assert got == list(range(40))


# -- 5. strangers: the embedded Dask cluster takes no client without its key -----------------------

STRANGER = """
import sys, distributed
from distributed.security import Security
address, marker = sys.argv[1], sys.argv[2]

def leave_a_mark(dask_scheduler=None):
    open(marker, "w").write("ran")

attempts = [
    (address, None),
    (address.replace("tls://", "tcp://"), None),
    (address, Security.temporary()),  # TLS, with a key of its own
]
for where, security in attempts:
    try:
        client = distributed.Client(where, timeout=5, security=security)
    except Exception as exc:
        print("refused", where, type(exc).__name__, flush=True)
        continue
    print("CONNECTED", where, flush=True)
    client.run_on_scheduler(leave_a_mark)
"""


@needs("dask")
def test_embedded_dask_cluster_refuses_a_client_of_another_process(tmp_path, census):
    parmap.parmap(abs, range(4), backend="dask")
    backend = next(b for b in parmap._registry.live_backends() if b.name == "dask")
    address = backend.describe()["scheduler"]
    assert address.startswith("tls://127.0.0.1:"), address
    script, marker = tmp_path / "stranger.py", tmp_path / "marker"
    script.write_text(STRANGER)
    done = subprocess.run([sys.executable, str(script), address, str(marker)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    print(done.stdout)
    assert done.stdout.count("refused") == 3, done.stdout + done.stderr[-2000:]
    assert not marker.exists(), "a stranger ran code in the caller's process"
    assert parmap.parmap(abs, range(-3, 3), backend="dask") == [3, 2, 1, 0, 1, 2]


# -- 6. /dev/shm after the caller is ended ---------------------------------------------------------

SHARING_CALLER = """
import sys, time, parmap

def use(table):
    return lambda i: table.value[i]

if __name__ == "__main__":
    table = parmap.share(bytes(1_000_000))
    parmap.parmap(use(table), range(4), backend=sys.argv[1], workers=2)
    print("ready", flush=True)
    time.sleep(120)
"""


def start_sharing_caller(tmp_path, backend):
    script = tmp_path / "sharing.py"
    script.write_text(SHARING_CALLER)
    process = subprocess.Popen([sys.executable, str(script), backend], stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "ready"
    family = {p.pid for p in psutil.Process(process.pid).children(recursive=True)}
    owned = [p for p in Path("/dev/shm").glob(f"parmap-shared-{process.pid}-*")]
    assert len(owned) == 1, owned
    return process, family, owned[0]


def wait_gone(pids, deadline=15.0):
    end = time.monotonic() + deadline
    alive = set(pids)
    while alive and time.monotonic() < end:
        time.sleep(0.2)
        alive = {p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}  # fmt: skip
    return alive


needs_shm = pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no /dev/shm")


@needs_shm
@pytest.mark.parametrize("pool", POOLS)
def test_shared_files_are_removed_when_the_caller_is_terminated(pool, tmp_path):
    process, family, owned = start_sharing_caller(tmp_path, pool)
    try:
        process.terminate()
        assert process.wait(timeout=30) == -signal.SIGTERM  # still ended by the signal
        assert not owned.exists(), "a SIGTERMed caller left its shared files in /dev/shm"
    finally:
        process.kill()
        process.wait()
    assert not wait_gone(family)


@needs_shm
@pytest.mark.parametrize("pool", POOLS)
def test_shared_files_of_a_killed_caller_are_swept_by_the_next(pool, tmp_path, census):
    process, family, owned = start_sharing_caller(tmp_path, pool)
    process.kill()
    process.wait(timeout=30)
    assert not wait_gone(family)
    assert owned.exists()  # SIGKILL runs no cleanup
    # a directory whose owner lives (this test process) stays
    mine = Path("/dev/shm", f"parmap-shared-{os.getpid()}-{_start_time(os.getpid())}-test")
    mine.mkdir()
    try:
        table = parmap.share(b"x" * 100)
        assert parmap.parmap(lambda i: table.value[i], range(3), backend=pool) == [120] * 3
        assert not owned.exists(), "the next caller did not sweep a dead caller's files"
        assert mine.exists(), "a live caller's directory was swept"
    finally:
        mine.rmdir()


def _start_time(pid):
    with open(f"/proc/{pid}/stat", "rb") as file:
        return int(file.read().rsplit(b")", 1)[1].split()[19])


# -- 7. Dask's scratch space is parmap's own -------------------------------------------------------


@needs("dask")
def test_embedded_dask_workers_keep_their_files_in_a_private_directory(tmp_path, monkeypatch,
                                                                       census):  # fmt: skip
    shared_tmp = tmp_path / "tmp"
    squatted = shared_tmp / "dask-scratch-space"
    squatted.mkdir(parents=True)
    squatted.chmod(0o777)  # as another user could have left it
    monkeypatch.setenv("TMPDIR", str(shared_tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read $TMPDIR again
    parmap.parmap(abs, range(4), backend="dask", workers=2)
    client = next(b for b in parmap._registry.live_backends() if b.name == "dask").client
    places = set(client.run(lambda dask_worker: dask_worker.local_directory).values())
    assert places and not any(str(squatted) in place for place in places), places
    mine = f"parmap-dask-{os.getpid()}-"
    roots = {next((p for p in Path(place).parents if p.name.startswith(mine)), None)
             for place in places}  # fmt: skip
    assert len(roots) == 1 and None not in roots, places
    root = roots.pop()
    assert root.stat().st_mode & 0o777 == 0o700 and root.stat().st_uid == os.getuid()
    assert not list(squatted.iterdir()), "a worker used the shared scratch space"
    parmap.shutdown()
    assert not root.exists(), "the private directory outlived the cluster"


# -- 8. an unpicklable result names the worker's pid -----------------------------------------------


def _make_lock(x):
    return threading.Lock() if x == 2 else x


@pytest.mark.parametrize("backend", REMOTE)
def test_unpicklable_result_error_names_the_workers_pid(backend, census):
    with pytest.raises(parmap.SerializationError) as info:
        parmap.parmap(_make_lock, range(4), backend=backend, workers=1, chunksize=4)
    pid = int(re.search(r"worker pid (\d+)", str(info.value)).group(1))
    assert pid != os.getpid(), str(info.value)
    workers = set(parmap.parmap(funcs.pid, range(8), backend=backend, workers=1))
    assert pid in workers, (pid, workers)


# -- 9. KeyboardInterrupt raised by fn -------------------------------------------------------------


def interrupting(directory):
    def fn(x):
        (directory / f"{x}-{time.monotonic_ns()}.ran").touch()
        if x == 3:
            raise KeyboardInterrupt("fn's own")
        return x

    return fn


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyboard_interrupt_raised_by_fn_is_fns_and_never_retried(backend, tmp_path, census):
    with pytest.raises(KeyboardInterrupt, match="fn's own") as info:
        parmap.parmap(interrupting(tmp_path), range(8), backend=backend, workers=2, chunksize=1,
                      retries=2)  # fmt: skip
    assert any("item 3" in note for note in info.value.__notes__)
    assert len(list(tmp_path.glob("3-*.ran"))) == 1, "the batch was retried"
    assert parmap.parmap(abs, range(-3, 3), backend=backend) == [3, 2, 1, 0, 1, 2]


@needs_shm
@pytest.mark.skipif("multiprocessing" not in BACKENDS, reason="needs multiprocessing")
def test_a_forked_child_keeps_sigterms_default_and_the_callers_files(census):
    """The SIGTERM handler that removes the caller's files is not a forked worker's."""
    table = parmap.share(b"x" * 100)
    for start_method in ("fork", "forkserver"):
        with parmap.config(start_method=start_method):
            got = parmap.parmap(lambda i: table.value[i], range(3), backend="multiprocessing")
        assert got == [120] * 3
    owned = list(Path("/dev/shm").glob(f"parmap-shared-{os.getpid()}-*"))
    assert owned
    pid = os.fork()
    if pid == 0:  # the child: wait to be terminated
        time.sleep(30)
        os._exit(0)
    time.sleep(0.2)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert all(path.exists() for path in owned), "a forked child removed the caller's files"


def test_the_instances_of_the_two_option_sets_used_last_stay():
    """Two threads with different options do not restart each other's workers at every
    call; a third option set stops the instance used longest ago, once unleased."""
    from parmap import _registry

    parmap.shutdown()

    def live():
        return [b.requested_workers for b in _registry.live_backends() if b.name == "serial"]

    try:
        for workers in (1, 2, 1, 2):
            with _registry.lease("serial", {"workers": workers}):
                pass
        assert sorted(live()) == [1, 2]
        with _registry.lease("serial", {"workers": 1}) as held:
            with (
                _registry.lease("serial", {"workers": 3}),
                _registry.lease("serial", {"workers": 2}),
            ):
                assert held.requested_workers == 1
            assert sorted(live()) == [1, 2, 3]  # 1 is superseded, but a call holds it
        assert sorted(live()) == [2, 3], "the instance used longest ago stayed"
    finally:
        parmap.shutdown()
