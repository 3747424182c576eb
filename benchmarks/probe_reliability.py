"""The adversarial probes of docs/reliability.md's promises (issue 26), with their figures.

Each probe runs in its own process (``python benchmarks/probe_reliability.py PROBE
[BACKEND]``) and prints one line per figure; it uses public names only, so the same
script measures any revision (``PYTHONPATH=<other checkout>`` runs that one's parmap).
Each probe stops itself: a call that hangs is abandoned after ``--limit`` seconds and
reported as such.

- ``raylet``: 160 items of 0.25 s, workers=2, retries=1, no timeout; SIGKILL the raylet
  4 s in. Prints the time to the error and its type, then the next call's time and result.
- ``scheduler``: the same on Dask with ``address=`` to a ``dask scheduler`` process,
  which is SIGKILLed.
- ``share BACKEND``: 30 rounds of a fresh ``share()`` of 10 MB, one call, ``del``, ``gc``.
  Prints the workers' summed RSS, the caller's RSS and parmap's files in /dev/shm at
  rounds 1, 5 and 30.
- ``threads BACKEND``: two threads, 20 calls each, ``workers=2`` and ``workers=1``. Prints
  the calls that raised or returned wrong results, and the wall time.
- ``dask-share-kill``: fn reads a shared list; 120 items of 0.25 s, retries=2; SIGKILL a
  worker 4 s in; 5 runs. Prints each run's time and outcome.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

import parmap

MB = 2**20


def family() -> list[psutil.Process]:
    """This process's live descendants."""
    return [p for p in psutil.Process().children(recursive=True) if _alive(p)]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def shm_bytes(before: set[str]) -> int:
    """Bytes in /dev/shm entries named parmap-* that were not there at the start."""
    total = 0
    for entry in Path("/dev/shm").glob("parmap-*"):
        if entry.name in before:
            continue
        for path in [entry, *entry.rglob("*")] if entry.is_dir() else [entry]:
            with contextlib.suppress(OSError):
                total += path.stat().st_size if path.is_file() else 0
    return total


