"""What rank 0 of ``mpiexec -n 3 python -m mpi4py.futures facts.py`` knows about the mpi
backend; prints one ``ok ...`` line per check (tests/test_mpi.py compares them)."""

from __future__ import annotations

import os
import time

import parmap
from parmap._registry import backend_class


def slow(x: int) -> int:
    time.sleep(0.002)
    return x


def where(_: int) -> int:
    return os.getpid()


def outer(x: int) -> int:
    return sum(parmap.parmap(abs, range(-x, 0), backend="mpi"))  # in place on a rank


if __name__ == "__main__":
    cls = backend_class("mpi")
    assert cls.attached() and cls.auto, "rank 0 of the pool should be attached"
    print("ok attached: auto may choose mpi")
    pids = set(parmap.parmap(where, range(200), backend="mpi", chunksize=1))
    assert os.getpid() not in pids and len(pids) == 2, pids
    print("ok 2 worker ranks, not rank 0")
    decision = parmap.explain(slow, range(400))
    assert decision.chosen == "mpi", str(decision)
    print("ok auto chooses mpi for 400 x 2 ms")
    with parmap.config(backend="auto"):
        assert parmap.parmap(slow, range(400)) == list(range(400))
    print("ok auto runs it")
    assert parmap.parmap(outer, range(5), backend="mpi") == [sum(range(1, x + 1)) for x in range(5)]
    print("ok nested calls run in place on the ranks")
    try:
        parmap.parmap(slow, range(4), backend="mpi", item_timeout=1)
    except ValueError as exc:
        assert "item_timeout" in str(exc)
        print("ok item_timeout refused")
    parmap.shutdown()
    assert parmap.parmap(where, range(4), backend="mpi") and True
    print("ok works again after parmap.shutdown()")
