"""What only the Ray backend does: connecting, the object store, real clusters.

The contract suite (test_contract.py) already runs every common behaviour on
Ray. Here: attaching to the caller's own ``ray.init()``, the embedded instance
(reused, loopback-only, stopped by ``parmap.shutdown()``), the function and
``parmap.share()`` values sent once, Ray's own retries kept off, and a real
two-node cluster started with ``ray start`` on 127.0.0.x.

Scripts that must own their Ray runtime run in a subprocess: this process
keeps an embedded instance for the other tests.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager, suppress

import funcs
import psutil
import pytest

import parmap
from parmap._registry import is_installed

if not is_installed("ray"):
    pytest.skip("ray is not installed", allow_module_level=True)

import ray
import ray.exceptions

from parmap._worker import CallSpec
from parmap.backends import _ray, _ray_pool
from parmap.backends._base import default_workers

pytestmark = pytest.mark.timeout(240)


def backend() -> _ray.RayBackend:
    """The Ray backend of the last call (the registry keeps the two option sets used last)."""
    live = [b for b in parmap._registry.live_backends() if isinstance(b, _ray.RayBackend)]
    assert 1 <= len(live) <= 2
    return live[-1]


def run_script(code: str, env: dict[str, str] | None = None, timeout: float = 180) -> str:
    """Run ``code`` in a fresh interpreter; return its stdout (fail with its stderr)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"script failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


# -- connecting -----------------------------------------------------------------------


def test_uses_the_callers_runtime_and_never_shuts_it_down():
    out = run_script(
        """
        import os, ray, parmap
        ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
        assert parmap.parmap(abs, range(-3, 3), backend="ray") == [3, 2, 1, 0, 1, 2]
        info = parmap._registry.live_backends()[0].describe()
        assert "ray.init() by the caller" in info["connected"], info
        assert info["workers"] == 1, info
        parmap.shutdown()
        assert ray.is_initialized(), "parmap shut down the caller's Ray runtime"
        assert ray.get(ray.remote(lambda: 42).remote()) == 42
        assert parmap.parmap(abs, [-5], backend="ray") == [5]  # attaches again
        parmap.shutdown()
        assert ray.is_initialized()
        ray.shutdown()
        print("ok")
        """
    )
    assert out.strip().endswith("ok")


def test_starting_ray_leaves_the_callers_random_sequence_alone():
    out = run_script(
        """
        import random, parmap
        random.seed(7)
        expected = [random.random() for _ in range(3)]
        random.seed(7)
        parmap.parmap(abs, range(-4, 4), backend="ray")  # starts the embedded instance
        print([random.random() for _ in range(3)] == expected)
        """
    )
    assert out.strip() == "True", "a seeded DEAP run would differ from serial"


def test_embedded_instance_is_reused_local_only_and_stopped_by_shutdown(census):
    first = set(parmap.parmap(funcs.pid, range(40), backend="ray", chunksize=1))
    second = set(parmap.parmap(funcs.pid, range(40), backend="ray", chunksize=1))
    assert first & second, "no Ray worker process was reused between calls"
    info = backend().describe()
    assert info["connected"] == "an embedded local Ray instance"
    assert info["workers"] == default_workers()
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert all(node["NodeManagerAddress"] == "127.0.0.1" for node in ray.nodes())
    parmap.shutdown()
    assert not ray.is_initialized()


def test_workers_option_sizes_the_embedded_instance(census):
    parmap.shutdown()
    assert parmap.parmap(funcs.square, range(10), backend="ray", workers=1) == oracle(10)
    assert ray.cluster_resources()["CPU"] == 1
    assert backend().workers == 1


def oracle(n: int) -> list[int]:
    return parmap.parmap(funcs.square, range(n), backend="serial")


# -- the object store --------------------------------------------------------------------


@contextmanager
def counting_puts(monkeypatch):
    """Record the size of every object parmap puts in Ray's object store (the real put runs)."""
    sizes: list[int] = []
    real_put = ray.put

    def put(value, **kwargs):
        sizes.append(size_of(value))
        return real_put(value, **kwargs)

    monkeypatch.setattr(_ray_pool.ray, "put", put)
    yield sizes


def size_of(value) -> int:
    """Bytes of a shared value's blob, or of a call's function and initializer."""
    if isinstance(value, bytes):
        return len(value)
    spec, _refs = value
    return len(spec.fn or b"") + len(spec.initializer or b"")


