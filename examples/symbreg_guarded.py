"""Symbolic regression where some evaluations hang or raise: each costs only its individual.

    python examples/symbreg_guarded.py                     # the default backend
    PARMAP_BACKEND=loky python examples/symbreg_guarded.py
    python examples/symbreg_guarded.py --compare           # every backend that can stop an item

A real GP fitness sometimes never returns (a tree that drives a simulator into a
loop) or raises on a corner case. Here ``evaluate`` stands in for such a
simulator: for about one tree in sixty it loops forever, and for about one in
fifty it raises ``OverflowError``, decided by the tree itself, so every backend
sees the same trees fail. The map gives those trees a penalty fitness::

    fitnesses = parmap.parmap(evaluate, population, item_timeout=1.0, return_exceptions=True)

``item_timeout`` stops an evaluation that runs longer than a second (its worker
process is replaced, the other individuals of its batch run elsewhere) and
``return_exceptions`` puts each failure, ``ItemTimeoutError`` or the raised
exception, in its individual's place. The hall of fame is the same on every
backend that can stop an item; ``serial`` runs the function in this process,
where a stuck call cannot be stopped, and says so.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import random
import sys
import time
import zlib
from typing import Any

import numpy
from deap import algorithms, base, creator, gp, tools

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ga import arguments, write_json

import parmap

ITEM_TIMEOUT = 1.0  # seconds one evaluation may take (they take about 1 ms)
PENALTY = (1e9,)  # the fitness of a tree whose evaluation hung or raised


def protected_div(left: float, right: float) -> float:
    try:
        return left / right
    except ZeroDivisionError:
        return 1.0


pset = gp.PrimitiveSet("MAIN", 1)
pset.addPrimitive(operator.add, 2)
pset.addPrimitive(operator.sub, 2)
pset.addPrimitive(operator.mul, 2)
pset.addPrimitive(protected_div, 2)
pset.addPrimitive(operator.neg, 1)
pset.addPrimitive(math.cos, 1)
pset.addPrimitive(math.sin, 1)
pset.addEphemeralConstant("rand101", functools.partial(random.randint, -1, 1))
pset.renameArguments(ARG0="x")

creator.create("FitnessMin", base.Fitness, weights=(-1.0,))
creator.create("Tree", gp.PrimitiveTree, fitness=creator.FitnessMin)


def evaluate(individual: gp.PrimitiveTree, points: parmap.Shared[list[float]]) -> tuple[float]:
    """Mean squared error against x**4 + x**3 + x**2 + x, from a simulator that sometimes
    loops forever or raises (which trees do is decided by the tree, the same everywhere)."""
    fate = zlib.crc32(str(individual).encode()) % 3000
    if fate < 50:  # about one tree in sixty: the simulator never returns
        while True:
            pass
    if fate < 110:  # about one in fifty: it raises on a corner case
        raise OverflowError(f"the simulator diverged on {individual}")
    func = gp.compile(individual, pset)
    xs = points.value
    error = math.fsum((func(x) - (x**4 + x**3 + x**2 + x)) ** 2 for x in xs)
    return (error / len(xs),)


def guarded_map(fn: Any, individuals: list[Any]) -> list[tuple[float]]:
    """DEAP's map: a stuck or failing evaluation costs its individual a penalty."""
    fitnesses = parmap.parmap(fn, individuals, item_timeout=ITEM_TIMEOUT, return_exceptions=True)
    failed = [f for f in fitnesses if isinstance(f, Exception)]
    if failed:
        kinds = sorted({type(f).__name__ for f in failed})
        print(f"  {len(failed)} of {len(fitnesses)} evaluations failed ({', '.join(kinds)})")
    return [PENALTY if isinstance(f, Exception) else f for f in fitnesses]


def build_toolbox(points: parmap.Shared[list[float]]) -> base.Toolbox:
    toolbox = base.Toolbox()
    toolbox.register("expr", gp.genHalfAndHalf, pset=pset, min_=1, max_=2)
    toolbox.register("individual", tools.initIterate, creator.Tree, toolbox.expr)
    toolbox.register("population", tools.initRepeat, list, toolbox.individual)
    toolbox.register("evaluate", evaluate, points=points)
    toolbox.register("select", tools.selTournament, tournsize=3)
    toolbox.register("mate", gp.cxOnePoint)
    toolbox.register("expr_mut", gp.genFull, min_=0, max_=2)
    toolbox.register("mutate", gp.mutUniform, expr=toolbox.expr_mut, pset=pset)
    limit = gp.staticLimit(key=operator.attrgetter("height"), max_value=17)
    toolbox.decorate("mate", limit)
    toolbox.decorate("mutate", limit)
    toolbox.register("map", guarded_map)
    return toolbox


def run(seed: int, pop_size: int, ngen: int, verbose: bool) -> dict[str, Any]:
    random.seed(seed)
    points = parmap.share([x / 100 - 1.0 for x in range(200)])
    toolbox = build_toolbox(points)
    population = toolbox.population(n=pop_size)
    hof = tools.HallOfFame(3)
    stats = tools.Statistics(lambda ind: ind.fitness.values)
    stats.register("min", numpy.min)
    _, logbook = algorithms.eaSimple(
        population, toolbox, 0.5, 0.1, ngen, stats=stats, halloffame=hof, verbose=verbose
    )
    return {
        "logbook": [{k: float(v) for k, v in row.items()} for row in logbook],
        "hof": [[str(ind), list(ind.fitness.values)] for ind in hof],
    }


def compare(seed: int, pop_size: int, ngen: int) -> None:
    """The same run on every installed backend that can stop an item: same hall of fame."""
    rows, reference = [], None
    for name in parmap.available_backends():
        with parmap.config(backend=name):
            try:
                parmap.parmap(abs, range(8), item_timeout=ITEM_TIMEOUT)  # start the workers
            except ValueError as refused:  # this backend cannot stop a running item
                print(f"{name}: {refused}")
                continue
            started = time.perf_counter()
            result = run(seed, pop_size, ngen, verbose=False)
            seconds = time.perf_counter() - started
        parmap.shutdown(name)
        reference = reference or result
        rows.append((name, seconds, result["hof"] == reference["hof"]))
    print(f"\n{'backend':<16}{'GA wall s':>11}  same hall of fame")
    for name, seconds, same in rows:
        print(f"{name:<16}{seconds:>11.2f}  {'yes' if same else 'NO'}")
    if not all(same for _, _, same in rows):
        raise SystemExit("a backend did not reproduce the hall of fame")


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0], pop=300, ngen=10, cost_ms=0.0)
    if args.compare:
        compare(args.seed, args.pop, args.ngen)
    else:
        print(f"backend: {parmap.get_backend()}")
        result = run(args.seed, args.pop, args.ngen, verbose=not args.quiet)
        print(f"best: {result['hof'][0][0]}  (mse {result['hof'][0][1][0]:.4g})")
        write_json(args.json, result)
