"""bench_neuro.py against real clusters on this machine, started by address and stopped after.

1. A two-node Ray cluster: ``ray start --head`` on 127.0.0.2 and a second
   ``ray start --address ...`` node on 127.0.0.3, one CPU each, each in a
   session of its own (``ray stop`` would stop every Ray on the machine).
2. A Dask scheduler on 127.0.0.2 and two ``dask worker --nthreads 1``
   processes on 127.0.0.2 and 127.0.0.3.

Each runs ``bench_neuro.py --backends <engine> --address <address>``: the same
GA, the same checks, timed in turns with serial in this machine's caller. Then
every process of the clusters is killed and the script checks none is left.

    python benchmarks/bench_neuro_clusters.py [--rounds 2] [bench_neuro options...]
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
HEAD, OTHER = "127.0.0.2", "127.0.0.3"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Sessions:
    """Processes started in sessions of their own, killed session by session."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def start(self, command: list[str], env: dict[str, str], wait: bool = False) -> None:
        proc = subprocess.Popen(
            command, env=env, start_new_session=True,
            stdout=subprocess.PIPE if wait else subprocess.DEVNULL, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self.ids.append(proc.pid)
        if wait:
            out, _ = proc.communicate(timeout=180)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed:\n{out[-3000:]}")

    def processes(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in self.ids and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (OSError, psutil.Error):
                pass
        return found

    def stop(self) -> None:
        """Kill every process of the sessions (as tests/test_ray.py does); fail if any stays."""
        deadline = time.monotonic() + 30
        while (left := self.processes()) and time.monotonic() < deadline:
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            time.sleep(0.3)
        if left:
            raise SystemExit(f"cluster processes left: {[p.cmdline()[:3] for p in left]}")


def ray_cluster(sessions: Sessions, env: dict[str, str], temp_dir: str) -> str:
    port = free_port()
    address = f"{HEAD}:{port}"
    for ip, extra in ((HEAD, ["--head", f"--port={port}", "--include-dashboard=false",
                              f"--temp-dir={temp_dir}"]),
                      (OTHER, [f"--address={address}"])):  # fmt: skip
        ports = [
            f"--{name}-port={free_port()}"
            for name in ("node-manager", "object-manager", "dashboard-agent-listen",
                         "dashboard-agent-grpc", "runtime-env-agent", "metrics-export")
        ]  # fmt: skip
        command = ["ray", "start", f"--node-ip-address={ip}", "--num-cpus=1", *ports, *extra]
        command += ["--disable-usage-stats", f"--object-store-memory={300 * 2**20}"]
        sessions.start(command, env, wait=True)
    return address


def dask_cluster(sessions: Sessions, env: dict[str, str]) -> str:
    port = free_port(HEAD)
    address = f"tcp://{HEAD}:{port}"
    http = ["--no-dashboard", "--dashboard-address", f"{HEAD}:0"]
    sessions.start(["dask", "scheduler", "--host", HEAD, "--port", str(port), *http], env)
    for ip in (HEAD, OTHER):
        command = ["dask", "worker", address, "--nthreads", "1", "--host", ip, *http]
        sessions.start([*command, "--name", f"worker-{ip}"], env)
    import distributed

    with distributed.Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
    return address


def bench(engine: str, address: str, env: dict[str, str], extra: list[str]) -> int:
    print(f"\n#### {engine} cluster at {address}", flush=True)
    command = [sys.executable, os.path.join(HERE, "bench_neuro.py"), "--backends", engine]
    return subprocess.run([*command, "--address", address, *extra], env=env).returncode


def main() -> int:
    extra = sys.argv[1:]
    status = 0
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    with tempfile.TemporaryDirectory(prefix="parmap-ray-") as temp_dir:
        sessions = Sessions()
        try:
            status |= bench("ray", ray_cluster(sessions, env, temp_dir), env, extra)
        finally:
            sessions.stop()
    sessions = Sessions()
    try:
        status |= bench("dask", dask_cluster(sessions, env), env, extra)
    finally:
        sessions.stop()
    print("\nall cluster processes stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
