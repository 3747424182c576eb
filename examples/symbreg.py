"""Symbolic regression with DEAP GP, evaluated in parallel by parmap.

    PARMAP_BACKEND=ray python examples/symbreg.py
    python examples/symbreg.py --compare
    python examples/symbreg.py --faults             # some evaluations hang or raise
    python examples/symbreg.py --faults --compare   # every backend that can stop an item

The data points are sent to each worker once with ``parmap.share()``; the
evaluation reads them through ``points.value``. The primitive set has an
ephemeral constant (``addEphemeralConstant``), a class DEAP makes at run time.

With ``--faults`` the evaluation stands in for a simulator that, as real ones
do, sometimes never returns or raises on a corner case: for about one tree in
sixty it loops forever, for about one in fifty it raises ``OverflowError``,
decided by the tree itself, so every backend sees the same trees fail. The map
gives those trees a penalty fitness, and the generation goes on::

    fitnesses = parmap.parmap(evaluate, population, item_timeout=1.0, return_exceptions=True)

``item_timeout`` stops an evaluation that runs longer than a second (its worker
process is replaced, the rest of its batch runs elsewhere) and
``return_exceptions`` puts each failure, ``ItemTimeoutError`` or the raised
exception, in its tree's place. The hall of fame is the same on every backend
that can stop an item; ``serial``, which runs the evaluation in this process
where a stuck call cannot be stopped, says so.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import random
import sys
import zlib
from typing import Any

import numpy
from deap import algorithms, base, creator, gp, tools

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ga import arguments, compare, write_json

import parmap


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
    """Mean squared error of the tree against x**4 + x**3 + x**2 + x on the shared points."""
    func = gp.compile(individual, pset)
    xs = points.value
    error = math.fsum((func(x) - (x**4 + x**3 + x**2 + x)) ** 2 for x in xs)
    return (error / len(xs),)


ITEM_TIMEOUT = 1.0  # seconds one evaluation may take (they take about a millisecond)
PENALTY = (1e9,)  # the fitness of a tree whose evaluation hung or raised


def evaluate_with_faults(
    individual: gp.PrimitiveTree, points: parmap.Shared[list[float]]
) -> tuple[float]:
    """:func:`evaluate`, from a simulator that sometimes loops forever or raises."""
    fate = zlib.crc32(str(individual).encode()) % 3000
    if fate < 50:  # about one tree in sixty: the simulator never returns
        while True:
            pass
    if fate < 110:  # about one in fifty: it raises on a corner case
        raise OverflowError(f"the simulator diverged on {individual}")
    return evaluate(individual, points)


def guarded_map(fn: Any, individuals: list[Any]) -> list[tuple[float]]:
    """DEAP's map when evaluations may hang or raise: each failure costs only its tree."""
    fitnesses = parmap.parmap(fn, individuals, item_timeout=ITEM_TIMEOUT, return_exceptions=True)
    return [PENALTY if isinstance(f, Exception) else f for f in fitnesses]


def build_toolbox(points: parmap.Shared[list[float]], faults: bool = False) -> base.Toolbox:
    toolbox = base.Toolbox()
    toolbox.register("expr", gp.genHalfAndHalf, pset=pset, min_=1, max_=2)
    toolbox.register("individual", tools.initIterate, creator.Tree, toolbox.expr)
    toolbox.register("population", tools.initRepeat, list, toolbox.individual)
    toolbox.register("evaluate", evaluate_with_faults if faults else evaluate, points=points)
    toolbox.register("select", tools.selTournament, tournsize=3)
    toolbox.register("mate", gp.cxOnePoint)
    toolbox.register("expr_mut", gp.genFull, min_=0, max_=2)
    toolbox.register("mutate", gp.mutUniform, expr=toolbox.expr_mut, pset=pset)
    limit = gp.staticLimit(key=operator.attrgetter("height"), max_value=17)
    toolbox.decorate("mate", limit)
    toolbox.decorate("mutate", limit)
    toolbox.register("map", guarded_map if faults else parmap.parmap)
    return toolbox


def run(
    seed: int, pop_size: int, ngen: int, n_points: int, verbose: bool, faults: bool = False
) -> dict[str, Any]:
    random.seed(seed)
    points = parmap.share([x / (n_points / 2) - 1.0 for x in range(n_points)])
    toolbox = build_toolbox(points, faults)
    population = toolbox.population(n=pop_size)
    hof = tools.HallOfFame(3)
    stats = tools.Statistics(lambda ind: ind.fitness.values)
    stats.register("avg", numpy.mean)
    stats.register("min", numpy.min)
    stats.register("max", numpy.max)
    _, logbook = algorithms.eaSimple(
        population, toolbox, 0.5, 0.1, ngen, stats=stats, halloffame=hof, verbose=verbose
    )
    return {
        "logbook": [{k: float(v) for k, v in row.items()} for row in logbook],
        "hof": [[str(ind), list(ind.fitness.values)] for ind in hof],
    }


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0], pop=300, ngen=10, cost_ms=0.0, faults=False)
    n_points = 200 if args.faults else 2_000
    guard = {"item_timeout": ITEM_TIMEOUT} if args.faults else {}

    if args.compare:
        compare(
            lambda: run(args.seed, args.pop, args.ngen, n_points, False, args.faults),
            lambda: parmap.parmap(abs, range(8), **guard),
        )
    else:
        print(f"backend: {parmap.get_backend()}")
        result = run(args.seed, args.pop, args.ngen, n_points, not args.quiet, args.faults)
        print(f"best: {result['hof'][0][0]}  (mse {result['hof'][0][1][0]:.4g})")
        write_json(args.json, result)
