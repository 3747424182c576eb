"""Functions the tests map. Registered pickle-by-value in conftest, so workers
that cannot import the tests folder (a Ray or Dask cluster) still get them."""

from __future__ import annotations

import ctypes
import functools
import os
import time


def square(x):
    return x * x


def add(x, y):
    return x + y


def pid(_):
    return os.getpid()


def fail_at(bad, exc_type=ValueError):
    def fn(x):
        if x == bad:
            raise exc_type(f"bad item {x}")
        return x

    return fn


def sleep_then(seconds):
    def fn(x):
        time.sleep(seconds)
        return x

    return fn


def exit_at(bad, code=3):
    def fn(x):
        if x == bad:
            os._exit(code)
        return x

    return fn


def crash_once(marker, bad=7, code=5):
    """Exit the worker on item ``bad`` the first time only (``marker``, a path, remembers)."""

    def fn(x):
        if x == bad and not marker.exists():
            marker.touch()
            os._exit(code)
        return x * 10

    return fn


def logged(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        return ("logged", fn(*args))

    return wrapper


@logged
def decorated_square(x):
    return x * x


class Offset:
    def __init__(self, k):
        self.k = k

    def add(self, x):
        return x + self.k


def record_init(*args):
    # A per-process counter in the environment: module globals travel by value
    # with these functions, so a list here would carry the caller's state along.
    os.environ["PARMAP_TEST_INIT"] = str(int(os.environ.get("PARMAP_TEST_INIT", "0")) + 1)


def init_count(_):
    return (os.getpid(), int(os.environ.get("PARMAP_TEST_INIT", "0")))


def init_fails():
    raise RuntimeError("initializer refuses")


def hold_gil(seconds):
    """Wait ``seconds`` without releasing the GIL (a C call through ``ctypes.PyDLL`` keeps
    it): work that holds the GIL, timed like a sleep whatever else the machine runs."""
    ctypes.PyDLL(None).usleep(int(seconds * 1e6))
