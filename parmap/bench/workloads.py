"""The fitness functions the benchmark maps, and the populations they map over.

Each is a real, picklable function of the kind an evolutionary algorithm evaluates:

==================  ===========================================  ==================
workload            what one item costs                          item
==================  ===========================================  ==================
``onemax``          ~1 µs: sum of a 100-bit individual           list of 100 ints
``cpu``             a chosen cost, µs to 100 ms, pure Python     an int (a seed)
                    (holds the GIL), calibrated in the parent
``symreg``          symbolic regression: a GP expression tree    a nested tuple
                    evaluated over N data points (mean sq. err.)
``payload``         a fixed small cost on an individual of       ``bytes``, 100 B
                    100 B to 1 MB, so serialization shows        to 1 MB
``gilfree``         a chosen cost in hashlib.sha256 over a       an int (a seed)
                    buffer: C code that releases the GIL, so
                    threads of one process run it in parallel
==================  ===========================================  ==================

The CPU-bound cost is calibrated once per process, in the parent
(:func:`calibrate`), and the loop count travels inside the function
(:class:`CpuFitness`), so workers do no calibration of their own.
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CpuFitness",
    "HashFitness",
    "PayloadFitness",
    "SymbolicRegression",
    "Tree",
    "bitstrings",
    "calibrate",
    "evaluate_tree",
    "hash_rate",
    "onemax",
    "payloads",
    "random_tree",
    "random_trees",
    "seeds",
    "spin",
    "tree_size",
]

Tree = Any  # a float, the variable name "x", or (operator name, *children)

_MULTIPLIER, _INCREMENT, _MASK = 1103515245, 12345, 0x7FFFFFFF


def onemax(individual: Sequence[int]) -> tuple[int]:
    """The OneMax fitness: how many bits are set. About 1 µs for 100 bits.

    Args:
        individual: a sequence of 0/1 ints.

    Returns:
        ``(number of ones,)``, a DEAP-style fitness tuple.
    """
    return (sum(individual),)


def bitstrings(count: int, length: int = 100, seed: int = 0) -> list[list[int]]:
    """A random population of ``count`` bit strings of ``length`` bits."""
    rng = random.Random(seed)
    return [[rng.getrandbits(1) for _ in range(length)] for _ in range(count)]


def spin(iterations: int, state: int = 1) -> int:
    """A pure-Python loop of ``iterations`` LCG steps; the CPU-bound core of :class:`CpuFitness`."""
    for _ in range(iterations):
        state = (state * _MULTIPLIER + _INCREMENT) & _MASK
    return state


def calibrate(seconds: float = 0.05, rounds: int = 5) -> float:
    """Measure how many :func:`spin` iterations run per microsecond in this process.

    Takes the median of ``rounds`` timed runs of about ``seconds`` each.

    Args:
        seconds: the approximate length of one timed run.
        rounds: how many runs to time.

    Returns:
        Iterations per microsecond (positive).
    """
    iterations = 10_000
    while True:  # grow the run until it is long enough to time well
        start = time.perf_counter()
        spin(iterations)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4:
            break
        iterations *= 4
    runs = [elapsed]
    for _ in range(rounds - 1):
        start = time.perf_counter()
        spin(iterations)
        runs.append(time.perf_counter() - start)
    return iterations / (statistics.median(runs) * 1e6)


@dataclass(frozen=True)
class CpuFitness:
    """A pure-Python fitness function whose cost per item is set by ``iterations``.

    Build it with :meth:`for_cost` from a cost in microseconds and a
    calibration, so the loop count is fixed in the parent.
    """

    iterations: int

    @classmethod
    def for_cost(cls, cost_us: float, iterations_per_us: float) -> CpuFitness:
        """The function that costs about ``cost_us`` microseconds per item here."""
        return cls(max(0, round(cost_us * iterations_per_us)))

    def __call__(self, item: int) -> tuple[float]:
        return (spin(self.iterations, item & _MASK) / _MASK,)


@functools.cache
def hash_rate(rounds: int = 5) -> float:
    """Bytes that :func:`hashlib.sha256` digests per microsecond here (median of a few runs
    over 1 MiB)."""
    data = _buffer(1 << 20)
    runs = []
    for _ in range(rounds):
        start = time.perf_counter()
        hashlib.sha256(data).digest()
        runs.append(time.perf_counter() - start)
    return len(data) / (statistics.median(runs) * 1e6)


@functools.lru_cache(maxsize=4)
def _buffer(nbytes: int) -> bytes:
    """``nbytes`` of fixed data, made once per process (workers make their own)."""
    return bytes(range(256)) * (nbytes // 256) + bytes(nbytes % 256)


@dataclass(frozen=True)
class HashFitness:
    """A fitness whose work releases the GIL: SHA-256 over ``nbytes`` (CPython's hashlib
    drops the GIL for inputs over 2 KiB), seeded by the item. Threads of one process
    run it in parallel; the item stays a small int, so processes ship little."""

    nbytes: int

    @classmethod
    def for_cost(cls, cost_us: float, bytes_per_us: float) -> HashFitness:
        """The function that costs about ``cost_us`` microseconds per item here."""
        return cls(max(4096, round(cost_us * bytes_per_us)))

    def __call__(self, item: int) -> tuple[int]:
        digest = hashlib.sha256(item.to_bytes(8, "little"))
        digest.update(_buffer(self.nbytes))
        return (digest.digest()[0],)


def seeds(count: int, seed: int = 0) -> list[int]:
    """``count`` small random ints: the individuals of the ``cpu`` workload."""
    rng = random.Random(seed)
    return [rng.randrange(1, 1 << 30) for _ in range(count)]


@dataclass(frozen=True)
class PayloadFitness:
    """A fitness on a large individual: reads a sample of its bytes, then spins.

    The work is about the same for every size, so what grows with the size is
    the cost of shipping the individual to the worker.
    """

    iterations: int

    def __call__(self, item: bytes) -> tuple[int]:
        sample = sum(item[:: max(1, len(item) // 64)])
        return (spin(self.iterations, sample + len(item)),)


def payloads(count: int, size: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct ``bytes`` individuals of ``size`` bytes each.

    They are distinct objects with distinct content, so pickling a batch copies
    every one (pickle's memo would otherwise send a repeated object once).
    """
    rng = random.Random(seed)
    body = rng.randbytes(max(0, size - 8))
    return [i.to_bytes(8, "little")[: min(8, size)] + body for i in range(count)]


