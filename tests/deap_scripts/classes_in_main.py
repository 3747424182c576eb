"""DEAP's onemax_mp.py style: every class is created inside main(), after the
workers may already exist, and the evaluation is DeltaPenalty-decorated."""

import json
import random
import sys

from deap import algorithms, base, creator, tools

import parmap


def evaluate(individual):
    return (sum(individual),)


def feasible(individual):
    return individual[0] == 0


def main(seed, out):
    random.seed(seed)
    creator.create("FitnessMaxInMain", base.Fitness, weights=(1.0,))
    creator.create("IndividualInMain", list, fitness=creator.FitnessMaxInMain)
    toolbox = base.Toolbox()
    toolbox.register("attr_bool", random.randint, 0, 1)
    toolbox.register(
        "individual", tools.initRepeat, creator.IndividualInMain, toolbox.attr_bool, 50
    )
    toolbox.register("population", tools.initRepeat, list, toolbox.individual)
    toolbox.register("evaluate", evaluate)
    toolbox.decorate("evaluate", tools.DeltaPenalty(feasible, -1.0))
    toolbox.register("mate", tools.cxTwoPoint)
    toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
    toolbox.register("select", tools.selTournament, tournsize=3)
    toolbox.register("map", parmap.parmap)
    # Individuals themselves travel too: a map whose items and results are individuals.
    clones = toolbox.map(toolbox.clone, toolbox.population(n=5))
    assert all(type(ind) is creator.IndividualInMain for ind in clones)
    population = toolbox.population(n=60)
    hof = tools.HallOfFame(3)
    stats = tools.Statistics(lambda ind: ind.fitness.values[0])
    stats.register("max", max)
    _, logbook = algorithms.eaSimple(
        population, toolbox, 0.5, 0.2, 4, stats=stats, halloffame=hof, verbose=False
    )
    with open(out, "w") as file:
        json.dump({"logbook": list(logbook), "hof": [list(ind) for ind in hof]}, file)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
