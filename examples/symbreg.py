"""Symbolic regression with DEAP GP, evaluated in parallel by parmap.

    PARMAP_BACKEND=ray python examples/symbreg.py
    python examples/symbreg.py --compare

The data points are sent to each worker once with ``parmap.share()``; the
evaluation reads them through ``points.value``. The primitive set has an
ephemeral constant (``addEphemeralConstant``), a class DEAP makes at run time.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import random
import sys
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
    toolbox.register("map", parmap.parmap)
    return toolbox


def run(seed: int, pop_size: int, ngen: int, n_points: int, verbose: bool) -> dict[str, Any]:
    random.seed(seed)
    points = parmap.share([x / (n_points / 2) - 1.0 for x in range(n_points)])
    toolbox = build_toolbox(points)
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
    args = arguments(__doc__.splitlines()[0], pop=300, ngen=10, cost_ms=0.0)
    n_points = 2_000

    if args.compare:
        compare(
            lambda: run(args.seed, args.pop, args.ngen, n_points, verbose=False),
            lambda: parmap.parmap(abs, range(8)),
        )
    else:
        print(f"backend: {parmap.get_backend()}")
        result = run(args.seed, args.pop, args.ngen, n_points, verbose=not args.quiet)
        print(f"best: {result['hof'][0][0]}  (mse {result['hof'][0][1][0]:.4g})")
        write_json(args.json, result)