def test_a_large_function_is_put_once_and_tasks_carry_no_copy(monkeypatch):
    big = os.urandom(2_000_000)

    def fn(i):
        return big[i]

    parmap.parmap(funcs.square, range(4), backend="ray")  # connected before counting
    with counting_puts(monkeypatch) as sizes:
        first = parmap.parmap(fn, range(200), backend="ray", chunksize=5)
        second = parmap.parmap(fn, range(200), backend="ray", chunksize=5)
    assert first == second == list(big[:200])
    assert len(sizes) == 1, f"expected one put of the function for two calls, got {sizes}"
    assert sizes[0] > len(big)
    prepared = backend().prepare(CallSpec("token", big, False, "init", b"init blob"))
    light, shares = pickle.loads(prepared.head)
    assert light == CallSpec("token", None, False, "init", None) and shares == ()
    assert len(prepared.head) < 1000 and prepared.holder is not None


def test_a_small_function_rides_along_with_each_task(monkeypatch):
    parmap.parmap(funcs.square, range(4), backend="ray")
    with counting_puts(monkeypatch) as sizes:
        assert parmap.parmap(funcs.square, range(200), backend="ray", chunksize=5) == oracle(200)
    assert sizes == [], "a small function went through the object store"
    prepared = backend().prepare(CallSpec("token", b"fn blob", False))
    assert pickle.loads(prepared.head) == (CallSpec("token", b"fn blob", False), ())
    assert prepared.holder is None


def test_share_value_goes_to_the_object_store_once(monkeypatch):
    table = parmap.share(list(range(200_000)))

    def look(i):
        return os.getpid(), id(table.value), table.value[i]

    parmap.parmap(funcs.square, range(4), backend="ray")
    with counting_puts(monkeypatch) as sizes:
        got = parmap.parmap(look, range(0, 200_000, 1000), backend="ray", chunksize=4)
        got += parmap.parmap(look, range(0, 200_000, 1000), backend="ray", chunksize=4)
    assert [value for _, _, value in got] == 2 * list(range(0, 200_000, 1000))
    big = [size for size in sizes if size > 500_000]
    assert len(big) == 1, f"the shared value was put {len(big)} times: {sizes}"
    assert all(size < 100_000 for size in sizes if size not in big), sizes
    per_worker: dict[int, set[int]] = {}
    for worker, ident, _ in got:
        per_worker.setdefault(worker, set()).add(ident)
    assert all(len(idents) == 1 for idents in per_worker.values()), "a worker loaded it twice"


def test_initializer_makes_classes_on_ray_workers():
    def make_class():
        import builtins

        builtins.ParmapRayPoint = type("ParmapRayPoint", (), {"x": 7})

    def use(i):
        import builtins

        return builtins.ParmapRayPoint.x + i

    got = parmap.parmap(use, range(20), backend="ray", chunksize=2, initializer=make_class)
    assert got == [7 + i for i in range(20)]


def test_a_busy_worker_holds_at_most_one_queued_batch(tmp_path):
    """While one worker is stuck, every batch but the one queued behind it runs elsewhere."""
    release = tmp_path / "release"

    def fn(x):
        if x == 0:
            deadline = time.monotonic() + 60
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return x

    parmap.parmap(funcs.square, range(4), backend="ray", workers=2)
    stream = parmap.imap(fn, range(50), backend="ray", workers=2, chunksize=1, ordered=False)
    first = [next(stream) for _ in range(48)]  # before the release
    release.touch()
    rest = list(stream)
    assert sorted(first + rest) == list(range(50))
    assert 0 in rest  # the stuck item did not hold up the 48 others


# -- faults ---------------------------------------------------------------------------------


def test_rays_own_retries_are_off_and_retries_are_parmaps(tmp_path):
    marker = tmp_path / "crashed"
    crash_once = funcs.crash_once(marker)
    with pytest.raises(parmap.WorkerCrashedError) as info:
        parmap.parmap(crash_once, range(20), backend="ray", chunksize=2)
    assert "os._exit()" in str(info.value) and 7 in info.value.items
    marker.unlink()
    got = parmap.parmap(crash_once, range(20), backend="ray", chunksize=2, retries=1)
    assert got == [x * 10 for x in range(20)] and marker.exists()


def test_a_ray_task_error_is_unwrapped_to_the_original_type():
    @ray.remote(max_retries=0)
    def fails():
        raise KeyError("from a plain ray task")

    parmap.parmap(funcs.square, range(2), backend="ray")
    future = fails.remote().future()
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        future.result()
    error = backend().translate(info.value, future)
    assert type(error) is KeyError and "from a plain ray task" in str(error)


