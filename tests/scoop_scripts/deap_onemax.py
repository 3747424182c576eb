"""DEAP's OneMax GA with SCOOP's map registered in the toolbox, as in DEAP's SCOOP examples."""

import random

from deap import algorithms, base, creator, tools
from scoop import futures

creator.create("FitnessMax", base.Fitness, weights=(1.0,))
creator.create("Individual", list, fitness=creator.FitnessMax)

toolbox = base.Toolbox()
toolbox.register("attr_bool", random.randint, 0, 1)
toolbox.register("individual", tools.initRepeat, creator.Individual, toolbox.attr_bool, 60)
toolbox.register("population", tools.initRepeat, list, toolbox.individual)


def eval_onemax(individual):
    return (sum(individual),)


toolbox.register("evaluate", eval_onemax)
toolbox.register("mate", tools.cxTwoPoint)
toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
toolbox.register("select", tools.selTournament, tournsize=3)
toolbox.register("map", futures.map)


if __name__ == "__main__":
    random.seed(64)
    population = toolbox.population(n=80)
    hall = tools.HallOfFame(1)
    stats = tools.Statistics(lambda ind: ind.fitness.values[0])
    stats.register("max", max)
    population, log = algorithms.eaSimple(
        population,
        toolbox,
        cxpb=0.5,
        mutpb=0.2,
        ngen=12,
        stats=stats,
        halloffame=hall,
        verbose=False,
    )
    print("max per generation", log.select("max"))
    print("best", sum(hall[0]), type(hall[0]).__name__, hall[0].fitness.values)
