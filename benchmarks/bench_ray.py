"""The Ray backend against what a Ray user would otherwise write, in one run.

Everything runs warm on one embedded Ray instance (all CPUs): start-up and the
first call of each function (which learns its per-item cost) are excluded.

    (a) trivial fn, 100,000 items   parmap vs ray.util.multiprocessing.Pool.map  (>= 10x faster)
                                    parmap vs naive one task per item (10k, x10) (>= 1000x)
    (b) ~100 µs x 5,000 items       parmap / serial                              (<= 0.6)
    (c) ~10 ms x 200 items          parmap / serial                              (<= 0.53)
    (d) 300 trivial items per call  median of 30 calls                           (<= 6 ms)
                                    beside Pool.map and a new-actors-per-call map
    (e) DEAP OneMax, 300 x ~3 ms,   parmap vs new actors per call, end to end    (>= 1.5x faster)
        DeltaPenalty, 5 generations

The new-actors-per-call map is the approach of deap_ray's ``ray_map.py``,
rewritten here: every call starts one actor per CPU (which rebuilds DEAP's
creator classes), hands each one static batch, gathers, and drops the actors.

    python benchmarks/bench_ray.py [--quick] [--only abcde]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import _common  # noqa: E402
import _ga  # noqa: E402
import cloudpickle  # noqa: E402
import onemax  # noqa: E402
import ray  # noqa: E402
from _common import (  # noqa: E402
    Ceiling,
    Checks,
    cpu_count,
    fmt_seconds,
    header,
    interleaved,
    median,
    paired_ratio,
    spin_loops,
    spinning,
    timings,
)
from deap import algorithms, base, creator, tools  # noqa: E402
from ray.util.multiprocessing import Pool  # noqa: E402

import parmap  # noqa: E402

for module in (_common, _ga, onemax):  # workers may not import these: ship them by value
    cloudpickle.register_pickle_by_value(module)  # (parmap's pickler)
    ray.cloudpickle.register_pickle_by_value(module)  # (Ray's, for the peer maps)


def trivial(x: int) -> int:
    return x


# -- the peers a Ray user would write ------------------------------------------------------


@ray.remote(max_retries=0)
def _one_item(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def naive_map(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """One Ray task per item."""
    fn_ref = ray.put(fn)
    return ray.get([_one_item.remote(fn_ref, item) for item in items])


def make_creator_classes() -> None:
    """What each actor of the static map runs first: DEAP's classes, as in the example."""
    if not hasattr(creator, "Individual"):
        creator.create("FitnessMax", base.Fitness, weights=(1.0,))
        creator.create("Individual", list, fitness=creator.FitnessMax)


@ray.remote(num_cpus=1)
class _BatchActor:
    def __init__(self, setup: Callable[[], None] | None) -> None:
        if setup is not None:
            setup()

    def run(self, fn: Callable[[Any], Any], batch: list[Any]) -> list[Any]:
        return [fn(item) for item in batch]


def new_actors_map(
    fn: Callable[[Any], Any], items: Sequence[Any], setup: Callable[[], None] | None = None
) -> list[Any]:
    """Start one actor per CPU, give each one static batch, gather, drop the actors."""
    items = list(items)
    workers = max(1, min(len(items), int(ray.cluster_resources()["CPU"])))
    size = len(items) // workers + 1
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    actors = [_BatchActor.remote(setup) for _ in batches]
    pending = [actor.run.remote(fn, batch) for actor, batch in zip(actors, batches, strict=True)]
    results = ray.get(pending)
    for actor in actors:
        ray.kill(actor)
    return [result for batch in results for result in batch]


# -- the five comparisons ---------------------------------------------------------------


