"""A long call on the MPI ranks, for Ctrl-C: ``mpiexec -n 3 python -m mpi4py.futures
long_call.py``; prints ``calling`` once the ranks run items."""

from __future__ import annotations

import time

import parmap


def slow(x: int) -> int:
    time.sleep(0.5)
    return x


if __name__ == "__main__":
    parmap.parmap(slow, range(2), backend="mpi")
    print("calling", flush=True)
    parmap.parmap(slow, range(400), backend="mpi", chunksize=1)
    print("finished?", flush=True)