# -- symbolic regression -----------------------------------------------------


def _protected_div(a: float, b: float) -> float:
    return a / b if abs(b) > 1e-9 else 1.0


def _protected_log(a: float) -> float:
    return math.log(abs(a)) if abs(a) > 1e-9 else 0.0


_BINARY: dict[str, Callable[[float, float], float]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": _protected_div,
}
_UNARY: dict[str, Callable[[float], float]] = {
    "neg": operator.neg,
    "sin": math.sin,
    "cos": math.cos,
    "log": _protected_log,
}


def evaluate_tree(tree: Tree, x: float) -> float:
    """The value of a GP expression tree at ``x``.

    Args:
        tree: a number, ``"x"``, or ``(name, child, ...)`` with ``name`` one of
            add, sub, mul, div (protected), neg, sin, cos, log (protected).
        x: the value of the variable.

    Returns:
        The tree's value.

    Raises:
        KeyError: for an unknown operator name.
    """
    if isinstance(tree, tuple):
        name = tree[0]
        if len(tree) == 3:
            return _BINARY[name](evaluate_tree(tree[1], x), evaluate_tree(tree[2], x))
        return _UNARY[name](evaluate_tree(tree[1], x))
    if tree == "x":
        return x
    return float(tree)


def tree_size(tree: Tree) -> int:
    """The number of nodes in ``tree``."""
    if isinstance(tree, tuple):
        return 1 + sum(tree_size(child) for child in tree[1:])
    return 1


def random_tree(rng: random.Random, depth: int) -> Tree:
    """A random expression tree of at most ``depth`` levels ("grow" initialisation)."""
    if depth <= 1 or rng.random() < 0.15:
        return "x" if rng.random() < 0.7 else float(rng.randint(-3, 3))
    if rng.random() < 0.75:
        name = rng.choice(sorted(_BINARY))
        return (name, random_tree(rng, depth - 1), random_tree(rng, depth - 1))
    return (rng.choice(sorted(_UNARY)), random_tree(rng, depth - 1))


def random_trees(count: int, depth: int = 5, seed: int = 0) -> list[Tree]:
    """A population of ``count`` random trees (the individuals of ``symreg``)."""
    rng = random.Random(seed)
    return [random_tree(rng, depth) for _ in range(count)]


def _quartic(x: float) -> float:
    return x**4 + x**3 + x**2 + x


@dataclass(frozen=True)
class SymbolicRegression:
    """Mean squared error of a tree against x⁴+x³+x²+x on ``points`` points in [-1, 1].

    The classic DEAP symbolic-regression fitness, evaluated by a small
    pure-Python interpreter (:func:`evaluate_tree`).
    """

    points: int
    xs: tuple[float, ...] = field(init=False, repr=False, compare=False)
    ys: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.points < 1:
            raise ValueError(f"points must be at least 1, got {self.points}")
        step = 2.0 / max(1, self.points - 1)
        xs = tuple(-1.0 + i * step for i in range(self.points))
        object.__setattr__(self, "xs", xs)
        object.__setattr__(self, "ys", tuple(_quartic(x) for x in xs))

    def __reduce__(self) -> tuple[Any, ...]:  # ship the point count, not the data
        return (SymbolicRegression, (self.points,))

    def __call__(self, tree: Tree) -> tuple[float]:
        total = 0.0
        for x, y in zip(self.xs, self.ys, strict=True):
            try:
                error = evaluate_tree(tree, x) - y
            except (OverflowError, ValueError):
                return (math.inf,)
            total += error * error
        return (total / self.points,)
