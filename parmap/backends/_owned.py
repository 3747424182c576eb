"""Private directories named after the process that owns them, and the sweep of dead owners'.

A backend that keeps files outside its workers (``share()`` values in /dev/shm,
a Dask cluster's scratch space) makes one directory per caller process::

    <parent>/<prefix><pid>-<start time>-<random>     mode 0700, removed at shutdown

A caller killed by SIGKILL runs no cleanup, so the next caller to make such a
directory first removes those whose owner is gone: the pid no longer runs, or
runs a later process (its start time, in clock ticks since boot, differs). Only
directories of this user are looked at, and never one whose owner lives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
from typing import Any

__all__ = [
    "forget_on_sigterm",
    "make_owned_dir",
    "owner_alive",
    "remove_on_sigterm",
    "sweep",
]

log = logging.getLogger("parmap")


def _start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == b"Z":  # exited; its parent has not reaped it yet
        return None
    return int(fields[19])


def _me() -> str:
    pid = os.getpid()
    return f"{pid}-{_start_time(pid) or 0}"


def owner_alive(name: str, prefix: str) -> bool:
    """Whether the process that made directory ``name`` (``<prefix><pid>-<start>-...``) runs.

    A name that does not parse is treated as alive: it is not ours to remove.
    """
    try:
        pid_text, start_text = name[len(prefix) :].split("-")[:2]
        pid, start = int(pid_text), int(start_text)
    except ValueError:
        return True
    if not os.path.isdir("/proc"):  # pragma: no cover - not Linux: cannot tell
        return True
    return _start_time(pid) == start


def sweep(parent: str, prefix: str) -> list[str]:
    """Remove this user's ``<prefix>*`` directories under ``parent`` whose owner is gone.

    Returns:
        The paths removed.
    """
    removed: list[str] = []
    uid = os.getuid()
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(parent, name)
        if not name.startswith(prefix) or owner_alive(name, prefix):
            continue
        with contextlib.suppress(OSError):
            if os.lstat(path).st_uid == uid and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if removed:
        log.debug("parmap: removed %d directories of dead callers: %s", len(removed), removed)
    return removed


def make_owned_dir(parent: str | None, prefix: str) -> str:
    """Sweep dead owners' directories, then make this process's own (mode 0700).

    Args:
        parent: where (None: the system's temporary directory).
        prefix: the directories' common name start, e.g. ``"parmap-shared-"``.

    Returns:
        The new directory's path.
    """
    parent = parent or tempfile.gettempdir()
    sweep(parent, prefix)
    return tempfile.mkdtemp(prefix=f"{prefix}{_me()}-", dir=parent)


_on_sigterm: set[str] = set()
_handler_installed = False
_installed_by = 0  # the pid whose paths they are: a forked child inherits the handler


def remove_on_sigterm(path: str) -> None:
    """Remove ``path`` if this process is ended by SIGTERM (as well as at shutdown).

    Python's default for SIGTERM ends the process at once, without ``atexit``. Where
    SIGTERM still has that default and this is the main thread, a handler removes
    the paths, then ends the process by SIGTERM as before (the same exit status). A
    handler of the program's own (or Ray's, which exits through ``atexit``) is left
    alone; a path made elsewhere is swept by the next caller (:func:`sweep`).
    """
    global _handler_installed, _installed_by
    _on_sigterm.add(path)
    if _handler_installed or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):  # not the main interpreter, ...
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminated)
            _handler_installed = True
            _installed_by = os.getpid()


def _after_fork_in_child() -> None:
    """A forked child (a fork-started pool worker) gets SIGTERM's default back: the
    paths are not its own, and a pool ends its workers with SIGTERM, at once."""
    global _handler_installed
    _on_sigterm.clear()
    if _handler_installed and signal.getsignal(signal.SIGTERM) is _terminated:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _handler_installed = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def forget_on_sigterm(path: str) -> None:
    """``path`` was removed: nothing to do for it on SIGTERM."""
    _on_sigterm.discard(path)


def _terminated(signum: int, frame: Any) -> None:
    if os.getpid() == _installed_by:  # not in a forked child (a fork-started pool worker)
        for path in list(_on_sigterm):
            shutil.rmtree(path, ignore_errors=True)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