def parmap_ray(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    return parmap.parmap(fn, items, backend="ray")


def warm(fn: Callable[[Any], Any], items: Sequence[Any]) -> None:
    """Learn fn's cost (the first call of a DEAP run does it once)."""
    for _ in range(2):
        parmap_ray(fn, items)


def trivial_100k(checks: Checks, quick: bool) -> None:
    items = list(range(100_000))
    warm(trivial, items)
    ours = median(timings(lambda: parmap_ray(trivial, items), repeats=5))
    naive_items = items[: 2_000 if quick else 10_000]
    naive = median(timings(lambda: naive_map(trivial, naive_items), repeats=1, warmup=0))
    naive *= len(items) / len(naive_items)
    with Pool() as pool:
        pool.map(trivial, items[:1000])
        pool_s = median(timings(lambda: pool.map(trivial, items), repeats=3))
    serial = median(timings(lambda: list(map(trivial, items)), repeats=5))
    print(
        f"  (a) trivial x 100,000: parmap {fmt_seconds(ours)}, Pool.map {fmt_seconds(pool_s)}, "
        f"naive {fmt_seconds(naive)} (from {len(naive_items):,} items), "
        f"serial {fmt_seconds(serial)}"
    )
    checks.at_least("(a) Pool.map / parmap, trivial x 100k", pool_s / ours, 10)
    checks.at_least("(a) naive tasks / parmap, trivial x 100k", naive / ours, 1000)


def versus_serial(
    checks: Checks,
    ceiling: Ceiling,
    label: str,
    seconds: float,
    n: int,
    target: float,
    repeats: int,
) -> None:
    """parmap against serial on ``n`` items of about ``seconds`` each, timed in turns.

    Beside them, the same items in equal shares on plain forked processes: the
    best any scheduler could do on this machine at that moment.
    """
    fn = spinning(spin_loops(seconds))
    items = list(range(n))
    warm(fn, items[: max(40, n // 10)])
    times = interleaved(
        {
            "serial": lambda: list(map(fn, items)),
            "parmap": lambda: parmap_ray(fn, items),
            "halves": ceiling.split(fn, items),
        },
        repeats=repeats,
        warmup=0,
    )
    ours, serial = median(times["parmap"]), median(times["serial"])
    best = paired_ratio(times["halves"], times["serial"])
    print(
        f"  {label}: parmap {fmt_seconds(ours)}, serial {fmt_seconds(serial)} (medians of "
        f"{repeats}); equal shares on plain processes: {best:.3f} of serial"
    )
    ratio = paired_ratio(times["parmap"], times["serial"])
    checks.at_most(f"{label} parmap / serial", ratio, target)


def per_call(checks: Checks, quick: bool) -> None:
    items = list(range(300))
    warm(trivial, items)
    calls = 10 if quick else 30
    ours = median(timings(lambda: parmap_ray(trivial, items), repeats=calls, warmup=3))
    actors = median(timings(lambda: new_actors_map(trivial, items), repeats=3 if quick else 5))
    with Pool() as pool:
        pool_s = median(timings(lambda: pool.map(trivial, items), repeats=calls, warmup=3))
    print(
        f"  (d) one call of 300 trivial items (median of {calls}): parmap {fmt_seconds(ours)}, "
        f"Pool.map {fmt_seconds(pool_s)}, new actors per call {fmt_seconds(actors)}"
    )
    checks.at_most("(d) parmap per-call overhead, ms", ours * 1e3, 6.0)


def run_ga(map_fn: Callable[..., list[Any]], ngen: int, cost_ms: float) -> tuple[float, Any]:
    """OneMax of examples/onemax.py (DeltaPenalty-decorated), with ``map_fn`` as the map."""
    random.seed(64)
    toolbox = onemax.build_toolbox(cost_ms)
    toolbox.register("map", map_fn)
    population = toolbox.population(n=300)
    hof = tools.HallOfFame(5)
    start = time.perf_counter()
    algorithms.eaSimple(
        population, toolbox, cxpb=0.5, mutpb=0.2, ngen=ngen, halloffame=hof, verbose=False
    )
    seconds = time.perf_counter() - start
    return seconds, [(list(ind), ind.fitness.values) for ind in hof]


def deap_onemax(checks: Checks, quick: bool) -> None:
    ngen, cost_ms = (2, 3.0) if quick else (5, 3.0)
    run_ga(parmap_ray, 1, cost_ms)  # warm: learns the evaluation's cost

    def actors_map(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return new_actors_map(fn, items, make_creator_classes)

    ours, hof = run_ga(parmap_ray, ngen, cost_ms)
    theirs, their_hof = run_ga(actors_map, ngen, cost_ms)
    print(
        f"  (e) DEAP OneMax 300 x ~{cost_ms:g} ms, {ngen} generations: parmap {ours:.2f} s, "
        f"new actors per call {theirs:.2f} s, same hall of fame: {hof == their_hof}"
    )
    checks.at_least("(e) new-actors map / parmap, DEAP OneMax", theirs / ours, 1.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--only", default="abcde", help="the parts to run, e.g. --only bc")
    args = parser.parse_args()
    header(f"Ray backend, ray {ray.__version__}, {cpu_count()} workers")
    ceiling = Ceiling()  # forked before Ray starts
    start = time.perf_counter()
    parmap_ray(trivial, range(10))  # starts the embedded instance
    print(f"  start-up of the embedded Ray instance: {time.perf_counter() - start:.2f} s")
    checks = Checks()
    rounds = (3, 3) if args.quick else (15, 9)
    parts = {
        "a": lambda: trivial_100k(checks, args.quick),
        "b": lambda: versus_serial(
            checks, ceiling, "(b) ~100 µs x 5,000", 100e-6, 5_000, 0.6, rounds[0]
        ),
        "c": lambda: versus_serial(
            checks, ceiling, "(c) ~10 ms x 200", 10e-3, 200, 0.53, rounds[1]
        ),
        "d": lambda: per_call(checks, args.quick),
        "e": lambda: deap_onemax(checks, args.quick),
    }
    for name, part in parts.items():
        if name in args.only:
            part()
    parmap.shutdown()
    ceiling.close()
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
