"""Stops an embedded Ray instance whose caller ended without stopping it.

Ray fate-shares most of a local instance with the process that started it,
but when that process is killed (SIGKILL, OOM killer) two agents linger for
about a minute: on noticing the raylet's death they report it to the GCS,
which is dead too, and wait out a 60 s timeout (``publish_error_to_driver``;
see also ray-project/ray#59162: the runtime-env agent ignores SIGTERM).

The caller starts this script as its own process, in its own session (a
Ctrl-C at the terminal does not reach it), with the pids of the Ray processes
it started and a pipe on stdin::

    caller ──pipe──► reaper     at once, then every 2 s: note the Ray processes' descendants
       │                        (agents, workers) while the tree is intact
       ✕ dies / shuts down ───► EOF: SIGKILL every noted process still alive, exit

It uses only the standard library and /proc (Linux), and does not import
parmap, so it starts fast and works whatever the caller had imported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

_POLL_SECONDS = 2.0
KILL_DEADLINE = 5.0

Process = tuple[int, int]  # (pid, start time in clock ticks): a pid is reused, the pair is not


def _stat(pid: int) -> tuple[int, int] | None:
    """``(parent pid, start time)`` of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == b"Z":  # a zombie has exited; only its parent's wait() is missing
        return None
    return int(fields[1]), int(fields[19])


def _parents() -> dict[int, list[Process]]:
    """Every live process, grouped by parent pid."""
    tree: dict[int, list[Process]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                tree.setdefault(stat[0], []).append((int(name), stat[1]))
    return tree


def children(pid: int) -> list[Process]:
    """The live children of ``pid``."""
    return _parents().get(pid, [])


def name(process: Process) -> str:
    """The program name of a live process ("" if it is gone)."""
    try:
        with open(f"/proc/{process[0]}/comm", encoding="utf-8", errors="replace") as file:
            return file.read().strip()
    except OSError:
        return ""


def alive(process: Process) -> bool:
    """Whether this very process (not a later one with its pid) still runs."""
    stat = _stat(process[0])
    return stat is not None and stat[1] == process[1]


def family(roots: set[Process]) -> set[Process]:
    """``roots`` that still run, and all their live descendants."""
    tree = _parents()
    found = {p for p in roots if alive(p)}
    todo = list(found)
    while todo:
        for child in tree.get(todo.pop()[0], ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill(processes: set[Process], deadline: float = KILL_DEADLINE) -> set[Process]:
    """SIGKILL ``processes`` and wait until they are gone; return any left."""
    for pid, _ in processes:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + deadline
    left = {p for p in processes if alive(p)}
    while left and time.monotonic() < end:
        time.sleep(0.05)
        left = {p for p in left if alive(p)}
    return left


def main(argv: list[str]) -> int:
    """Watch the processes named in ``argv`` (``pid:start`` pairs) until stdin closes."""
    roots = {(int(pid), int(start)) for pid, start in (arg.split(":") for arg in argv)}
    noted: set[Process] = family(roots) | roots
    lock = threading.Lock()
    closed = threading.Event()

    def note() -> None:
        while not closed.wait(_POLL_SECONDS):
            current = family(noted)  # the live ones among them, and their new children
            with lock:
                noted.clear()
                noted.update(current)

    threading.Thread(target=note, daemon=True).start()
    while sys.stdin.buffer.read(4096):  # until EOF: the caller closed the pipe or died
        pass
    closed.set()
    with lock:
        doomed = {p for p in noted | family(noted) if alive(p)}
    kill(doomed)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(main(sys.argv[1:]))
