"""Run under `mpiexec -n 3 python -m mpi4py.futures map_on_mpi.py`: parmap on an
MPIPoolExecutor (rank 0 maps, ranks 1-2 are its workers). Prints one line per check."""

from __future__ import annotations

import os

from mpi4py.futures import MPIPoolExecutor

import parmap


def fitness(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fails(x: int) -> int:
    if x == 17:
        raise KeyError(f"bad item {x}")
    return x


if __name__ == "__main__":
    with MPIPoolExecutor() as executor:
        got = parmap.parmap(fitness, range(200), backend=executor)
        assert [value for value, _ in got] == [i * i for i in range(200)]
        workers = {pid for _, pid in got}
        assert os.getpid() not in workers
        print(f"ok results: 200 in order on {len(workers)} MPI workers", flush=True)
        offset = 7
        assert parmap.parmap(lambda x: x + offset, range(5), backend=executor) == list(range(7, 12))
        print("ok a closure travels by value", flush=True)
        try:
            parmap.parmap(fails, range(40), backend=executor)
        except KeyError as exc:
            assert "item 17" in "\n".join(exc.__notes__)
            print("ok the user's KeyError names item 17", flush=True)
        streamed = list(parmap.imap(fitness, iter(range(50)), backend=executor, ordered=False))
        assert sorted(value for value, _ in streamed) == [i * i for i in range(50)]
        print("ok imap, unordered", flush=True)
    parmap.shutdown()
    print("ok done", flush=True)
