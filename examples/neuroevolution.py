"""Deep neuroevolution: a genetic algorithm trains a neural-network policy for CartPole.

    python examples/neuroevolution.py --backend loky --plot curve.png
    python examples/neuroevolution.py --backend ray --address 10.0.0.5:6379
    python examples/neuroevolution.py --backend dask --address tcp://10.0.0.5:8786

The GA of Such et al. 2017 ("Deep Neuroevolution: Genetic Algorithms Are a
Competitive Alternative for Training Deep Neural Networks for Reinforcement
Learning"): truncation selection (the best ``T`` individuals are the parents),
elitism (the best individual goes on unchanged) and Gaussian mutation; the
policy is a numpy MLP (4 -> 64 -> 64 -> 2, tanh), its fitness the mean return
of a few CartPole episodes. What each piece of data costs on the wire:

- **A genome is the list of random seeds that built it.** Parameters ``theta``
  are ``init(seed_0) + sigma * noise(seed_1) + ... + sigma * noise(seed_n)``:
  an individual crosses to a worker as a few integers (a few hundred bytes)
  instead of its 4,610 float32 parameters, and the worker rebuilds ``theta``.
- **The rollout worker is per-worker state** (``parmap.per_worker``): the
  environment, the network's buffers and a cache of parameter vectors (a
  child is its parent's vector plus one mutation), built once in each worker
  process and reused by every evaluation and generation that process runs.
- **The observation-normalisation table goes through ``parmap.share()``**: a
  1 MB table of observation quantiles, measured in this process from random
  rollouts, sent to each worker once, not with each item or generation. The
  run counts it: how often it was pickled here and unpickled on workers.

CartPole is the classic cart-pole of Barto, Sutton and Anderson with the
constants, Euler integration, termination and 500-step limit of gymnasium's
``CartPole-v1``, written in numpy below; ``--env gymnasium`` uses gymnasium's
own environment instead (if installed) and gives the same returns. With a fixed
``--seed`` the run is identical on every backend: the per-generation figures
and the best genome depend on the seed only.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pickle
import random
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import parmap

Genome = tuple[int, ...]
Task = tuple[Genome, int, int, int]  # genome, run seed, generation, episodes

HIDDEN = (64, 64)
OBS_DIM, N_ACTIONS = 4, 2
SEED_RANGE = 2**31


# -- the environment ---------------------------------------------------------------------


class CartPole:
    """Classic cart-pole in numpy: gymnasium's ``CartPole-v1`` step for step.

    The state is four float64 numbers (cart position and velocity, pole angle
    and angular velocity); an action pushes the cart left (0) or right (1);
    every step earns 1, the episode ends when the pole leans past 12 degrees
    or the cart leaves +-2.4, and is cut at 500 steps.
    """

    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass = masspole + masscart
    polemass_length = masspole * length
    theta_threshold = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    max_steps = 500

    def __init__(self) -> None:
        self.state = (0.0, 0.0, 0.0, 0.0)
        self.steps = 0

    def reset(self, seed: int) -> np.ndarray:
        """Start an episode from a random state near upright; return the observation."""
        start = np.random.default_rng(seed).uniform(low=-0.05, high=0.05, size=(4,))
        self.state = tuple(float(v) for v in start)  # type: ignore[assignment]
        self.steps = 0
        return np.array(self.state, dtype=np.float32)

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        """Advance 20 ms; return the observation, the reward and whether the episode ended."""
        x, x_dot, theta, theta_dot = self.state
        force = self.force_mag if action == 1 else -self.force_mag
        costheta, sintheta = float(np.cos(theta)), float(np.sin(theta))
        temp = (force + self.polemass_length * (theta_dot * theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * (costheta * costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x, x_dot = x + self.tau * x_dot, x_dot + self.tau * xacc
        theta, theta_dot = theta + self.tau * theta_dot, theta_dot + self.tau * thetaacc
        self.state = (x, x_dot, theta, theta_dot)
        self.steps += 1
        fallen = not (-self.x_threshold <= x <= self.x_threshold) or not (
            -self.theta_threshold <= theta <= self.theta_threshold
        )
        return np.array(self.state, dtype=np.float32), 1.0, fallen or self.steps >= self.max_steps


class GymnasiumCartPole:
    """gymnasium's ``CartPole-v1`` behind the same two methods."""

    def __init__(self) -> None:
        import gymnasium

        self.env = gymnasium.make("CartPole-v1")

    def reset(self, seed: int) -> np.ndarray:
        observation, _ = self.env.reset(seed=seed)
        return observation  # type: ignore[no-any-return]

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        observation, reward, terminated, truncated, _ = self.env.step(action)
        return observation, float(reward), terminated or truncated


