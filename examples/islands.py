"""An island model: each map item evolves one whole island with DEAP's eaSimple.

    PARMAP_BACKEND=dask python examples/islands.py
    python examples/islands.py --compare

Each epoch maps ``evolve_island`` over the islands (heavy, nested work: the
island's own ``toolbox.map`` is parmap too, and runs in place on the worker),
then the best individuals migrate around the ring. Each island seeds its RNG
from the run seed, the epoch and its index, so the result does not depend on
which worker ran it. Individuals come back from the workers, and keep their
``creator`` class in this process.
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

N_BITS = 60
N_ISLANDS = 4
EPOCHS = 3

creator.create("IslandFitness", base.Fitness, weights=(1.0,))
creator.create("IslandIndividual", list, fitness=creator.IslandFitness)


def evaluate(individual: list[int], loops: int) -> tuple[float]:
    """A deceptive trap: blocks of four bits score 4 when all set, else 3 minus the ones."""
    burn(loops)
    score = 0
    for i in range(0, len(individual), 4):
        ones = sum(individual[i : i + 4])
        score += 4 if ones == 4 else 3 - ones
    return (float(score),)


def island_toolbox(loops: int) -> base.Toolbox:
    toolbox = base.Toolbox()
    toolbox.register("attr_bool", random.randint, 0, 1)
    toolbox.register(
        "individual", tools.initRepeat, creator.IslandIndividual, toolbox.attr_bool, N_BITS
    )
    toolbox.register("population", tools.initRepeat, list, toolbox.individual)
    toolbox.register("evaluate", evaluate, loops=loops)
    toolbox.register("mate", tools.cxTwoPoint)
    toolbox.register("mutate", tools.mutFlipBit, indpb=0.03)
    toolbox.register("select", tools.selTournament, tournsize=3)
    toolbox.register("map", parmap.parmap)  # nested on a worker: runs in place
    return toolbox


Task = tuple[int, int, int, list[Any], int, int, int]


def evolve_island(task: Task) -> tuple[list[Any], list[dict[str, float]]]:
    """Evolve one island for ``ngen`` generations; return its population and logbook rows."""
    index, epoch, seed, population, size, ngen, loops = task
    random.seed(seed * 1_000_003 + epoch * 1_009 + index)
    toolbox = island_toolbox(loops)
    if not population:
        population = toolbox.population(n=size)
    stats = tools.Statistics(lambda ind: ind.fitness.values)
    stats.register("max", numpy.max)
    stats.register("avg", numpy.mean)
    population, logbook = algorithms.eaSimple(
        population, toolbox, cxpb=0.6, mutpb=0.3, ngen=ngen, stats=stats, verbose=False
    )
    rows = [{"island": index, "epoch": epoch, **{k: float(v) for k, v in row.items()}}
            for row in logbook]  # fmt: skip
    return population, rows


def run(seed: int, pop_size: int, ngen: int, cost_ms: float, verbose: bool) -> dict[str, Any]:
    size = max(4, pop_size // N_ISLANDS)
    loops = round(cost_ms * loops_per_ms()) if cost_ms else 0
    islands: list[list[Any]] = [[] for _ in range(N_ISLANDS)]
    history: list[dict[str, float]] = []
    hof = tools.HallOfFame(5)
    for epoch in range(EPOCHS):
        tasks = [(i, epoch, seed, islands[i], size, ngen, loops) for i in range(N_ISLANDS)]
        results = parmap.parmap(evolve_island, tasks)
        islands = [population for population, _ in results]
        for _, rows in results:
            history.extend(rows)
        for population in islands:
            assert all(isinstance(ind, creator.IslandIndividual) for ind in population)
            hof.update(population)
        migrants = [tools.selBest(population, 2) for population in islands]
        for i, population in enumerate(islands):  # ring migration: best of i-1 replace worst of i
            incoming = [creator.IslandIndividual(ind) for ind in migrants[i - 1]]
            for ind, source in zip(incoming, migrants[i - 1], strict=True):
                ind.fitness.values = source.fitness.values
            worst = sorted(range(len(population)), key=lambda j: population[j].fitness.values)
            for j, ind in zip(worst[: len(incoming)], incoming, strict=True):
                population[j] = ind
        if verbose:
            best = max(ind.fitness.values[0] for pop in islands for ind in pop)
            print(f"epoch {epoch}: best {best}")
    return {"logbook": history, "hof": [[list(i), list(i.fitness.values)] for i in hof]}


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0], pop=200, ngen=10, cost_ms=0.2)
    if args.compare:
        compare(
            lambda: run(args.seed, args.pop, args.ngen, args.cost_ms, verbose=False),
            lambda: parmap.parmap(abs, range(8)),
        )
    else:
        print(f"backend: {parmap.get_backend()}")
        result = run(args.seed, args.pop, args.ngen, args.cost_ms, verbose=not args.quiet)
        print(f"best: {result['hof'][0][1][0]} of {N_BITS}")
        write_json(args.json, result)