def in_thread(fn, limit: float):
    """Run ``fn()`` in a daemon thread; return (seconds, result or exception, finished)."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["value"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    return time.monotonic() - started, box.get("value"), not thread.is_alive()


def describe(value) -> str:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {str(value).splitlines()[0][:150] if str(value) else ''}"
    if isinstance(value, list):
        return f"list of {len(value)}"
    return repr(value)[:150]


def slow(x: int) -> int:
    time.sleep(0.25)
    return x


def kill_later(pid_of, delay: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        pid = pid_of()
        print(f"  killing pid {pid} at {delay:.0f} s", flush=True)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def probe_raylet(limit: float) -> None:
    parmap.parmap(abs, range(10), backend="ray", workers=2)

    def raylet() -> int:
        return next(p.pid for p in family() if p.name() == "raylet")

    kill_later(raylet, 4.0)
    call = lambda: parmap.parmap(slow, range(160), backend="ray", workers=2, retries=1)  # noqa: E731
    seconds, value, ended = in_thread(call, limit)
    print(f"call: {'ended' if ended else 'STILL RUNNING'} after {seconds:.1f} s: {describe(value)}")
    if not ended:
        return
    seconds, value, ended = in_thread(
        lambda: parmap.parmap(abs, range(-5, 5), backend="ray", workers=2), limit
    )
    ok = value == [abs(i) for i in range(-5, 5)]
    print(f"next call: {'ended' if ended else 'STILL RUNNING'} after {seconds:.1f} s, "
          f"correct: {ok} ({describe(value)})")  # fmt: skip


def probe_scheduler(limit: float) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    bindir = os.path.dirname(sys.executable)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [f"{bindir}/dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", ":0"], **quiet,
    )  # fmt: skip
    worker = subprocess.Popen(
        [f"{bindir}/dask", "worker", address, "--nworkers", "2", "--nthreads", "1",
         "--host", "127.0.0.1", "--dashboard-address", ":0"], **quiet,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        parmap.parmap(abs, range(10), backend="dask", address=address)
        kill_later(lambda: scheduler.pid, 4.0)
        call = lambda: parmap.parmap(slow, range(160), backend="dask", address=address, retries=1)  # noqa: E731
        seconds, value, ended = in_thread(call, limit)
        print(f"call: {'ended' if ended else 'STILL RUNNING'} after {seconds:.1f} s: "
              f"{describe(value)}")  # fmt: skip
    finally:
        worker.kill()
        scheduler.kill()
        worker.wait()
        scheduler.wait()


def probe_share(backend: str, rounds: int = 30) -> None:
    shm_before = {e.name for e in Path("/dev/shm").glob("parmap-*")}
    me = psutil.Process()

    def read(handle):
        return lambda i: len(handle.value) + i

    parmap.parmap(abs, range(10), backend=backend, workers=2)
    for round_ in range(1, rounds + 1):
        handle = parmap.share(os.urandom(10 * MB))
        got = parmap.parmap(read(handle), range(8), backend=backend, workers=2, chunksize=1)
        assert got == [10 * MB + i for i in range(8)]
        del handle, got
        gc.collect()
        if round_ in (1, 5, 30) or round_ == rounds:
            time.sleep(1.0)  # let engines act on what was released
            workers = sum(_rss(p) for p in family())
            caller, shm = me.memory_info().rss / MB, shm_bytes(shm_before) / MB
            print(f"{backend} round {round_:2d}: workers {workers / MB:7.0f} MB, caller "
                  f"{caller:6.0f} MB, /dev/shm {shm:5.0f} MB", flush=True)  # fmt: skip


def probe_threads(backend: str, rounds: int = 20) -> None:
    failures: list[str] = []
    wrong = [0]

    def caller(workers: int) -> None:
        for r in range(rounds):
            try:
                got = parmap.parmap(abs, range(-50, 50), backend=backend, workers=workers)
                if got != [abs(i) for i in range(-50, 50)]:
                    wrong[0] += 1
            except Exception as exc:
                failures.append(f"workers={workers} round {r}: {describe(exc)}")

    started = time.monotonic()
    threads = [threading.Thread(target=caller, args=(w,), daemon=True) for w in (2, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    hung = sum(t.is_alive() for t in threads)
    print(f"{backend}: {2 * rounds} calls in {time.monotonic() - started:.1f} s, "
          f"{len(failures)} raised, {wrong[0]} wrong, {hung} threads still running")  # fmt: skip
    for line in failures[:3]:
        print("   ", line)


def probe_dask_share_kill(limit: float, runs: int = 5) -> None:
    table = parmap.share(list(range(1000)))

    def fn(x):
        time.sleep(0.25)
        return table.value[x]

    parmap.parmap(abs, range(10), backend="dask", workers=2)
    for run in range(runs):
        workers = [p.pid for p in family() if "spawn_main" in " ".join(p.cmdline())]
        kill_later(lambda workers=workers: workers[0], 4.0)
        call = lambda: parmap.parmap(fn, range(120), backend="dask", workers=2, retries=2)  # noqa: E731
        seconds, value, ended = in_thread(call, limit)
        ok = value == list(range(120))
        print(f"run {run + 1}: {'ended' if ended else 'STILL RUNNING'} after {seconds:.1f} s, "
              f"correct: {ok} ({describe(value)})", flush=True)  # fmt: skip
        if not ended:
            return
        time.sleep(2.0)  # the nanny restarts the worker


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=["raylet", "scheduler", "share", "threads",
                                          "dask-share-kill"])  # fmt: skip
    parser.add_argument("backend", nargs="?", default="loky")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds before a call "
                        "counts as hung")  # fmt: skip
    args = parser.parse_args()
    print(f"parmap from {os.path.dirname(parmap.__file__)}; load {os.getloadavg()[0]:.1f}")
    if args.probe == "raylet":
        probe_raylet(args.limit)
    elif args.probe == "scheduler":
        probe_scheduler(args.limit)
    elif args.probe == "share":
        probe_share(args.backend)
    elif args.probe == "threads":
        probe_threads(args.backend)
    else:
        probe_dask_share_kill(args.limit)
    sys.stdout.flush()
    in_thread(parmap.shutdown, 30.0)
    os._exit(0)  # a hung call's threads must not keep the probe alive


if __name__ == "__main__":
    sys.exit(main())
