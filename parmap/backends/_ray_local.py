"""Starting the embedded local Ray instance: quiet, loopback-only, fate-shared.

``start()`` wraps ``ray.init`` with three safeguards:

- loopback only: the instance listens and talks on 127.0.0.1, not on the
  machine's network address (nobody else should reach a private instance);
- no SIGINT for Ray's processes: a Ctrl-C at the terminal would otherwise
  kill Ray's helpers that share the caller's process group (the log monitor:
  worker output would go silent for the rest of the session);
- a reaper (``_ray_reaper``) that stops the instance if the caller is killed,
  where Ray alone leaves two agents running for a minute;
- started from the main thread or from a thread of parmap's that never ends:
  Ray's processes die with the thread that started them (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ray

from parmap.backends import _ray_reaper

__all__ = ["start", "stop_reaper"]

_SINGLE_NODE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start(
    num_cpus: int,
) -> tuple[subprocess.Popen[bytes] | None, set[_ray_reaper.Process]]:
    """Start a new local Ray instance with ``num_cpus`` CPUs.

    Args:
        num_cpus: the CPUs Ray may schedule on.

    Returns:
        The reaper process (pass it to :func:`stop_reaper` after ``ray.shutdown()``),
        or None where there is no /proc to watch processes with; and the
        instance's own processes (raylet, GCS...), as ``(pid, start time)``.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    before = _ray_children()
    in_a_thread_that_stays(lambda: _init(num_cpus))
    started = _ray_children() - before
    return _start_reaper(started), started


def _init(num_cpus: int) -> None:
    with no_sigint_for_children(), _loopback_only():
        ray.init(
            address="local",  # a new instance, even if `ray start` runs on this machine
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.ERROR,
        )


_keeper: queue.SimpleQueue[tuple[Callable[[], Any], cf.Future[Any]]] | None = None
_keeper_lock = threading.Lock()


def in_a_thread_that_stays(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in the main thread or in one that lives as long as the process.

    Ray starts its raylet and GCS with ``PR_SET_PDEATHSIG`` (ray-project/ray#7150):
    Linux kills them when the *thread* that started them ends, not the process
    (prctl(2): "the parent in this case is considered to be the thread"). Started from a caller's
    worker thread, the embedded instance died with that thread, under the calls of
    every other thread. So a call from another thread starts it from a daemon
    thread of parmap's that never ends (it waits for the next start), with SIGINT
    blocked: Ray's processes inherit that, as from the main thread (see
    :func:`no_sigint_for_children`).
    """
    global _keeper
    if threading.current_thread() is threading.main_thread():
        return fn()
    with _keeper_lock:
        if _keeper is None:
            _keeper = queue.SimpleQueue()
            threading.Thread(target=_keep, args=(_keeper,), name="parmap-ray-starter",
                             daemon=True).start()  # fmt: skip
    done: cf.Future[Any] = cf.Future()
    _keeper.put((fn, done))
    return done.result()


def _keep(jobs: queue.SimpleQueue[tuple[Callable[[], Any], cf.Future[Any]]]) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    while True:
        fn, done = jobs.get()
        try:
            done.set_result(fn())
        except BaseException as exc:
            done.set_exception(exc)


def stop_reaper(reaper: subprocess.Popen[bytes] | None) -> None:
    """Let the reaper kill what is left of the instance, and wait for it."""
    if reaper is None:
        return
    with contextlib.suppress(OSError):
        reaper.stdin.close()  # type: ignore[union-attr]
    try:
        reaper.wait(timeout=_ray_reaper.KILL_DEADLINE + 5)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


def _ray_children() -> set[_ray_reaper.Process]:
    """This process's children that run Ray's programs."""
    found = set()
    for pid, start_time in _ray_reaper.children(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                if b"/ray/" in file.read():
                    found.add((pid, start_time))
        except OSError:
            pass
    return found


def _start_reaper(started: set[_ray_reaper.Process]) -> subprocess.Popen[bytes] | None:
    """Start the process that stops these Ray processes when this one ends (Linux)."""
    if not started or not os.path.isdir("/proc"):
        return None
    roots = [f"{pid}:{start_time}" for pid, start_time in sorted(started)]
    return subprocess.Popen(
        [sys.executable, "-I", _ray_reaper.__file__, *roots],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C at the terminal does not reach it
    )


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make the instance listen and talk on 127.0.0.1 only.

    By default Ray binds its servers to every interface and advertises the
    machine's network address, even for a single-machine instance. Ray's own
    single-node mode (ray-project/ray#18730, the default on macOS and Windows)
    keeps to the loopback address. ``$RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    selects it: the processes Ray starts read it from their environment, this
    one read it when it imported Ray (hence the constant, set back afterwards).
    """
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        yield  # another Ray layout: keep its defaults
        return
    saved_env = os.environ.get(_SINGLE_NODE_VAR)
    saved_flag = constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_NODE_VAR] = "0"
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_SINGLE_NODE_VAR, None)
        else:
            os.environ[_SINGLE_NODE_VAR] = saved_env


@contextlib.contextmanager
def no_sigint_for_children() -> Iterator[None]:
    """Block SIGINT in this thread while Ray starts its processes and threads.

    Children and threads inherit the blocked signal mask, so Ray's processes
    never see a terminal's Ctrl-C, and Ray's threads in this process never take
    it: the kernel hands SIGINT to the main thread, which raises
    KeyboardInterrupt at once. A Ctrl-C pressed during the start is delivered
    when it ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
