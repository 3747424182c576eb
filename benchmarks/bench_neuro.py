"""Deep neuroevolution (examples/neuroevolution.py) on every backend vs serial, one run.

Target (issue 24): at about 20 ms per evaluation, the GA on every parallel
backend takes <= 0.55 x serial wall time, excluding the one-time backend
start-up (reported separately) and the table's measurement (the same serial
work on every backend). Each backend's GA is timed in turns with the serial GA
(``--rounds`` pairs, the verdict is the median of the paired ratios) and beside
them two plain forked processes share a busy loop: the best ratio the machine
allows at that moment. Every run must reproduce the serial history exactly.

Each run makes fresh handles (``share`` and ``per_worker``), as one run of the
example does: workers build their rollout state and load the table in every run.

    python benchmarks/bench_neuro.py [--population 100] [--generations 6] [--episodes 3]
                                     [--rounds 3] [--backends a,b]
    python benchmarks/bench_neuro.py --backends ray --address 127.0.0.2:6379   # a cluster
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import _ga  # noqa: E402
import cloudpickle  # noqa: E402
import neuroevolution as ne  # noqa: E402
from _common import Ceiling, Checks, header, interleaved, median, paired_ratio, time_call  # noqa: E402

import parmap  # noqa: E402

cloudpickle.register_pickle_by_value(ne)  # workers of a cluster cannot import examples/

BUSY = 0.65  # a two-process ceiling above this: other load took the second core


def one_run(settings: ne.Settings, table: ne.NormalisationTable) -> dict[str, Any]:
    """One GA run (fresh handles), its history and where its evaluations ran."""
    census = ne.Census()
    start = time.perf_counter()
    history, best, wire = ne.evolve(settings, ne.evaluator(settings, table), census, False)
    seconds = time.perf_counter() - start
    return {"history": history, "best": best, "seconds": seconds, **census.summary(), **wire}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=100)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--episodes", type=int, default=3, help="episodes per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="serial/backend pairs per backend")
    # Worker processes: threads share one process and its GIL (the rollouts are small
    # numpy steps that hold it), and hold the caller's table rather than a copy.
    processes = [b for b in parmap.available_backends() if b != "threads"]
    parser.add_argument("--backends", default=",".join(processes))
    parser.add_argument("--address", help="a Ray cluster or Dask scheduler (one backend)")
    parser.add_argument("--workers", type=int, help="workers per backend (default: CPUs)")
    parser.add_argument("--target", type=float, default=0.55, help="ratio to meet")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    settings = ne.Settings(
        seed=args.seed, population=args.population, generations=args.generations,
        episodes=args.episodes, truncation=max(1, args.population // 5),
    )  # fmt: skip
    where = f" on {args.address}" if args.address else ""
    header(
        f"Neuroevolution GA{where}: {args.population} individuals, {args.generations} "
        f"generations, {args.episodes} CartPole episodes per evaluation"
    )
    ceiling = Ceiling()  # forked before any backend starts
    loops = [_ga.loops_per_ms() * 250] * 2  # a busy loop of 0.5 s, in two shares
    table = ne.reference_table(settings.seed, settings.reference, settings.table_size)
    with parmap.config(backend="serial"):
        reference = one_run(settings, table)
    evaluations = args.population * args.generations
    print(
        f"  serial: {reference['seconds']:.2f} s, {evaluations} evaluations, "
        f"{1e3 * reference['seconds'] / evaluations:.1f} ms per evaluation on average; "
        f"best {reference['best'][0]:.0f}; genome {reference['sent'] / evaluations:.0f} B and "
        f"result {reference['received'] / evaluations:.0f} B per evaluation, "
        f"table {len(cloudpickle.dumps(table)) / 1e6:.2f} MB per worker"
    )
    checks = Checks()
    for name in [b for b in args.backends.split(",") if b and b != "serial"]:
        compare(name, args, settings, table, reference, ceiling, loops, checks)
    ceiling.close()
    return checks.summary()


def compare(
    name: str,
    args: argparse.Namespace,
    settings: ne.Settings,
    table: ne.NormalisationTable,
    reference: dict[str, Any],
    ceiling: Ceiling,
    loops: list[int],
    checks: Checks,
) -> None:
    """Time ``name`` against serial in turns; print and check the paired ratio."""
    options = {"backend": name, "workers": args.workers, "address": args.address}
    with parmap.config(**options):
        startup = time_call(lambda: parmap.parmap(abs, range(8)))
    runs: list[dict[str, Any]] = []

    def on(backend: str, keep: bool) -> None:
        with parmap.config(**(options if backend == name else {"backend": backend})):
            run = one_run(settings, table)
        if keep:
            runs.append(run)

    times = interleaved(
        {
            "serial": lambda: on("serial", False),
            name: lambda: on(name, True),
            "halves": ceiling.split(_ga.burn, loops),
            "whole": lambda: list(map(_ga.burn, loops)),
        },
        repeats=args.rounds,
    )
    parmap.shutdown(name)
    same = all(run["history"] == reference["history"] for run in runs)
    ratio = paired_ratio(times[name], times["serial"])
    best = paired_ratio(times["halves"], times["whole"])
    last = runs[-1]
    print(
        f"  {name}: start-up {startup:.2f} s, GA {median(times[name]):.2f} s, serial GA "
        f"{median(times['serial']):.2f} s (medians of {args.rounds}); same as serial: {same}; "
        f"per run {last['processes']} worker processes, {last['rollout_workers_built']} "
        f"rollout workers built, {last['table_copies_loaded']} table copies loaded; "
        f"two plain processes: {best:.3f} of one"
    )
    if best > BUSY:
        print(
            f"  note: two plain processes managed only {best:.2f} of one: the machine had no "
            f"second core to give, so the {name} ratio says nothing about its overhead now"
        )
    checks.at_most(f"{name} GA / serial", ratio, args.target)
    checks.at_least(f"{name} reproduces serial (1 = yes)", float(same), 1.0)
    once = last["rollout_workers_built"] == last["table_copies_loaded"] == last["processes"]
    checks.at_least(f"{name} builds and loads once per worker (1 = yes)", float(once), 1.0)


if __name__ == "__main__":
    sys.exit(main())
