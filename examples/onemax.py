"""OneMax with DEAP, evaluated in parallel by parmap.

    PARMAP_BACKEND=loky python examples/onemax.py
    python examples/onemax.py --compare          # every installed backend vs serial

    # which backend for this GA's evaluation, 300 individuals x 40 generations?
    parmap bench --fn examples/onemax.py:fitness \
                 --items-from examples/onemax.py:population --items 300 --calls 40

The only parallel line is ``toolbox.register("map", parmap.parmap)``. The
evaluation is wrapped by ``tools.DeltaPenalty`` (which plain multiprocessing
cannot pickle) and made deliberately heavier (``--cost-ms``), and the classes
come from ``creator.create``: workers that were not forked from this process
still rebuild them (see docs/deap.md).
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

import numpy
from deap import algorithms, base, creator, tools

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ga import arguments, burn, compare, loops_per_ms, write_json

import parmap

N_BITS = 100
COST_MS = 3.0  # the default extra work per evaluation (--cost-ms)

creator.create("FitnessMax", base.Fitness, weights=(1.0,))
creator.create("Individual", list, fitness=creator.FitnessMax)


def evaluate(individual: list[int], loops: int) -> tuple[float]:
    """The number of ones, after ``loops`` iterations of busy work."""
    burn(loops)
    return (float(sum(individual)),)


def feasible(individual: list[int]) -> bool:
    """A constraint: the first and last bits may not both be set."""
    return not (individual[0] and individual[-1])


def distance(individual: list[int]) -> float:
    """How far an infeasible individual is from the feasible region."""
    return float(individual[0] + individual[-1])


def build_toolbox(cost_ms: float) -> base.Toolbox:
    toolbox = base.Toolbox()
    toolbox.register("attr_bool", random.randint, 0, 1)
    toolbox.register("individual", tools.initRepeat, creator.Individual, toolbox.attr_bool, N_BITS)
    toolbox.register("population", tools.initRepeat, list, toolbox.individual)
    toolbox.register("evaluate", evaluate, loops=round(cost_ms * LOOPS_PER_MS))
    toolbox.decorate("evaluate", tools.DeltaPenalty(feasible, 0.0, distance))
    toolbox.register("mate", tools.cxTwoPoint)
    toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
    toolbox.register("select", tools.selTournament, tournsize=3)
    toolbox.register("map", parmap.parmap)  # <- the one line that makes it parallel
    return toolbox


def population(n: int) -> list[Any]:
    """``n`` random individuals (seeded): the sample items of ``parmap bench --fn``."""
    random.seed(64)
    return build_toolbox(COST_MS).population(n=n)


def run(seed: int, pop_size: int, ngen: int, cost_ms: float, verbose: bool) -> dict[str, Any]:
    """Evolve; return the logbook and hall of fame as plain data."""
    random.seed(seed)
    toolbox = build_toolbox(cost_ms)
    population = toolbox.population(n=pop_size)
    hof = tools.HallOfFame(5)
    stats = tools.Statistics(lambda ind: ind.fitness.values)
    stats.register("avg", numpy.mean)
    stats.register("std", numpy.std)
    stats.register("min", numpy.min)
    stats.register("max", numpy.max)
    _, logbook = algorithms.eaSimple(
        population, toolbox, cxpb=0.5, mutpb=0.2, ngen=ngen, stats=stats, halloffame=hof,
        verbose=verbose,
    )  # fmt: skip
    return {
        "logbook": [{k: float(v) for k, v in row.items()} for row in logbook],
        "hof": [[list(ind), list(ind.fitness.values)] for ind in hof],
    }


LOOPS_PER_MS = loops_per_ms()
fitness = build_toolbox(COST_MS).evaluate  # the GA's evaluation, as `parmap bench --fn` sees it

if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0], pop=300, ngen=10, cost_ms=COST_MS)
    if args.compare:
        compare(
            lambda: run(args.seed, args.pop, args.ngen, args.cost_ms, verbose=False),
            lambda: parmap.parmap(feasible, [[0] * N_BITS] * 8),
        )
    else:
        print(f"backend: {parmap.get_backend()}")
        result = run(args.seed, args.pop, args.ngen, args.cost_ms, verbose=not args.quiet)
        best, fitness = result["hof"][0]
        print(f"best individual has {int(fitness[0])} ones out of {N_BITS}")
        write_json(args.json, result)