def test_timeout_kills_the_worker_running_the_batch(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()

    def stuck(x):
        (pids / str(os.getpid())).touch()
        time.sleep(120)
        return x

    with pytest.raises(parmap.TimeoutError):
        parmap.parmap(stuck, range(4), backend="ray", chunksize=1, timeout=3)
    started = {int(p.name) for p in pids.iterdir()}
    assert started
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(psutil.pid_exists(p) for p in started), "the stuck task is still running"
    assert parmap.parmap(funcs.square, range(5), backend="ray") == oracle(5)


KILLED_CALLER = """
import os, time, parmap
print(os.getpid(), flush=True)
parmap.parmap(abs, range(4), backend="ray")
print("ready", flush=True)
parmap.parmap(lambda x: time.sleep(120), range(8), backend="ray", chunksize=1)
"""


def test_the_embedded_instance_dies_with_a_killed_caller():
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_CALLER],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    try:
        assert proc.stdout.readline().strip() == str(proc.pid)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(2)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in family)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10  # Ray alone leaves two agents for 60 s
        alive = family
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"left behind: {[p.cmdline()[:2] for p in alive]}"
    finally:
        proc.kill()


# -- a real cluster ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """A Ray cluster of real ``ray start`` nodes on 127.0.0.2, stopped without ``ray stop``.

    ``ray stop`` kills every Ray process of the machine (this test process's
    embedded instance too), so each node is started in a session of its own and
    stopping kills exactly the processes of those sessions. 127.0.0.2 rather
    than 127.0.0.1: Ray replaces "127.0.0.1" and "localhost" by the machine's
    network address in a multi-node cluster; other loopback addresses it keeps.
    """

    IP = "127.0.0.2"

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="parmap-ray-")  # short: Ray puts sockets in it
        self.port = free_port()
        self.address = f"{self.IP}:{self.port}"
        self.sessions: list[int] = []
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),  # this test cluster's own token
        }

    def start_node(self, *args: str) -> None:
        ports = [
            f"--{name}-port={free_port()}"
            for name in ("node-manager", "object-manager", "dashboard-agent-listen",
                         "dashboard-agent-grpc", "runtime-env-agent", "metrics-export")
        ]  # fmt: skip
        command = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            f"--node-ip-address={self.IP}",
            "--num-cpus=1",
            *ports,
        ]
        command += ["--disable-usage-stats", f"--object-store-memory={200 * 2**20}", *args]
        proc = subprocess.Popen(
            command,
            env=self.env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.sessions.append(proc.pid)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{' '.join(command)} failed:\n{out[-3000:]}"

    def start(self) -> None:
        head = [f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}"]
        self.start_node("--head", *head)
        self.start_node(f"--address={self.address}")

    def processes(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in self.sessions and proc.status() != "zombie":
                    found.append(proc)
            except (OSError, psutil.Error):
                pass
        return found

    def stop(self) -> list[psutil.Process]:
        """Kill every process of the cluster's sessions; return any still alive after 15 s."""
        deadline = time.monotonic() + 15
        left = self.processes()
        while left and time.monotonic() < deadline:
            for proc in left:
                with suppress(psutil.Error):
                    proc.kill()
            time.sleep(0.2)
            left = self.processes()
        subprocess.run(["rm", "-rf", self.temp_dir], check=False)
        return left


CLUSTER_DRIVER = """
import json, os, time
import ray, parmap

def where(x):
    time.sleep(0.05)
    return x * x, ray.get_runtime_context().get_node_id(), os.getpid()

got = parmap.parmap(where, range(80), backend="ray", chunksize=2)
info = parmap._registry.live_backends()[0].describe()
print(json.dumps({"results": [list(r) for r in got], "info": info}))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_real_two_node_cluster_through_ray_address(census):
    assert parmap.parmap(funcs.square, [3], backend="ray") == [9]  # this process's own instance
    cluster = LocalCluster()
    try:
        cluster.start()
        before = {p.pid for p in cluster.processes()}
        assert len(before) >= 4, "the two nodes did not start their processes"
        out = run_script(CLUSTER_DRIVER, env={**cluster.env, "RAY_ADDRESS": cluster.address})
        report = json.loads(out.strip().splitlines()[-1])
        results = report["results"]
        assert [square for square, _, _ in results] == oracle(80)
        assert len({node for _, node, _ in results}) == 2, "only one node did work"
        assert report["info"]["nodes"] == 2 and report["info"]["workers"] == 2
        assert report["info"]["connected"] == f"the Ray cluster at {cluster.address}"
    finally:
        left = cluster.stop()
    assert not left, f"cluster processes left: {[p.cmdline()[:2] for p in left]}"
    assert parmap.parmap(funcs.square, [4], backend="ray") == [16], "the cluster's stop hit us"
