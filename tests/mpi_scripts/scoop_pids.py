"""A SCOOP script: which processes run its futures.map (``mpiexec -n 3 python -m
mpi4py.futures -m parmap.scoop --backend mpi scoop_pids.py``)."""

import os

import scoop
from scoop import futures


def pid(_):
    return os.getpid()


if __name__ == "__main__":
    workers = set(futures.map(pid, range(200)))
    print(f"size {scoop.SIZE}, {len(workers)} worker pids, here: {os.getpid() in workers}")
