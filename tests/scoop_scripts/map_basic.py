"""futures.map: ordered results, several iterables, lambdas, builtins, generators."""

import operator

from scoop import futures


def square(x):
    return x * x


def weighted(x, w, bias=0):
    return x * w + bias


if __name__ == "__main__":
    print("squares", list(futures.map(square, range(20))))
    print("two iterables, shortest wins", list(futures.map(weighted, range(10), [3, 5, 7])))
    print("lambda", list(futures.map(lambda s: s.upper(), ["scoop", "parmap", "ray"])))
    print("builtin", list(futures.map(abs, range(-5, 5))))
    print("operator", list(futures.map(operator.mul, range(5), range(5, 10))))
    print("generator", sum(futures.map(square, (i for i in range(1000)))))
    print("empty", list(futures.map(square, [])))
    results = futures.map(square, range(5))
    print("iterator", next(results), next(results), list(results))
