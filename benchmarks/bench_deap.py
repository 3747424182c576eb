"""DEAP OneMax (examples/onemax.py) on every backend vs serial, one run.

Target (DEAP issue): ~2 ms per evaluation, 300 individuals, 5 generations; the GA
on every parallel backend takes <= 0.6 x serial wall time, excluding the one-time
backend start-up, which is reported separately. Also shows what
``multiprocessing.Pool.map`` does with the DeltaPenalty-decorated evaluation.

    python benchmarks/bench_deap.py [--cost-ms 2] [--pop 300] [--ngen 5] [--backends a,b]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import _common  # noqa: E402
import _ga  # noqa: E402
import cloudpickle  # noqa: E402
import onemax  # noqa: E402
from _common import Checks, header, time_call  # noqa: E402

import parmap  # noqa: E402

for module in (onemax, _ga):  # workers of a cluster cannot import examples/
    cloudpickle.register_pickle_by_value(module)


def ga_seconds(args: argparse.Namespace) -> tuple[float, dict]:
    start = time.perf_counter()
    result = onemax.run(args.seed, args.pop, args.ngen, args.cost_ms, verbose=False)
    return time.perf_counter() - start, result


def pool_map_peer(args: argparse.Namespace) -> str:
    """What plain multiprocessing.Pool.map does with the same toolbox."""
    with multiprocessing.get_context("fork").Pool(_common.cpu_count()) as pool:
        original = parmap.parmap
        onemax.parmap.parmap = pool.map  # the toolbox registers parmap.parmap at build time
        try:
            seconds, _ = ga_seconds(args)
            return f"{seconds:.2f} s"
        except Exception as exc:  # the point of the comparison
            return f"fails: {type(exc).__name__}: {str(exc)[:90]}"
        finally:
            onemax.parmap.parmap = original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost-ms", type=float, default=2.0)
    parser.add_argument("--pop", type=int, default=300)
    parser.add_argument("--ngen", type=int, default=5)
    parser.add_argument("--seed", type=int, default=64)
    parser.add_argument("--backends", default=",".join(parmap.available_backends()))
    args = parser.parse_args()
    header(f"DEAP OneMax: {args.pop} individuals, {args.ngen} generations, ~{args.cost_ms} ms/eval")
    backends = [b for b in args.backends.split(",") if b and b != "serial"]
    checks = Checks()
    with parmap.config(backend="serial"):
        serial, reference = ga_seconds(args)
    print(f"  serial: GA {serial:.2f} s")
    for name in backends:
        with parmap.config(backend=name):
            startup = time_call(lambda: parmap.parmap(onemax.feasible, [[0] * 100] * 8))
            seconds, result = ga_seconds(args)
        parmap.shutdown(name)
        same = result == reference
        print(f"  {name}: start-up {startup:.2f} s, GA {seconds:.2f} s, same as serial: {same}")
        checks.at_most(f"{name} GA / serial", seconds / serial, 0.6)
        checks.at_least(f"{name} reproduces serial (1 = yes)", float(same), 1.0)
    print(f"  peer multiprocessing.Pool.map: {pool_map_peer(args)}")
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
