"""DEAP's OneMax (``tools.DeltaPenalty``, ``creator`` classes) on serial, then on the
MPI ranks, in one job: ``mpiexec -n 3 python -m mpi4py.futures onemax_side_by_side.py
[--pop P --ngen G --cost-ms C]``. Prints one JSON line: each run's wall
time, and whether the MPI runs reproduced serial's logbook and hall of fame."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cloudpickle

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import _ga
import onemax
from _ga import arguments

import parmap

for module in (onemax, _ga):  # the ranks cannot import the examples folder
    cloudpickle.register_pickle_by_value(module)


def timed(backend: str, args) -> tuple[float, dict]:
    with parmap.config(backend=backend):
        start = time.perf_counter()
        result = onemax.run(args.seed, args.pop, args.ngen, args.cost_ms, verbose=False)
        return time.perf_counter() - start, result


if __name__ == "__main__":
    args = arguments("OneMax, serial and mpi side by side", pop=60, ngen=3, cost_ms=0.0)
    parmap.parmap(onemax.feasible, [[0] * onemax.N_BITS] * 8, backend="mpi")  # meet the ranks
    rounds = 2 if args.cost_ms else 1
    times: dict[str, list[float]] = {"serial": [], "mpi": []}
    same = True
    reference = None
    for _ in range(rounds):  # alternate, so that other load on the machine hits both
        for backend in ("serial", "mpi"):
            seconds, result = timed(backend, args)
            times[backend].append(seconds)
            reference = reference or result
            same = same and result["hof"] == reference["hof"]
            same = same and result["logbook"] == reference["logbook"]
    best = {name: min(values) for name, values in times.items()}
    report = {
        "serial_s": best["serial"],
        "mpi_s": best["mpi"],
        "ratio": best["mpi"] / best["serial"],
        "same_as_serial": same,
        "hof": reference["hof"] if reference else None,
    }
    print(json.dumps(report), flush=True)