def make_env(name: str) -> CartPole | GymnasiumCartPole:
    return GymnasiumCartPole() if name == "gymnasium" else CartPole()


# -- the observation-normalisation table (shared) ----------------------------------------


class NormalisationTable:
    """Quantiles of each observation dimension, measured from reference rollouts.

    ``normalise`` maps each dimension through its empirical CDF onto [-1, 1],
    with one ``np.interp`` for all four: dimension ``d`` is shifted by
    ``d * SPAN``, farther apart than any CartPole observation reaches (the
    episode ends at +-2.4 m and +-12 degrees; speeds stay far below 1e5).
    Pickling and unpickling are counted: ``pickled`` in this process, and
    ``load_id`` set afresh on every unpickle (a worker's copy).
    """

    pickled = 0  # times this process pickled a table
    SPAN = 1e6

    def __init__(self, observations: np.ndarray, size: int) -> None:
        quantiles = np.linspace(0.0, 1.0, size)
        ranks = quantiles * (len(observations) - 1)  # linear-interpolation quantiles
        edges = np.array(
            [np.interp(ranks, np.arange(len(col)), np.sort(col)) for col in observations.T]
        )  # (OBS_DIM, size)
        self.offsets = self.SPAN * np.arange(OBS_DIM)
        self.edges = (edges + self.offsets[:, None]).ravel()
        self.levels = np.tile(2.0 * quantiles - 1.0, OBS_DIM)
        self.load_id = 0  # 0: the original, in the process that measured it

    def normalise(self, observation: np.ndarray) -> np.ndarray:
        """Each dimension's quantile, scaled to [-1, 1] (float32, the policy's input)."""
        return np.interp(observation + self.offsets, self.edges, self.levels).astype(np.float32)

    def __getstate__(self) -> dict[str, Any]:
        type(self).pickled += 1
        return {k: v for k, v in self.__dict__.items() if k != "load_id"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.load_id = random.SystemRandom().randrange(1, 2**62)


def reference_table(seed: int, observations: int, size: int) -> NormalisationTable:
    """Observations of random-action episodes, summarised as quantiles."""
    env, rng = CartPole(), np.random.default_rng([seed, 7])
    seen: list[np.ndarray] = []
    while len(seen) < observations:
        seen.append(env.reset(int(rng.integers(SEED_RANGE))))
        done = False
        while not done and len(seen) < observations:
            observation, _, done = env.step(int(rng.integers(N_ACTIONS)))
            seen.append(observation)
    return NormalisationTable(np.array(seen, dtype=np.float64), size)


# -- the policy and its genome -----------------------------------------------------------


def layer_shapes(hidden: Sequence[int]) -> list[tuple[int, int]]:
    sizes = [OBS_DIM, *hidden, N_ACTIONS]
    return list(zip(sizes[1:], sizes[:-1], strict=True))  # (out, in) per layer


def parameter_count(hidden: Sequence[int]) -> int:
    return sum(out * (inp + 1) for out, inp in layer_shapes(hidden))


def initial_parameters(seed: int, hidden: Sequence[int]) -> np.ndarray:
    """``init(seed)``: weights ~ N(0, 1/fan_in), biases 0, as one float32 vector."""
    rng = np.random.default_rng(seed)
    parts = []
    for out, inp in layer_shapes(hidden):
        weights = rng.standard_normal((out, inp), dtype=np.float32) / np.float32(math.sqrt(inp))
        parts += [weights.ravel(), np.zeros(out, dtype=np.float32)]
    return np.concatenate(parts)


def mutation(seed: int, count: int, sigma: float) -> np.ndarray:
    """``sigma * noise(seed)``: the Gaussian perturbation one seed stands for."""
    return np.random.default_rng(seed).standard_normal(count, dtype=np.float32) * np.float32(sigma)


class Policy:
    """An MLP over a flat parameter vector: views into it, no copies."""

    def __init__(self, hidden: Sequence[int]) -> None:
        self.shapes = layer_shapes(hidden)

    def layers(self, theta: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        layers, start = [], 0
        for out, inp in self.shapes:
            weights = theta[start : start + out * inp].reshape(out, inp)
            start += out * inp
            layers.append((weights, theta[start : start + out]))
            start += out
        return layers

    @staticmethod
    def act(layers: list[tuple[np.ndarray, np.ndarray]], observation: np.ndarray) -> int:
        h = observation
        for weights, bias in layers[:-1]:
            h = np.tanh(weights @ h + bias)
        weights, bias = layers[-1]
        return int(np.argmax(weights @ h + bias))


# -- the rollout worker (per-worker state) -----------------------------------------------


class RolloutWorker:
    """What each worker process builds once: environment, policy, parameter cache.

    The cache keeps the parameter vectors of recent genomes: a child shares
    all but its last seed with its parent, so rebuilding it usually costs one
    mutation, not one per generation. Adding the same float32 vectors in the
    same order gives the same bits, so the cache never changes a result.
    """

    CACHE = 256

    def __init__(self, env: str, hidden: Sequence[int], sigma: float, table: Any) -> None:
        self.env = make_env(env)
        self.policy = Policy(hidden)
        self.hidden, self.sigma = tuple(hidden), sigma
        self.count = parameter_count(hidden)
        self.table: NormalisationTable = table.value  # parmap.share(): loaded once here
        self.cache: OrderedDict[Genome, np.ndarray] = OrderedDict()
        self.build_id = random.SystemRandom().randrange(1, 2**62)

    def parameters(self, genome: Genome) -> np.ndarray:
        """``theta`` for ``genome``, from its longest cached prefix."""
        known = len(genome)
        while known > 0 and genome[:known] not in self.cache:
            known -= 1
        if known == 0:
            theta, known = initial_parameters(genome[0], self.hidden), 1
        else:
            theta = self.cache[genome[:known]]
            self.cache.move_to_end(genome[:known])
        for k in range(known, len(genome)):
            theta = theta + mutation(genome[k], self.count, self.sigma)
        self.cache[genome] = theta
        while len(self.cache) > self.CACHE:
            self.cache.popitem(last=False)
        return theta

    def episode(self, layers: list[tuple[np.ndarray, np.ndarray]], seed: int) -> tuple[float, int]:
        observation, total, steps, done = self.env.reset(seed), 0.0, 0, False
        while not done:
            action = Policy.act(layers, self.table.normalise(observation))
            observation, reward, done = self.env.step(action)
            total, steps = total + reward, steps + 1
        return total, steps

    def evaluate(self, genome: Genome, episode_seeds: Sequence[int]) -> tuple[float, int]:
        layers = self.policy.layers(self.parameters(genome))
        returns, steps = zip(*(self.episode(layers, int(s)) for s in episode_seeds), strict=True)
        return float(np.mean(returns)), int(sum(steps))


# fitness, steps, and where it was computed (for the census): the worker's pid, which
# RolloutWorker object evaluated it, which copy of the table it read (0: the caller's own).
# A plain tuple: a class of this script would travel by value with every batch of results.
Evaluation = tuple[float, int, int, int, int]


def episode_seeds(run_seed: int, generation: int, episodes: int) -> list[int]:
    """The episodes every genome of a generation plays (the same for all: a fair contest)."""
    return [int(s) for s in np.random.SeedSequence([run_seed, generation]).generate_state(episodes)]


def evaluate(rollout: parmap.PerWorker[RolloutWorker], task: Task) -> Evaluation:
    """The mapped function: rebuild the genome's policy here and play its episodes."""
    genome, run_seed, generation, episodes = task
    worker = rollout.value  # built on this worker's first evaluation, then reused
    fitness, steps = worker.evaluate(genome, episode_seeds(run_seed, generation, episodes))
    return fitness, steps, os.getpid(), worker.build_id, worker.table.load_id


# -- the genetic algorithm ---------------------------------------------------------------


@dataclass
class Settings:
    seed: int = 0
    population: int = 100
    generations: int = 15
    truncation: int = 20
    sigma: float = 0.05
    episodes: int = 2
    env: str = "numpy"
    table_size: int = 16_384
    reference: int = 50_000
    hidden: tuple[int, ...] = HIDDEN


def next_generation(
    population: list[Genome], fitness: np.ndarray, settings: Settings, rng: np.random.Generator
) -> list[Genome]:
    """Elitism + truncation selection + mutation (one new seed appended per child)."""
    order = np.argsort(-fitness, kind="stable")
    parents = [population[i] for i in order[: settings.truncation]]
    children = [
        parents[int(rng.integers(len(parents)))] + (int(rng.integers(SEED_RANGE)),)
        for _ in range(settings.population - 1)
    ]
    return [parents[0], *children]


class Census:
    """What the evaluations tell about the workers: processes, builds, table copies."""

    def __init__(self) -> None:
        self.builds: dict[int, set[int]] = {}
        self.loads: dict[int, set[int]] = {}

    def add(self, results: Sequence[Evaluation]) -> None:
        for _, _, pid, build_id, table_load in results:
            self.builds.setdefault(pid, set()).add(build_id)
            self.loads.setdefault(pid, set()).add(table_load)

    def summary(self) -> dict[str, int]:
        return {
            "processes": len(self.builds),
            "rollout_workers_built": sum(len(ids) for ids in self.builds.values()),
            "table_copies_loaded": sum(len(ids - {0}) for ids in self.loads.values()),
        }


def summarise(generation: int, results: Sequence[Evaluation]) -> dict[str, Any]:
    """One line of the history: the generation's returns and the steps it simulated."""
    fitness = np.array([r[0] for r in results])
    return {
        "generation": generation,
        "max": float(fitness.max()),
        "mean": float(fitness.mean()),
        "median": float(np.median(fitness)),
        "steps": sum(r[1] for r in results),
    }


def evolve(
    settings: Settings, fn: Any, census: Census, verbose: bool
) -> tuple[list[dict[str, Any]], tuple[float, Genome], dict[str, int]]:
    """The generations: evaluate in parallel, keep the best, breed the next.

    Returns the history, the best (fitness, genome) and the bytes pickled for
    the items and results (as parmap pickles them, batch by batch).
    """
    rng = np.random.default_rng(settings.seed)
    population = [(int(s),) for s in rng.integers(SEED_RANGE, size=settings.population)]
    history, best, wire = [], (-math.inf, ()), {"sent": 0, "received": 0}
    for generation in range(settings.generations):
        tick = time.perf_counter()
        tasks = [(g, settings.seed, generation, settings.episodes) for g in population]
        results: list[Evaluation] = parmap.parmap(fn, tasks)
        wire["sent"] += len(pickle.dumps(tasks, protocol=5))
        wire["received"] += len(pickle.dumps(results, protocol=5))
        census.add(results)
        fitness = np.array([r[0] for r in results])
        top = int(np.argmax(fitness))
        if fitness[top] > best[0]:
            best = (float(fitness[top]), population[top])
        history.append(row := summarise(generation, results))
        if verbose:
            print(
                f"gen {generation:3d}  max {row['max']:6.1f}  mean {row['mean']:6.1f}  "
                f"median {row['median']:6.1f}  steps {row['steps']:7d}  "
                f"{time.perf_counter() - tick:6.2f} s",
                flush=True,
            )
        population = next_generation(population, fitness, settings, rng)
    return history, best, wire


def evaluator(settings: Settings, table: NormalisationTable) -> Any:
    """The mapped function, with its two handles: the table and the rollout worker."""
    shared = parmap.share(table)  # to each worker once
    rollout = parmap.per_worker(  # built once in each worker process
        RolloutWorker, settings.env, settings.hidden, settings.sigma, shared
    )
    return functools.partial(evaluate, rollout)


def run(settings: Settings, verbose: bool = True) -> dict[str, Any]:
    """Measure the table, evolve; return the history, the best genome and the transfers."""
    started = time.perf_counter()
    table = reference_table(settings.seed, settings.reference, settings.table_size)
    setup_s, started = time.perf_counter() - started, time.perf_counter()
    census, pickled_before = Census(), NormalisationTable.pickled
    history, best, wire = evolve(settings, evaluator(settings, table), census, verbose)
    wall_s = time.perf_counter() - started
    evaluations = settings.generations * settings.population
    workers = census.summary()
    table_pickled = NormalisationTable.pickled - pickled_before
    table_bytes = len(pickle.dumps(table, protocol=5))
    return {
        "best": best[0],
        "best_genome": list(best[1]),
        "history": history,
        "wall_s": round(wall_s, 3),  # the generations
        "setup_s": round(setup_s, 3),  # measuring the table, in this process
        "evaluations": evaluations,
        "bytes_per_evaluation": {
            "genome": round(wire["sent"] / evaluations, 1),
            "result": round(wire["received"] / evaluations, 1),
            "table": round(table_bytes * workers["table_copies_loaded"] / evaluations, 1),
            "theta_if_sent": parameter_count(settings.hidden) * 4,
        },
        "table_bytes": table_bytes,
        "table_pickled_here": table_pickled,
        **workers,
    }


def plot(history: list[dict[str, Any]], path: str, title: str) -> None:
    """The learning curve: best, mean and median return per generation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    generations = [row["generation"] for row in history]
    figure, axes = plt.subplots(figsize=(7, 4))
    for key, style in (("max", "-o"), ("median", "-s"), ("mean", "--")):
        axes.plot(generations, [row[key] for row in history], style, label=key, markersize=3)
    axes.axhline(CartPole.max_steps, color="grey", linewidth=0.8, linestyle=":")
    axes.set(xlabel="generation", ylabel="episode return", title=title, ylim=(0, 520))
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--backend", help="parmap backend (default: $PARMAP_BACKEND, then ray or loky)")
    add("--workers", type=int, help="worker processes (default: all CPUs, or the cluster's)")
    add("--address", help="a Ray cluster or Dask scheduler to run on")
    add("--generations", type=int, default=defaults.generations)
    add("--population", type=int, default=defaults.population)
    add("--seed", type=int, default=defaults.seed)
    add("--truncation", type=int, default=defaults.truncation, help="parents per generation")
    add("--sigma", type=float, default=defaults.sigma, help="mutation strength")
    add("--episodes", type=int, default=defaults.episodes, help="episodes per evaluation")
    add("--env", choices=("numpy", "gymnasium"), default=defaults.env)
    add("--table-size", type=int, default=defaults.table_size, help="quantiles per dimension")
    add("--plot", metavar="PATH", help="write the learning curve (PNG) here")
    add("--quiet", action="store_true", help="print only the final JSON line")
    args = parser.parse_args(argv)
    if not args.population >= args.truncation >= 1 or args.episodes < 1:
        parser.error("need population >= truncation >= 1 and episodes >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = arguments(argv)
    settings = Settings(
        seed=args.seed, population=args.population, generations=args.generations,
        truncation=args.truncation, sigma=args.sigma, episodes=args.episodes, env=args.env,
        table_size=args.table_size,
    )  # fmt: skip
    with parmap.config(backend=args.backend, workers=args.workers, address=args.address):
        if not args.quiet:
            print(f"backend: {parmap.get_backend()}", flush=True)
        result = run(settings, verbose=not args.quiet)
    result["backend"] = args.backend or parmap.get_backend().name
    if args.plot:
        plot(result["history"], args.plot, f"GA on CartPole, population {args.population}")
    print(json.dumps(result, sort_keys=True), flush=True)
    return result


if __name__ == "__main__":
    main()
    parmap.shutdown()
    sys.exit(0)
