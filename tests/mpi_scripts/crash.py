"""A worker rank dies on item 7 (``exit``: os._exit(3); ``segv``: a segfault), under
``mpiexec -n 3 python -m mpi4py.futures crash.py MODE``: the job must end, never hang."""

from __future__ import annotations

import ctypes
import os
import sys
import time

import parmap


def fitness(x: int) -> int:
    if x == 7:
        if os.environ["CRASH_MODE"] == "segv":
            ctypes.string_at(0)  # reads address 0: SIGSEGV
        os._exit(3)
    time.sleep(0.05)
    return x


if __name__ == "__main__":
    print("calling", flush=True)
    try:
        parmap.parmap(fitness, range(40), backend="mpi", chunksize=2)
    except parmap.WorkerCrashedError as exc:
        print(f"WorkerCrashedError: {exc}", flush=True)
        sys.exit(2)
    print("no crash?", flush=True)
