"""DEAP OneMax (examples/onemax.py) on every backend vs serial, one run.

Target (DEAP issue): ~2 ms per evaluation, 300 individuals, 5 generations; the GA
on every parallel backend takes <= 0.6 x serial wall time, excluding the one-time
backend start-up, which is reported separately. Also shows what
``multiprocessing.Pool.map`` does with the DeltaPenalty-decorated evaluation.

Each backend's GA is timed in turns with the serial GA (``--rounds`` pairs, the
verdict is the median of the paired ratios), and beside them two plain forked
processes share the same busy loop, once each way: the best ratio the machine
allows at that moment (on a shared VM it is often well above 0.5).

    python benchmarks/bench_deap.py [--cost-ms 2] [--pop 300] [--ngen 5] [--rounds 5]
                                    [--backends a,b]
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
from _common import Ceiling, Checks, header, interleaved, median, paired_ratio, time_call  # noqa: E402

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
    parser.add_argument("--rounds", type=int, default=5, help="serial/backend pairs per backend")
    parser.add_argument("--backends", default=",".join(parmap.available_backends()))
    args = parser.parse_args()
    header(f"DEAP OneMax: {args.pop} individuals, {args.ngen} generations, ~{args.cost_ms} ms/eval")
    backends = [b for b in args.backends.split(",") if b and b != "serial"]
    ceiling = Ceiling()
    loops = [_ga.loops_per_ms() * 250] * 2  # a busy loop of 0.5 s, in two shares
    checks = Checks()
    with parmap.config(backend="serial"):
        reference = ga_seconds(args)[1]
    for name in backends:
        with parmap.config(backend=name):
            startup = time_call(lambda: parmap.parmap(onemax.feasible, [[0] * 100] * 8))
        results: list[dict] = []

        def on(backend: str, results: list[dict] = results) -> None:
            with parmap.config(backend=backend):
                results.append(ga_seconds(args)[1])

        times = interleaved(
            {
                "serial": lambda: on("serial"),
                name: lambda name=name: on(name),
                "halves": ceiling.split(_ga.burn, loops),
                "whole": lambda: list(map(_ga.burn, loops)),
            },
            repeats=args.rounds,
        )
        parmap.shutdown(name)
        same = all(result == reference for result in results)
        ratio = paired_ratio(times[name], times["serial"])
        best = paired_ratio(times["halves"], times["whole"])
        print(
            f"  {name}: start-up {startup:.2f} s, GA {median(times[name]):.2f} s, serial GA "
            f"{median(times['serial']):.2f} s (medians of {args.rounds}); every run same as "
            f"serial: {same}; two plain processes: {best:.3f} of one"
        )
        checks.at_most(f"{name} GA / serial", ratio, 0.6)
        checks.at_least(f"{name} reproduces serial (1 = yes)", float(same), 1.0)
    ceiling.close()
    print(f"  peer multiprocessing.Pool.map: {pool_map_peer(args)}")
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
